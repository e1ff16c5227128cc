"""``stream: true`` at ``/v1/chat/completions``: the job's chunks as server-sent events in
OpenAI's chunk format, so the official SDKs' stream iterators work unchanged.

A first chunk with the assistant's role, then content and tool-call deltas (each call
by its index: id and name first, then argument fragments), a chunk with the finish
reason, a usage chunk (``choices: []``) when ``stream_options.include_usage`` asks for
it, and ``data: [DONE]``. Each event's id is the chunk's position: a request that
attaches to the same job (an Idempotency-Key, an SDK's retry) with ``Last-Event-ID``
resumes after it. A client that goes away cancels its job within a second.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent

from schemas import CompletionResult, FleetError, StreamChunk
from tasks import JobHandle
from workers.api.errors import fleet_error

__all__ = ["stream_response"]


def _chunk(job_id: str, model: str, created: int, delta: dict[str, Any],
           finish_reason: str | None = None, usage: dict[str, Any] | None = None,
           with_usage: bool = False) -> str:
    body: dict[str, Any] = {"id": f"chatcmpl-{job_id}", "object": "chat.completion.chunk",
                            "created": created, "model": model, "system_fingerprint": None,
                            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": finish_reason}]}
    if with_usage:
        body["usage"] = usage
    return json.dumps(body, ensure_ascii=False)


def _delta(chunk: StreamChunk) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if chunk.content:
        delta["content"] = chunk.content
    if chunk.tool_calls:
        delta["tool_calls"] = [
            {"index": c.index, **({"id": c.id, "type": "function"} if c.id else {}),
             "function": {**({"name": c.name} if c.name else {}), "arguments": c.arguments}}
            for c in chunk.tool_calls]
    return delta


async def _events(handle: JobHandle, model: str, include_usage: bool, timeout: float,
                  after: int) -> AsyncIterator[ServerSentEvent]:
    created = int(time.time())
    if after < 0:
        yield ServerSentEvent(_chunk(handle.job_id, model, created,
                                     {"role": "assistant", "content": ""},
                                     with_usage=include_usage))
    stream = handle.stream(timeout, after)
    try:
        async for chunk in stream:
            if not chunk.last:
                yield ServerSentEvent(_chunk(handle.job_id, model, created, _delta(chunk),
                                             with_usage=include_usage), id=str(chunk.i))
                continue
            result = stream.result
            yield ServerSentEvent(_chunk(handle.job_id, result.model, created, {},
                                         finish_reason=result.finish_reason or "stop",
                                         with_usage=include_usage), id=str(chunk.i))
            if include_usage:
                yield ServerSentEvent(json.dumps({
                    "id": f"chatcmpl-{handle.job_id}", "object": "chat.completion.chunk",
                    "created": created, "model": result.model, "choices": [],
                    "usage": _usage(result)}))
            yield ServerSentEvent("[DONE]")
    except FleetError as exc:
        # As OpenAI does mid-stream: an error event, then the stream ends.
        error = fleet_error(exc)
        yield ServerSentEvent(json.dumps({"error": {
            "message": error.message, "type": error.type, "param": error.param,
            "code": error.code}}))


def _usage(result: CompletionResult) -> dict[str, Any]:
    usage = result.usage
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def stream_response(handle: JobHandle, model: str, include_usage: bool, timeout: float,
                    after: int) -> EventSourceResponse:
    """The SSE response of a streamed job (``after``: the last position the client had,
    -1 for all)."""
    return EventSourceResponse(
        _events(handle, model, include_usage, timeout, after), ping=15,
        headers={"x-llmfleet-job-id": handle.job_id, "cache-control": "no-cache"})
