"""OpenAI's chat format to Anthropic's Messages API and back, whole: system apart, turns
that alternate, tool calls as ``tool_use`` blocks and the tool messages answering them as
one user turn of ``tool_result`` blocks in order, images as image blocks; tools to
``input_schema``, tool choice and parallel calls to Anthropic's ``tool_choice``; a
response format to a forced tool whose input is the answer.

Anthropic takes tool ids of ``[A-Za-z0-9_-]`` only: any other id is rewritten, the same
way for a call and its result, so a conversation begun on another provider stays valid.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from schemas import (
    ImagePart,
    JobValidationError,
    Message,
    ResponseFormat,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
)
from schemas.images import parse_data_url

__all__ = ["FORMAT_TOOL", "answer_from_format_tool", "format_tool", "to_wire", "tool_choice",
           "wire_tools"]

#: The name of the tool a response format becomes, unless its schema is named.
FORMAT_TOOL = "json_answer"
_ID = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_INVALID = re.compile(r"[^A-Za-z0-9_-]")
Turn = dict[str, Any]


def wire_id(call_id: str) -> str:
    """``call_id`` as Anthropic takes it: itself when it fits, else a rewrite that is
    still unique (a digest of the original appended)."""
    if _ID.match(call_id):
        return call_id
    digest = hashlib.sha256(call_id.encode()).hexdigest()[:8]
    return f"{_INVALID.sub('_', call_id)[:200]}_{digest}"


def _text_blocks(text: str) -> list[Turn]:
    """A text block, unless it holds only white space (Anthropic refuses those)."""
    return [{"type": "text", "text": text}] if text.strip() else []


def _image_block(part: ImagePart) -> Turn:
    url = part.image_url.url
    if url.startswith("data:"):
        image = parse_data_url(url)
        return {"type": "image", "source": {"type": "base64", "media_type": image.media_type,
                                            "data": image.base64}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _user_blocks(message: Message) -> list[Turn]:
    if not isinstance(message.content, list):
        return _text_blocks(message.text)
    blocks: list[Turn] = []
    for part in message.content:
        if isinstance(part, TextPart):
            blocks += _text_blocks(part.text)
        else:
            blocks.append(_image_block(part))
    return blocks


def _tool_use(call: ToolCall) -> Turn:
    arguments = call.arguments
    if not isinstance(arguments, dict):  # Anthropic takes an object: keep the rest whole
        arguments = {"value": arguments} if arguments is not None else \
            {"arguments": call.function.arguments}
    return {"type": "tool_use", "id": wire_id(call.id), "name": call.name, "input": arguments}


def _tool_result(message: Message) -> Turn:
    return {"type": "tool_result", "tool_use_id": wire_id(message.tool_call_id or ""),
            "content": message.text}


def to_wire(messages: list[Message]) -> tuple[str, list[Turn]]:
    """(system text, turns). Turns alternate, so neighbours of one role merge; the tool
    messages after an assistant's calls become the next user turn's first blocks. Raises
    JobValidationError when no turn is left (empty messages are dropped)."""
    system = "\n\n".join(m.text for m in messages if m.role in ("system", "developer"))
    turns: list[Turn] = []
    for message in messages:
        if message.role in ("system", "developer"):
            continue
        if message.role == "tool":
            role, blocks = "user", [_tool_result(message)]
        elif message.role == "assistant":
            role = "assistant"
            blocks = _text_blocks(message.text) + [_tool_use(c) for c in message.tool_calls or ()]
        else:
            role, blocks = "user", _user_blocks(message)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:  # Anthropic refuses an empty conversation: say why, as the caller's
        raise JobValidationError(
            "messages: nothing to send to an Anthropic model: every message is empty or "
            "a system message", field="messages")
    return system, turns


def wire_tools(tools: list[Tool] | None) -> list[Turn]:
    return [{"name": t.function.name,
             **({"description": t.function.description} if t.function.description else {}),
             "input_schema": t.function.parameters} for t in tools or ()]


def tool_choice(choice: ToolChoice | None, parallel: bool | None) -> Turn | None:
    """OpenAI's tool_choice and parallel_tool_calls as Anthropic's one ``tool_choice``."""
    if choice is None and parallel is not False:
        return None
    if choice == "none":
        return {"type": "none"}
    wire: Turn = ({"type": "auto"} if choice in (None, "auto") else
                  {"type": "any"} if choice == "required" else
                  {"type": "tool", "name": choice.function.name})  # type: ignore[union-attr]
    if parallel is False:
        wire["disable_parallel_tool_use"] = True
    return wire


def format_tool(response_format: ResponseFormat) -> tuple[Turn, bool]:
    """The forced tool a response format becomes, and whether its schema was wrapped (a
    tool's input is an object: any other schema travels as the object's ``value``)."""
    spec = response_format.json_schema
    schema: dict[str, Any] = spec.schema_ if spec is not None else {"type": "object"}
    wrapped = schema.get("type") != "object"
    if wrapped:
        schema = {"type": "object", "properties": {"value": schema}, "required": ["value"]}
    tool: Turn = {"name": spec.name if spec is not None else FORMAT_TOOL,
                  "description": (spec.description if spec and spec.description else
                                  "Answer with this tool: its input is the whole answer."),
                  "input_schema": schema}
    return tool, wrapped


def answer_from_format_tool(block: Turn, wrapped: bool) -> str:
    """The answer a format tool's call carries, as the JSON text of the content."""
    value = block.get("input")
    if wrapped and isinstance(value, dict):
        value = value.get("value")
    return json.dumps(value, ensure_ascii=False)
