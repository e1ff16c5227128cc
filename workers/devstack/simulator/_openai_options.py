"""The OpenAI chat request's options, refused (400, naming the param) as OpenAI refuses
them: tools, tool_choice and parallel_tool_calls, response_format, stream_options."""

from __future__ import annotations

import json
from typing import Any

from ._answer import Ask
from ._protocol import Reject, kind_of
from ._schema_instances import strict_error
from ._text import content_text, count_tokens
from ._tools import TOOL_NAME, Mode, Tool

Json = dict[str, Any]
_EMPTY_STRICT = {"type": "object", "properties": {}, "required": [], "additionalProperties": False}


def _supported(values: tuple[str, ...]) -> str:
    quoted = [f"'{v}'" for v in values]
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}" if len(quoted) > 2 else \
        " and ".join(quoted)


def bad_value(value: object, values: tuple[str, ...], param: str) -> Reject:
    message = f"Invalid value: '{value}'. Supported values are: {_supported(values)}."
    return Reject(400, message, param=param, code="invalid_value")


def bad_type(param: str, expected: str, value: object) -> Reject:
    message = f"Invalid type for '{param}': expected {expected}, but got {kind_of(value)} instead."
    return Reject(400, message, param=param, code="invalid_type")


def missing(param: str) -> Reject:
    return Reject(400, f"Missing required parameter: '{param}'.", param=param,
                  code="missing_required_parameter")


def _no_match(param: str) -> Reject:
    message = (f"Invalid '{param}': string does not match pattern. Expected a string that "
               "matches the pattern '^[a-zA-Z0-9_-]{1,64}$'.")
    return Reject(400, message, param=param, code="invalid_value")


def tools_of(body: Json) -> list[Tool]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list) or not tools:
        raise bad_type("tools", "a non-empty array of objects", tools)
    out: list[Tool] = []
    for k, tool in enumerate(tools):
        at = f"tools[{k}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise bad_value(tool.get("type") if isinstance(tool, dict) else tool,
                             ("function",), f"{at}.type")
        function = tool.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise missing(f"{at}.function.name")
        if not TOOL_NAME.fullmatch(name):
            raise _no_match(f"{at}.function.name")
        assert isinstance(function, dict)
        schema = function.get("parameters")
        if schema is not None and not isinstance(schema, dict):
            raise bad_type(f"{at}.function.parameters", "an object", schema)
        strict = function.get("strict") is True
        error = None
        if strict:  # strict mode's rules; without them, the root must still be an object
            error = strict_error(schema or _EMPTY_STRICT)
        elif schema is not None and schema.get("type", "object") != "object":
            error = strict_error(schema)
        if error:
            message = f"Invalid schema for function '{name}': {error}"
            raise Reject(400, message, param=f"{at}.function.parameters",
                         code="invalid_function_parameters")
        out.append(Tool(name, schema or {}, strict))
    return out


def tool_choice_of(body: Json, tools: list[Tool]) -> tuple[Mode, str | None, bool]:
    choice, parallel = body.get("tool_choice"), body.get("parallel_tool_calls")
    for name, value in (("tool_choice", choice), ("parallel_tool_calls", parallel)):
        if value is not None and not tools:
            message = (f"Invalid value for '{name}': '{name}' is only allowed when 'tools' are "
                       "specified.")
            raise Reject(400, message, param=name)
    if parallel is not None and not isinstance(parallel, bool):
        raise bad_type("parallel_tool_calls", "a boolean", parallel)
    if choice is None or choice in ("none", "auto", "required"):
        return choice or ("auto" if tools else "none"), None, parallel is not False
    function = choice.get("function") if isinstance(choice, dict) else None
    forced = function.get("name") if isinstance(function, dict) else None
    if not isinstance(forced, str) or choice.get("type") != "function":
        message = ("Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or "
                   "{'type': 'function', 'function': {'name': ...}}.")
        raise Reject(400, message, param="tool_choice")
    if forced not in {t.name for t in tools}:
        message = f"Invalid value for 'tool_choice': tool '{forced}' is not in 'tools'."
        raise Reject(400, message, param="tool_choice")
    return "tool", forced, parallel is not False


def response_format_of(body: Json, messages: list[Json], ask: Ask) -> int:
    """Set the answer's format on `ask`; the tokens of its schema."""
    value = body.get("response_format")
    kind = value.get("type") if isinstance(value, dict) else value
    if value is None or kind == "text":
        return 0
    if kind == "json_object":
        if not any("json" in content_text(m.get("content")).lower() for m in messages):
            message = ("'messages' must contain the word 'json' in some form, to use "
                       "'response_format' of type 'json_object'.")
            raise Reject(400, message, param="messages")
        ask.output = "json_object"
        return 0
    if kind != "json_schema":
        raise bad_value(kind, ("json_object", "json_schema", "text"), "response_format.type")
    assert isinstance(value, dict)
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise missing("response_format.json_schema.name")
    if not TOOL_NAME.fullmatch(spec["name"]):
        raise _no_match("response_format.json_schema.name")
    schema = spec.get("schema", {})
    if not isinstance(schema, dict):
        raise bad_type("response_format.json_schema.schema", "an object", schema)
    ask.strict = spec.get("strict") is True
    error = strict_error(schema) if ask.strict else None
    if error:
        message = f"Invalid schema for response_format '{spec['name']}': {error}"
        raise Reject(400, message, param="response_format")
    ask.output, ask.schema = "json_schema", schema
    return count_tokens(json.dumps(schema, ensure_ascii=False, separators=(",", ":")))


def stream_of(body: Json) -> tuple[bool, bool]:
    stream, options = body.get("stream"), body.get("stream_options")
    if stream is not None and not isinstance(stream, bool):
        raise bad_type("stream", "a boolean", stream)
    if options is not None and not stream:
        message = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        raise Reject(400, message, param="stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_type("stream_options", "an object", options)
    return bool(stream), bool(options and options.get("include_usage") is True)
