"""JSON documents built from a JSON Schema, their invalid twins, and strict mode's checks.

Tool arguments and structured answers must be valid for their schema, so they are
built from it, deterministically: every required property (and, unless strict, every
other optional one or one the prompt names), strings from the prompt's words so that a
test sees which request an answer belongs to, numbers and sizes within the bounds the
schema sets. `violate` makes the valid JSON that breaks the schema, for malformed_rate.
Schemas are small, so a walk per request costs little.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from typing import Any, TypeVar

Json = dict[str, Any]
_T = TypeVar("_T")
_MAX_DEPTH = 8  # past it, optional parts are left out: recursive schemas end
_GIVE_UP_DEPTH = 32
_MAX_VALUES = 10_000  # a schema asking for more (minItems within minItems...) gets less
_MAX_STRING = 10_000
_MAX_SCHEMA_DEPTH = 100  # deeper schemas are refused, not walked to a RecursionError
_INVALID = "__simulated_invalid__"
_FORMATS = {
    "date-time": "2024-01-01T12:00:00Z",
    "date": "2024-01-01",
    "time": "12:00:00",
    "email": "{w}@example.com",
    "uri": "https://example.com/{w}",
    "hostname": "{w}.example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
}
_WRONG: list[tuple[str, object]] = [
    ("string", _INVALID), ("integer", 12345), ("boolean", True), ("array", []),
    ("object", {}), ("null", None),
]


def strict_error(schema: object) -> str | None:
    """Why OpenAI's strict mode refuses `schema`, in its words; None if it is accepted."""
    kind = schema.get("type") if isinstance(schema, dict) else type(schema).__name__
    if kind != "object":
        return f"schema must be a JSON Schema of 'type: \"object\"', got 'type: \"{kind}\"'."
    return _strict_walk(schema, ())


def _strict_walk(node: object, context: tuple[str, ...]) -> str | None:
    if not isinstance(node, dict):
        return None
    if len(context) > _MAX_SCHEMA_DEPTH:
        return f"In context={context[:4]}..., the schema is nested too deeply."
    kind = node.get("type")
    if kind == "object" or (isinstance(kind, list) and "object" in kind) or "properties" in node:
        if node.get("additionalProperties") is not False:
            return (f"In context={context}, 'additionalProperties' is required to be "
                    "supplied and to be false.")
        required = node.get("required")
        required = required if isinstance(required, list) else []
        missing = [key for key in _of(node, "properties", dict, {}) if key not in required]
        if missing:
            return (f"In context={context}, 'required' is required to be supplied and to be "
                    f"an array including every key in properties. Missing '{missing[0]}'.")
    children: list[tuple[tuple[str, ...], object]] = []
    for key in ("properties", "$defs", "definitions"):
        if isinstance(node.get(key), dict):
            children += [((key, name), sub) for name, sub in node[key].items()]
    for key in ("anyOf", "allOf", "prefixItems"):
        if isinstance(node.get(key), list):
            children += [((key, str(i)), sub) for i, sub in enumerate(node[key])]
    if "items" in node:
        children.append((("items",), node["items"]))
    for path, child in children:
        error = _strict_walk(child, context + path)
        if error:
            return error
    return None


def resolve(root: Json, schema: object) -> Json | bool:
    """`schema` with its local $ref followed ("#/$defs/Name"); an unknown ref is {}."""
    for _ in range(32):
        if not isinstance(schema, dict) or not isinstance(schema.get("$ref"), str):
            break
        target: object = root
        for part in schema["$ref"].lstrip("#").strip("/").split("/"):
            target = target.get(part) if isinstance(target, dict) and part else target
        schema = target if isinstance(target, dict | bool) else {}
    return schema if isinstance(schema, dict | bool) else {}


def _of(node: Json, key: str, kind: type[_T], default: _T) -> _T:
    """node[key] when it is of `kind` (a bool is no int here), else `default`."""
    value = node.get(key)
    return value if isinstance(value, kind) and not isinstance(value, bool) else default


def _as_dict(schema: Json | bool) -> Json:
    return schema if isinstance(schema, dict) else {}


def _types(schema: Json) -> list[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list):
        return [k for k in kind if isinstance(k, str)]
    if "properties" in schema or "required" in schema:
        return ["object"]
    return ["array"] if "items" in schema or "prefixItems" in schema else []


def _merge(root: Json, parts: list[object]) -> Json:
    """allOf as one schema: properties and required joined, other keys first-wins."""
    merged: Json = {"properties": {}, "required": []}
    for part in parts:
        sub = resolve(root, part)
        if isinstance(sub, dict):
            merged["properties"].update(_of(sub, "properties", dict, {}))
            merged["required"] += _of(sub, "required", list, [])
            for key, value in sub.items():
                merged.setdefault(key, value)
    return merged


class _Builder:
    """One document's construction: a cursor over the words keeps strings (and
    numbers) varied, so that uniqueItems holds where it can. The first numbers are the
    prompt's own, in order ("multiply 6 and 7" calls with 6 and 7)."""

    def __init__(self, root: Json, words: Sequence[str], strict: bool) -> None:
        self.root, self.words, self.strict = root, list(words) or ["simulated"], strict
        self.mentioned = frozenset(w.lower() for w in self.words)
        self.numbers = [n for n in map(_number_in, self.words) if n is not None]
        self.cursor = 0
        self.values = 0
        self.numbered = 0

    def word(self) -> str:
        self.cursor += 1
        return self.words[(self.cursor - 1) % len(self.words)]

    def build(self, schema: object, depth: int = 0) -> object:
        self.values += 1
        if depth > _GIVE_UP_DEPTH or self.values > _MAX_VALUES:
            return None  # required all the way down: no finite document exists
        node = resolve(self.root, schema)
        if isinstance(node, bool):
            return self.word() if node else None
        if "const" in node:
            return node["const"]
        if isinstance(node.get("enum"), list) and node["enum"]:
            named = [v for v in node["enum"] if str(v).lower() in self.mentioned]
            return (named or node["enum"])[0]
        if isinstance(node.get("allOf"), list):
            return self.build(_flat(self.root, node), depth + 1)
        branches = node.get("anyOf") or node.get("oneOf")
        if isinstance(branches, list) and branches:
            real = [b for b in branches if _types(_as_dict(resolve(self.root, b))) != ["null"]]
            return self.build(real[0] if real and depth < _MAX_DEPTH else branches[-1], depth + 1)
        types = _types(node)
        kind = next((t for t in types if t != "null"), "null" if types else "string")
        if "null" in types and depth >= _MAX_DEPTH:
            kind = "null"
        if kind == "object":
            return self._object(node, depth)
        if kind == "array":
            return self._array(node, depth)
        if kind in ("number", "integer"):
            return self._number(node, integer=kind == "integer")
        if kind == "boolean":
            self.cursor += 1
            return self.cursor % 2 == 1
        return self._string(node) if kind == "string" else None

    def _object(self, node: Json, depth: int) -> Json:
        props = _of(node, "properties", dict, {})
        required = [r for r in _of(node, "required", list, []) if isinstance(r, str)]
        out: Json = {}
        optional = 0
        for name, sub in props.items():
            if name not in required:
                optional += 1
                named = name.lower() in self.mentioned
                if self.strict or depth >= _MAX_DEPTH or not (optional % 2 or named):
                    continue
            out[name] = self.build(sub, depth + 1)
        for name in required:
            if name not in out:
                out[name] = self.word()
        return out

    def _array(self, node: Json, depth: int) -> list[object]:
        size = max(min(_of(node, "minItems", int, 0), _MAX_VALUES), 1 if depth < _MAX_DEPTH else 0)
        size = min(size, _of(node, "maxItems", int, size))
        prefix = _of(node, "prefixItems", list, [])
        items = node.get("items", True)
        return [self.build(prefix[i] if i < len(prefix) else items, depth + 1)
                for i in range(size)]

    def _string(self, node: Json) -> str:
        template = _FORMATS.get(str(node.get("format")))
        if node.get("format") == "uuid":
            value = str(uuid.uuid5(uuid.NAMESPACE_URL, self.word()))
        elif template is not None:
            value = template.format(w=self.word())
        else:
            value = self.word()
        low = min(_of(node, "minLength", int, 0), _MAX_STRING)
        while len(value) < low:
            value += " " + self.word()
        high = node.get("maxLength")
        return value[:high] if isinstance(high, int) else value

    def _number(self, node: Json, integer: bool) -> float | int:
        self.cursor += 1
        value: float = self.cursor % 9 + (1 if integer else 1.5)
        if self.numbered < len(self.numbers):
            said = self.numbers[self.numbered]
            self.numbered += 1
            if not integer or said.is_integer():
                value = said
        low, high = node.get("minimum"), node.get("maximum")
        ex_low, ex_high = node.get("exclusiveMinimum"), node.get("exclusiveMaximum")
        step = 1 if integer else 0.5
        if isinstance(ex_low, int | float) and not isinstance(ex_low, bool):
            low = ex_low + step
        elif ex_low is True and isinstance(low, int | float):
            low += step
        if isinstance(ex_high, int | float) and not isinstance(ex_high, bool):
            high = ex_high - step
        elif ex_high is True and isinstance(high, int | float):
            high -= step
        if isinstance(low, int | float):
            value = max(value, math.ceil(low) if integer else low)
        if isinstance(high, int | float):
            value = min(value, math.floor(high) if integer else high)
        multiple = node.get("multipleOf")
        if isinstance(multiple, int | float) and multiple > 0:
            value = math.ceil(value / multiple) * multiple
            if isinstance(high, int | float) and value > high:
                value -= multiple
        return int(value) if integer else value


def _number_in(word: str) -> float | None:
    try:
        number = float(word)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def instance(schema: object, words: Sequence[str], *, strict: bool = False) -> object:
    """A document valid for `schema` (a dict; {} allows anything), strings from `words`."""
    root = schema if isinstance(schema, dict) else {}
    return _Builder(root, words, strict).build(root)


def _flat(root: Json, schema: object) -> Json | bool:
    """`schema` resolved, its allOf merged into it."""
    node = resolve(root, schema)
    if isinstance(node, dict) and isinstance(node.get("allOf"), list):
        rest = {k: v for k, v in node.items() if k != "allOf"}
        return _merge(root, [rest, *node["allOf"]])
    return node


def _wrong_value(root: Json, schema: object) -> tuple[bool, object]:
    """(True, a value `schema` refuses), or (False, None) when it accepts anything."""
    node = _flat(root, schema)
    if node is False:
        return True, None
    if node is True:
        return False, None
    assert isinstance(node, dict)
    if "enum" in node or "const" in node:
        return True, _INVALID
    branches = node.get("anyOf") or node.get("oneOf")
    types = set(_types(node))
    if isinstance(branches, list):
        for branch in branches:
            sub = resolve(root, branch)
            if not isinstance(sub, dict) or not _types(sub):
                return False, None
            types |= set(_types(sub))
    if "number" in types:
        types.add("integer")
    wrong = [value for kind, value in _WRONG if kind not in types]
    return (True, wrong[0]) if types and wrong else (False, None)


def violate(schema: object, value: object) -> tuple[bool, object]:
    """(True, valid JSON that `schema` refuses, close to `value`), or (False, None)."""
    root = schema if isinstance(schema, dict) else {}
    node = _flat(root, root)
    if isinstance(value, dict) and isinstance(node, dict):
        for name in _of(node, "required", list, []):
            if isinstance(name, str) and name in value:  # a required property left out
                return True, {k: v for k, v in value.items() if k != name}
        for name, sub in _of(node, "properties", dict, {}).items():
            found, wrong = _wrong_value(root, sub)
            if found:  # a property of the wrong type
                return True, {**value, name: wrong}
        if node.get("additionalProperties") is False:
            return True, {**value, "unexpected_property": True}
    return _wrong_value(root, node)


def broken(text: str) -> str:
    """`text` as JSON no parser accepts: cut short, as a truncated answer is."""
    return text[:-1] if text[-1:] in ('}', ']', '"') else text + ","
