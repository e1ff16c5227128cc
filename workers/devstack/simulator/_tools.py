"""Tools, whatever the wire format: which ones an answer calls, and their arguments.

The choice is deterministic so that tests can steer it from the prompt: the tool that
tool_choice names; else the tools whose names the last user message mentions (all of
them, in order of appearance, when parallel calls are allowed; else the first); else,
when a call is required, the first tool. Under "auto" a prompt that names no tool gets
a text answer.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ._schema_instances import broken, instance, violate
from ._text import count_tokens

Json = dict[str, Any]
#: none: never call; auto: call tools the prompt names; required: call one at least
#: (OpenAI "required", Anthropic "any"); tool: call `forced`.
Mode = Literal["none", "auto", "required", "tool"]
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
TOOL_ID = re.compile(r"[a-zA-Z0-9_-]+")
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_EMPTY_PARAMETERS: Json = {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    schema: Json  # the arguments' JSON Schema
    strict: bool = False


@dataclass(slots=True)
class Call:
    """One tool call of an answer."""

    id: str
    name: str
    value: object  # the arguments (Anthropic's `input`); {} when cut short
    text: str  # the arguments as JSON text (OpenAI's `arguments`, Anthropic's partial_json)
    tokens: int  # the name's and the arguments' tokens


def new_id(prefix: str, length: int) -> str:
    """A random id in the provider's alphabet, as unique as the real ones."""
    return prefix + "".join(_BASE62[b % 62] for b in os.urandom(length))


@functools.lru_cache(maxsize=1024)
def _mention(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])", re.IGNORECASE)


def choose(
    tools: Sequence[Tool], mode: Mode, forced: str | None, parallel: bool, prompt: str
) -> list[Tool]:
    """The tools the answer to `prompt` (the last user message's text) calls."""
    if mode == "none" or not tools:
        return []
    if mode == "tool":
        return [t for t in tools if t.name == forced][:1]
    found = [(m.start(), i) for i, t in enumerate(tools) if (m := _mention(t.name).search(prompt))]
    named = [tools[i] for _, i in sorted(found)]
    if named:
        return named if parallel else named[:1]
    return [tools[0]] if mode == "required" else []


def make_call(tool: Tool, words: Sequence[str], malformed: str | None, *, as_text: bool) -> Call:
    """A call of `tool` with arguments built from its schema and the prompt's words.

    `malformed` ("broken" or "violating") spoils the arguments. `as_text` is OpenAI's
    case (arguments are a JSON string, which may be broken); Anthropic's input is an
    object, so there a malformed input always breaks the schema instead.
    """
    schema = tool.schema or _EMPTY_PARAMETERS
    value = instance(schema, words, strict=tool.strict)
    if malformed == "violating" or (malformed == "broken" and not as_text):
        found, wrong = violate(schema, value)
        if found and (as_text or isinstance(wrong, dict)):
            value = wrong
    if as_text:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        text = broken(text) if malformed == "broken" else text
    else:
        text = json.dumps(value, ensure_ascii=False)
    prefix, length = ("call_", 24) if as_text else ("toolu_01", 22)
    tokens = count_tokens(tool.name) + count_tokens(text)
    return Call(new_id(prefix, length), tool.name, value, text, tokens)


def results_text(model: str, results: Sequence[tuple[str, str]]) -> str:
    """The answer once tool results are in: each result quoted, by tool."""
    quoted = "; ".join(f'{name} returned "{content}"' for name, content in results)
    return f"{quoted}. (simulated by {model})"
