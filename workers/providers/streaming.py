"""Streamed answers, read as they come: server-sent events in each wire format turned
into the fleet's deltas (text, tool-call fragments), the last one carrying the finish
reason and, when the provider sends it, the usage.

OpenAI sends ``data:`` chunks (content and tool-call deltas by index; a last chunk with
``usage`` when ``stream_options.include_usage`` asks for it) and ``[DONE]``. Anthropic
sends typed events (message_start with the input tokens, content blocks started, their
text or JSON fragments, message_delta with the stop reason and output tokens,
message_stop; ``error`` when it fails mid-stream).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from schemas import ProviderOverloadedError, ProviderServerError, Usage

__all__ = ["Delta", "ToolCallDelta", "anthropic_deltas", "openai_deltas", "sse_events"]


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of the ``index``-th tool call: its id and name first, then fragments of
    its arguments' JSON."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Delta:
    content: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None
    #: Anything said at all (a delta an agent would see)?
    @property
    def visible(self) -> bool:
        return bool(self.content or self.tool_calls)


@dataclass(slots=True)
class _Event:
    name: str = "message"
    data: list[str] = field(default_factory=list)


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """(event name, data) of each server-sent event of ``response``."""
    event = _Event()
    async for line in response.aiter_lines():
        if not line:
            if event.data:
                yield event.name, "\n".join(event.data)
            event = _Event()
        elif line.startswith("event:"):
            event.name = line[6:].strip()
        elif line.startswith("data:"):
            event.data.append(line[5:].lstrip(" "))
    if event.data:
        yield event.name, "\n".join(event.data)


def _fail(provider: str, model: str, data: Any) -> Exception:
    error = data.get("error") if isinstance(data, dict) else None
    message = str(error.get("message", "")) if isinstance(error, dict) else str(data)[:200]
    kind = error.get("type") if isinstance(error, dict) else None
    cls = ProviderOverloadedError if kind in ("overloaded_error", "server_overloaded") \
        else ProviderServerError
    return cls(f"{provider}: {model}: the stream failed: {message}"[:300], provider=provider,
               model=model)


async def openai_deltas(response: httpx.Response, provider: str, model: str
                        ) -> AsyncIterator[Delta]:
    finish: str | None = None
    async for _, data in sse_events(response):
        if data.strip() == "[DONE]":
            break
        chunk = json.loads(data)
        if "error" in chunk:
            raise _fail(provider, model, chunk)
        usage = chunk.get("usage")
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            finish = choice.get("finish_reason") or finish
            calls = tuple(ToolCallDelta(
                index=int(c.get("index", 0)), id=c.get("id"),
                name=(c.get("function") or {}).get("name"),
                arguments=(c.get("function") or {}).get("arguments") or "")
                for c in delta.get("tool_calls") or ())
            if delta.get("content") or calls:
                yield Delta(content=delta.get("content") or "", tool_calls=calls)
        if usage:
            details = usage.get("prompt_tokens_details") or {}
            yield Delta(finish_reason=finish, usage=Usage(
                prompt_tokens=int(usage["prompt_tokens"]),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                cached_tokens=int(details.get("cached_tokens") or 0)))
            return
    yield Delta(finish_reason=finish)


_STOP = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
         "tool_use": "tool_calls", "refusal": "content_filter", "pause_turn": "stop"}


async def anthropic_deltas(response: httpx.Response, provider: str, model: str,
                           format_tool: str | None = None) -> AsyncIterator[Delta]:
    """Anthropic's events as deltas. The fragments of a response format's tool are the
    answer's own text (JSON), not a tool call."""
    read = written = prompt = output = 0
    finish: str | None = None
    calls: dict[int, int] = {}  # content block index -> tool call index
    as_text: set[int] = set()  # blocks of the response format's tool
    async for name, data in sse_events(response):
        event = json.loads(data)
        kind = event.get("type", name)
        if kind == "error":
            raise _fail(provider, model, event)
        if kind == "message_start":
            usage = (event.get("message") or {}).get("usage") or {}
            prompt, read = int(usage.get("input_tokens") or 0), \
                int(usage.get("cache_read_input_tokens") or 0)
            written = int(usage.get("cache_creation_input_tokens") or 0)
        elif kind == "content_block_start":
            block, index = event.get("content_block") or {}, int(event.get("index", 0))
            if block.get("type") == "tool_use" and block.get("name") == format_tool:
                as_text.add(index)
            elif block.get("type") == "tool_use":
                calls[index] = len(calls)
                yield Delta(tool_calls=(ToolCallDelta(index=calls[index], id=block.get("id"),
                                                      name=block.get("name")),))
        elif kind == "content_block_delta":
            delta, index = event.get("delta") or {}, int(event.get("index", 0))
            if delta.get("type") == "text_delta" and delta.get("text"):
                yield Delta(content=delta["text"])
            elif delta.get("type") == "input_json_delta" and index in as_text:
                yield Delta(content=delta.get("partial_json") or "")
            elif delta.get("type") == "input_json_delta" and index in calls:
                yield Delta(tool_calls=(ToolCallDelta(
                    index=calls[index], arguments=delta.get("partial_json") or ""),))
        elif kind == "message_delta":
            reason = str((event.get("delta") or {}).get("stop_reason") or "")
            finish = "stop" if as_text and reason == "tool_use" else \
                _STOP.get(reason, reason or None)
            output = int((event.get("usage") or {}).get("output_tokens") or output)
        elif kind == "message_stop":
            break
    yield Delta(finish_reason=finish, usage=Usage(prompt_tokens=prompt + read + written,
                                                  completion_tokens=output,
                                                  cached_tokens=read))
