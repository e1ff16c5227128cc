"""The OpenAI chat request in full, refused (400, naming the param) as OpenAI refuses it.

Messages of every role, content parts (text, images), assistant tool calls and the
tool messages answering them, tools and tool_choice, response_format, streaming.
The checks are a few dict lookups per message; images and schemas cost only when
sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import _protocol as p
from ._answer import Ask
from ._images import URL_SIZE, data_url, openai_tokens, read_image
from ._openai_options import (
    bad_type,
    bad_value,
    missing,
    response_format_of,
    stream_of,
    tool_choice_of,
    tools_of,
)
from ._protocol import Reject
from ._text import content_text, count_prompt_tokens, count_tokens

Json = dict[str, Any]
_FIELDS = frozenset({
    "model", "messages", "audio", "frequency_penalty", "function_call", "functions",
    "logit_bias", "logprobs", "max_completion_tokens", "max_tokens", "metadata", "modalities",
    "n", "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key",
    "prompt_cache_retention", "reasoning_effort", "response_format", "safety_identifier",
    "seed", "service_tier", "stop", "store", "stream", "stream_options", "temperature",
    "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
})
_ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_PARTS = {"user": ("text", "image_url"), "assistant": ("text", "refusal")}
_DETAILS = ("auto", "low", "high")


@dataclass(slots=True)
class ChatRequest:
    ask: Ask
    prompt_tokens: int
    n: int
    stream: bool
    include_usage: bool


def _image_tokens(part: Json, at: str) -> int:
    image = part.get("image_url")
    if not isinstance(image, dict) or not isinstance(image.get("url"), str):
        raise missing(f"{at}.image_url.url")
    detail = image.get("detail") or "auto"
    if detail not in _DETAILS:
        raise bad_value(detail, _DETAILS, f"{at}.image_url.detail")
    url: str = image["url"]
    if url.startswith(("https://", "http://")):
        return openai_tokens(*URL_SIZE, detail)  # never fetched: taken to be 1024x1024
    decoded = data_url(url)
    if decoded is None or decoded[1] is None:
        message = (f"Invalid '{at}.image_url.url': expected a URL or a base64-encoded data URL "
                   f"with an image MIME type, but got a value of '{url[:40]}'.")
        raise Reject(400, message, param=f"{at}.image_url.url", code="invalid_value")
    found = read_image(decoded[1])
    if found is None:
        message = ("You uploaded an unsupported image. Please make sure your image has of one "
                   "the following formats: ['png', 'jpeg', 'gif', 'webp'].")
        raise Reject(400, message, param=f"{at}.image_url.url", code="invalid_image_format")
    return openai_tokens(found.width, found.height, detail)


def _content_tokens(message: Json, i: int) -> int:
    """Check a message's content; the tokens of its images."""
    role, content, at = message["role"], message.get("content"), f"messages[{i}].content"
    if content is None:
        if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            return 0
        raise missing(at)
    if isinstance(content, str):
        return 0
    if not isinstance(content, list):
        raise bad_type(at, "one of a string or array of objects", content)
    if not content:
        text = f"Invalid '{at}': empty array. Expected an array with minimum length 1."
        raise Reject(400, text, param=at, code="empty_array")
    allowed, tokens = _PARTS.get(role, ("text",)), 0
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image_url" and role != "user":
            text = (f"Invalid 'messages[{i}]'. Image URLs are only allowed for messages with "
                    f"role 'user', but this message with role '{role}' contains an image URL.")
            raise Reject(400, text, param=f"messages[{i}]", code="invalid_value")
        if kind not in allowed:
            raise bad_value(kind, allowed, f"{at}[{j}].type")
        if kind == "image_url":
            tokens += _image_tokens(part, f"{at}[{j}]")
        elif not isinstance(part.get(kind), str):
            raise bad_type(f"{at}[{j}].{kind}", "a string", part.get(kind))
    return tokens


def _tool_calls(message: Json, i: int) -> tuple[dict[str, str], int]:
    """An assistant's tool calls: their ids (to names) and their tokens."""
    calls, at = message["tool_calls"], f"messages[{i}].tool_calls"
    if not isinstance(calls, list) or not calls:
        raise bad_type(at, "a non-empty array of objects", calls)
    names: dict[str, str] = {}
    tokens = 0
    for k, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or not isinstance(call.get("id"), str):
            raise missing(f"{at}[{k}].id")
        if call.get("type") != "function":
            raise bad_value(call.get("type"), ("function",), f"{at}[{k}].type")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise missing(f"{at}[{k}].function.name")
        if not isinstance(function.get("arguments"), str):
            raise bad_type(f"{at}[{k}].function.arguments", "a string", function.get("arguments"))
        names[call["id"]] = function["name"]
        tokens += count_tokens(function["name"]) + count_tokens(function["arguments"])
    return names, tokens


def _unanswered(pending: dict[str, str], at: int) -> Reject:
    message = ("An assistant message with 'tool_calls' must be followed by tool messages "
               "responding to each 'tool_call_id'. The following tool_call_ids did not have "
               f"response messages: {', '.join(pending)}")
    return Reject(400, message, param=f"messages.[{at}].role")


def _tool_message(message: Json, i: int, names: dict[str, str]) -> str:
    """Check a tool message against the calls before it; the name of the tool it answers."""
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise missing(f"messages[{i}].tool_call_id")
    if not names:
        text = ("Invalid parameter: messages with role 'tool' must be a response to a "
                "preceeding message with 'tool_calls'.")
        raise Reject(400, text, param=f"messages.[{i}].role")
    if call_id not in names:
        text = (f"Invalid parameter: 'tool_call_id' of '{call_id}' not found in 'tool_calls' "
                "of previous message.")
        raise Reject(400, text, param=f"messages.[{i}].tool_call_id")
    return names[call_id]


def _conversation(messages: list[Json]) -> tuple[int, list[tuple[str, str]]]:
    """Check every message and the pairing of tool calls with tool messages; the tokens
    of images and tool calls, and the results of the trailing tool messages."""
    tokens, asked_at = 0, -1
    names: dict[str, str] = {}  # the calls of the assistant message the tool messages answer
    pending: dict[str, str] = {}  # those of them not answered yet
    results: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        role = message["role"]
        if role != "tool" and pending:
            raise _unanswered(pending, asked_at)
        tokens += _content_tokens(message, i)
        if role == "tool":
            name = _tool_message(message, i, names)
            pending.pop(message["tool_call_id"], None)
            results.append((name, content_text(message.get("content"))))
            continue
        names, results = {}, []
        if role == "assistant" and message.get("tool_calls") is not None:
            names, more = _tool_calls(message, i)
            pending, asked_at, tokens = dict(names), i, tokens + more
    if pending:
        raise _unanswered(pending, asked_at)
    return tokens, results


def _messages(body: Json) -> list[Json]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Reject(400, "messages: a non-empty list of messages is required.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_type(f"messages[{i}]", "an object", message)
        if message.get("role") not in _ROLES:
            raise bad_value(message.get("role"), _ROLES, f"messages[{i}].role")
    return messages


def parse_chat_request(body: Json) -> ChatRequest:
    """POST /v1/chat/completions, validated; what its answer needs."""
    unknown = sorted(body.keys() - _FIELDS)
    if unknown:
        raise Reject(400, f"Unrecognized request argument supplied: {unknown[0]}")
    model, messages = p.model_of(body), _messages(body)
    limit = p.positive_int(body, "max_completion_tokens") or p.positive_int(body, "max_tokens")
    n = p.positive_int(body, "n") or 1
    tools = tools_of(body)
    mode, forced, parallel = tool_choice_of(body, tools)
    ask = Ask(model, messages, limit, p.strings_of(body, "stop"), tools, mode, forced, parallel)
    tokens = response_format_of(body, messages, ask)
    stream, include_usage = stream_of(body)
    more, results = _conversation(messages)
    last = messages[-1]["role"]
    ask.prompt = content_text(messages[-1].get("content")) if last == "user" else None
    ask.results = results if last == "tool" else None
    if tools:
        tools_json = json.dumps(body["tools"], ensure_ascii=False, separators=(",", ":"))
        tokens += count_tokens(tools_json)
    prompt_tokens = count_prompt_tokens(messages) + tokens + more
    return ChatRequest(ask, prompt_tokens, n, stream, include_usage)
