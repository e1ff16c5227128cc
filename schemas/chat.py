"""Chat in the OpenAI format, whole: messages with content parts and tool calls, tools,
tool choice, response formats. The fleet's own shape for every wire format (each
provider translates it, both ways), checked here as strictly as the strictest service a
job may fall back to, so a bad request fails at submit, naming its field.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.images import parse_data_url

__all__ = ["ContentPart", "FunctionCall", "FunctionDef", "ImagePart", "ImageURL",
           "JsonSchemaFormat", "Message", "NamedToolChoice", "ResponseFormat", "TextPart",
           "Tool", "ToolCall", "ToolChoice", "check_json_schema", "strict_problem"]

ToolName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_json_schema(schema: dict[str, Any], field: str = "schema") -> None:
    """ValueError (its message headed by ``field``) unless ``schema`` is a valid JSON
    Schema (checked against the 2020-12 meta-schema, which also reads the drafts OpenAI
    and Anthropic document) whose every ``$ref`` points inside it (no service fetches
    another document)."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "its root"
        raise ValueError(f"{field}: not a valid JSON Schema at {where}: {exc.message}") \
            from None
    for ref in _refs(schema):
        if not ref.startswith("#") or _pointer(schema, ref[1:]) is None:
            raise ValueError(f"{field}: $ref {ref[:200]!r} points nowhere in the schema "
                             "(only references inside it, #/..., are allowed)")


def _refs(node: Any) -> list[str]:
    if isinstance(node, list):
        return [ref for item in node for ref in _refs(item)]
    if not isinstance(node, dict):
        return []
    own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
    return own + [ref for key, sub in node.items() if key not in ("const", "enum", "default",
                                                                   "examples")
                  for ref in _refs(sub)]


def _pointer(document: Any, pointer: str) -> Any:
    """What a JSON Pointer (RFC 6901, percent-decoded) names in ``document``, or None."""
    from urllib.parse import unquote

    node = document
    for raw in unquote(pointer).split("/")[1:] if pointer else ():
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return None
    return node


def strict_problem(schema: Any, where: str = "schema") -> str | None:
    """Why ``schema`` cannot be strict (OpenAI's rules: every object closed with
    ``additionalProperties: false`` and every property required), or None."""
    if isinstance(schema, list):
        for i, item in enumerate(schema):
            if (problem := strict_problem(item, f"{where}[{i}]")) is not None:
                return problem
        return None
    if not isinstance(schema, dict):
        return None
    kinds = schema.get("type")
    if kinds == "object" or (isinstance(kinds, list) and "object" in kinds) \
            or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return f"{where}: a strict schema closes each object (additionalProperties: false)"
        missing = set(schema.get("properties", {})) - set(schema.get("required", []))
        if missing:
            return f"{where}: a strict schema requires every property ({sorted(missing)} are not)"
    for key in ("properties", "$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items():
            if (problem := strict_problem(sub, f"{where}.{key}.{name}")) is not None:
                return problem
    for key in ("items", "anyOf", "allOf", "oneOf", "prefixItems"):
        if key in schema and (problem := strict_problem(schema[key], f"{where}.{key}")):
            return problem
    return None


class TextPart(_Strict):
    """One text block of a message's content."""

    type: Literal["text"] = "text"
    text: str


class ImageURL(_Strict):
    """An image by https URL, or inline as a ``data:image/...;base64,`` URL."""

    url: str = Field(max_length=7_000_100)
    detail: Literal["auto", "low", "high"] = "auto"

    @field_validator("url")
    @classmethod
    def _readable(cls, url: str) -> str:
        if url.startswith("data:"):
            parse_data_url(url)  # raises what is wrong with it
        elif not url.startswith("https://") or len(url) > 2048:
            raise ValueError("an image is an https:// URL (up to 2048 characters) or a "
                             "data:image/...;base64 URL")
        return url


class ImagePart(_Strict):
    type: Literal["image_url"] = "image_url"
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCall(_Strict):
    name: ToolName
    #: The arguments as the model wrote them: a JSON document, as a string.
    arguments: str = Field(max_length=1_000_000)


class ToolCall(_Strict):
    """A call the model asked for (in an assistant message, or a result)."""

    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall

    @property
    def name(self) -> str:
        return self.function.name

    @property
    def arguments(self) -> Any:
        """The arguments parsed (None when they are not JSON)."""
        try:
            return json.loads(self.function.arguments)
        except ValueError:
            return None


class Message(_Strict):
    """One chat message: system, developer, user, assistant (maybe with tool calls and
    no content) or tool (answering a call by its id)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Annotated[list[ContentPart], Field(min_length=1)] | None = None
    name: str | None = Field(default=None, max_length=64)
    tool_calls: list[ToolCall] | None = Field(default=None, min_length=1, max_length=128)
    tool_call_id: str | None = Field(default=None, min_length=1, max_length=256)

    @model_validator(mode="after")
    def _consistent(self) -> Message:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("tool_calls: only an assistant message makes tool calls")
        if (self.tool_call_id is not None) != (self.role == "tool"):
            raise ValueError("tool_call_id: a tool message, and only one, names the call it "
                             "answers")
        if self.content is None and self.tool_calls is None:
            raise ValueError("content: needed (only an assistant message with tool_calls may "
                             "leave it out)")
        if self.role != "user" and self.images:
            raise ValueError("content: images go in user messages")
        if self.tool_calls and len({c.id for c in self.tool_calls}) != len(self.tool_calls):
            raise ValueError("tool_calls: two calls share an id")
        if self.role == "user" and not self.text.strip() and not self.images:
            # Anthropic refuses a turn with no text, and a job may fall back to it.
            raise ValueError("content: a user message needs some text or an image")
        return self

    @property
    def text(self) -> str:
        """The text of the content, blocks joined (images left out)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))

    @property
    def images(self) -> list[ImageURL]:
        if not isinstance(self.content, list):
            return []
        return [part.image_url for part in self.content if isinstance(part, ImagePart)]


class FunctionDef(_Strict):
    name: ToolName
    description: str | None = Field(default=None, max_length=10_000)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object",
                                                               "properties": {}})
    strict: bool | None = None

    @model_validator(mode="after")
    def _valid_schema(self) -> FunctionDef:
        check_json_schema(self.parameters, "parameters")
        if self.parameters.get("type") != "object":
            # Both services take a tool's arguments as one JSON object.
            raise ValueError("parameters: a tool's parameters are a JSON Schema of "
                             "type \"object\"")
        if self.strict and (problem := strict_problem(self.parameters, "parameters")):
            raise ValueError(problem)
        return self


class Tool(_Strict):
    """A function the model may call: name, description, parameters (JSON Schema)."""

    type: Literal["function"] = "function"
    function: FunctionDef


class _ToolName(_Strict):
    name: ToolName


class NamedToolChoice(_Strict):
    type: Literal["function"] = "function"
    function: _ToolName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JsonSchemaFormat(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: ToolName
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _valid_schema(self) -> JsonSchemaFormat:
        check_json_schema(self.schema_)
        if self.strict and self.schema_.get("type") != "object":
            raise ValueError("schema: a strict schema's root is of type \"object\"")
        if self.strict and (problem := strict_problem(self.schema_)):
            raise ValueError(problem)
        return self


class ResponseFormat(_Strict):
    """``text``, ``json_object`` (any JSON object) or ``json_schema`` (a document valid
    for the schema)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_when_needed(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema: given with type json_schema, and only then")
        return self

    def wire(self) -> dict[str, Any]:
        """As OpenAI takes it (``schema``, not ``schema_``)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
