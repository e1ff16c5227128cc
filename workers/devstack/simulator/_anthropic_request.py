"""The Anthropic Messages request in full, refused (400 invalid_request_error, the
field's path in the message) as Anthropic refuses it.

Content blocks (text, image, tool_use, tool_result), the rule that every tool_use is
answered by tool_result blocks at the start of the very next user message, tools and
tool_choice, images checked against their media type and the 5 MB limit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import _protocol as p
from ._answer import Ask
from ._images import MEDIA_TYPES, URL_SIZE, anthropic_tokens, b64decode, read_image, sniff
from ._protocol import Reject
from ._text import content_text, count_prompt_tokens, count_tokens
from ._tools import TOOL_ID, TOOL_NAME, Mode, Tool

Json = dict[str, Any]
MAX_IMAGE_BYTES = 5 * 1024 * 1024  # of the base64 data, as Anthropic measures it
_MODES: dict[str, Mode] = {"auto": "auto", "any": "required", "tool": "tool", "none": "none"}
_BLOCKS = "'text', 'image', 'tool_use', 'tool_result'"


@dataclass(slots=True)
class MessagesRequest:
    ask: Ask
    prompt_tokens: int
    stream: bool


def _bad(message: str) -> Reject:
    return Reject(400, message)


def _image_tokens(block: Json, at: str) -> int:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "url" and isinstance(source, dict) and isinstance(source.get("url"), str):
        return anthropic_tokens(*URL_SIZE)  # never fetched: taken to be 1024x1024
    if kind != "base64" or not isinstance(source, dict):
        raise _bad(f"{at}.image.source: Input tag '{kind}' found using 'type' does not match "
                   "any of the expected tags: 'base64', 'url'")
    media, data, at = source.get("media_type"), source.get("data"), f"{at}.image.source.base64"
    if media not in MEDIA_TYPES.values():
        raise _bad(f"{at}.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' "
                   "or 'image/webp'")
    if not isinstance(data, str):
        raise _bad(f"{at}.data: Field required")
    if len(data) > MAX_IMAGE_BYTES:
        raise _bad(f"{at}: image exceeds 5 MB maximum: {len(data)} bytes > {MAX_IMAGE_BYTES} bytes")
    raw = b64decode(data)
    kind = None if raw is None else sniff(raw)
    if kind is not None and MEDIA_TYPES[kind] != media:
        raise _bad(f"{at}.data: The image was specified using the {media} media type, but the "
                   f"image appears to be a {MEDIA_TYPES[kind]} image")
    image = None if raw is None else read_image(raw)
    if image is None:
        raise _bad(f"{at}.data: Could not process image")
    return anthropic_tokens(image.width, image.height)


def _result_content(block: Json, at: str) -> tuple[str, int]:
    """A tool_result's text and the tokens of its images."""
    content = block.get("content", "")
    if isinstance(content, str):
        return content, 0
    if not isinstance(content, list):
        raise _bad(f"{at}.tool_result.content: Input should be a valid string or list")
    tokens = 0
    for k, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image":
            tokens += _image_tokens(part, f"{at}.content.{k}")
        elif kind != "text" or not isinstance(part.get("text"), str):
            raise _bad(f"{at}.content.{k}: a text or image block is required")
    return content_text(content), tokens


def _checked_id(value: object, at: str) -> str:
    if not isinstance(value, str) or not TOOL_ID.fullmatch(value):
        raise _bad(f"{at}: String should match pattern '^[a-zA-Z0-9_-]+$'")
    return value


def _unanswered(i: int, ids: list[str]) -> Reject:
    return _bad(f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(ids)}. Each `tool_use` block must have a "
                "corresponding `tool_result` block in the next message.")


class _Conversation:
    """One pass over the messages: checks, extra prompt tokens, the trailing results."""

    def __init__(self) -> None:
        self.tokens = 0
        self.names: dict[str, str] = {}  # tool_use id -> tool name
        self.asked: list[str] = []  # the tool_use ids of the previous message
        self.answered: list[str] = []  # the ids the leading tool_result blocks answer
        self.results: list[tuple[str, str]] = []  # (tool, text) of those blocks

    def message(self, i: int, message: Json, last: bool) -> None:
        role, content = message["role"], message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            raise _bad(f"messages.{i}.content: Input should be a valid list")
        if not content and not (last and role == "assistant"):
            raise _bad(f"messages.{i}: all messages must have non-empty content except for "
                       "the optional final assistant message")
        asked, self.asked, self.answered, self.results = self.asked, [], [], []
        leading = True  # tool_result blocks answer only at the start of the message
        for j, block in enumerate(blocks if content else []):
            kind = block.get("type") if isinstance(block, dict) else None
            at = f"messages.{i}.content.{j}"
            if kind == "tool_result" and role == "user":
                self._result(block, at, asked, leading)
                continue
            leading = False
            if kind == "text" and isinstance(block.get("text"), str):
                if not block["text"].strip():
                    raise _bad("messages: text content blocks must contain non-whitespace text")
            elif kind == "image" and role == "user":
                self.tokens += _image_tokens(block, at)
            elif kind == "tool_use" and role == "assistant":
                self._use(block, at)
            else:
                raise _bad(f"{at}: Input tag '{kind}' found using 'type' does not match any of "
                           f"the expected tags for a {role} message: {_BLOCKS}")
        missing = [u for u in asked if u not in self.answered]
        if missing:
            raise _unanswered(i - 1, missing)

    def _use(self, block: Json, at: str) -> None:
        use_id = _checked_id(block.get("id"), f"{at}.tool_use.id")
        if not isinstance(block.get("name"), str):
            raise _bad(f"{at}.tool_use.name: Field required")
        if not isinstance(block.get("input"), dict):
            raise _bad(f"{at}.tool_use.input: Input should be a valid dictionary")
        self.asked.append(use_id)
        self.names[use_id] = block["name"]
        self.tokens += count_tokens(block["name"]) + count_tokens(json.dumps(block["input"]))

    def _result(self, block: Json, at: str, asked: list[str], leading: bool) -> None:
        use_id = _checked_id(block.get("tool_use_id"), f"{at}.tool_result.tool_use_id")
        if use_id not in asked:
            raise _bad(f"{at}: unexpected `tool_use_id` found in `tool_result` blocks: {use_id}. "
                       "Each `tool_result` block must have a corresponding `tool_use` block in "
                       "the previous message.")
        if not isinstance(block.get("is_error", False), bool):
            raise _bad(f"{at}.tool_result.is_error: Input should be a valid boolean")
        text, tokens = _result_content(block, at)
        self.tokens += count_tokens(text) + tokens
        if leading:
            self.answered.append(use_id)
            self.results.append((self.names[use_id], text))


def _system(body: Json) -> str | None:
    system = body.get("system")
    if system is None or isinstance(system, str):
        return system
    if isinstance(system, list) and all(
        isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        for b in system
    ):
        return content_text(system)
    raise _bad("system: a string or a list of text blocks is required.")


def _messages(body: Json) -> list[Json]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: a non-empty list of messages is required.")
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "system":
            raise _bad('messages: Unexpected role "system". The Messages API accepts a '
                       "top-level `system` parameter, not \"system\" as an input message role.")
        if role not in ("user", "assistant"):
            raise _bad(f"messages.{i}.role: Input should be 'user' or 'assistant'")
    return messages


def _tools(body: Json) -> list[Tool]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _bad("tools: Input should be a valid list")
    out: list[Tool] = []
    for k, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type", "custom") != "custom":
            raise _bad(f"tools.{k}: the simulator serves client tools only (name, description, "
                       "input_schema)")
        name, schema = tool.get("name"), tool.get("input_schema")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise _bad(f"tools.{k}.custom.name: String should match pattern "
                       "'^[a-zA-Z0-9_-]{1,64}$'")
        if not isinstance(schema, dict):
            raise _bad(f"tools.{k}.custom.input_schema: Field required")
        if schema.get("type") != "object":
            raise _bad(f"tools.{k}.custom.input_schema.type: Input should be 'object'")
        out.append(Tool(name, schema))
    return out


def _tool_choice(body: Json, tools: list[Tool]) -> tuple[Mode, str | None, bool]:
    choice = body.get("tool_choice")
    if choice is None:
        return ("auto" if tools else "none"), None, True
    kind = choice.get("type") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or not isinstance(kind, str) or kind not in _MODES:
        raise _bad(f"tool_choice: Input tag '{kind}' found using 'type' does not match any of "
                   "the expected tags: 'auto', 'any', 'tool', 'none'")
    if not tools:
        raise _bad("tool_choice: may only be specified while providing tools")
    name = choice.get("name")
    if kind == "tool" and (not isinstance(name, str) or name not in {t.name for t in tools}):
        raise _bad(f"tool_choice.name: tool {name!r} is not in tools")
    disable = choice.get("disable_parallel_tool_use", False)
    if not isinstance(disable, bool):
        raise _bad("tool_choice.disable_parallel_tool_use: Input should be a valid boolean")
    return _MODES[kind], name if kind == "tool" else None, not disable


def parse_messages_request(body: Json) -> MessagesRequest:
    """POST /v1/messages, validated; what its answer needs."""
    model = p.model_of(body)
    limit = p.positive_int(body, "max_tokens", required=True)
    messages, system = _messages(body), _system(body)
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, int | float)
        or not 0 <= temperature <= 1
    ):
        raise _bad("temperature: range: 0..1")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream: Input should be a valid boolean")
    tools = _tools(body)
    mode, forced, parallel = _tool_choice(body, tools)
    seen = _Conversation()
    for i, message in enumerate(messages):
        seen.message(i, message, i == len(messages) - 1)
    if seen.asked:
        raise _unanswered(len(messages) - 1, seen.asked)
    ask = Ask(model, messages, limit, p.strings_of(body, "stop_sequences"), tools, mode,
              forced, parallel)
    if messages[-1]["role"] == "user":
        if seen.results:
            ask.results = seen.results
        else:
            ask.prompt = content_text(messages[-1]["content"])
    tokens = seen.tokens + count_prompt_tokens(messages, system)
    if tools:
        tokens += count_tokens(json.dumps(body["tools"], ensure_ascii=False))
    return MessagesRequest(ask, tokens, stream)
