"""A streamed job's chunks on their way to Redis, and its answer put together from them.

``StreamSink`` appends chunks to the job's Redis Stream (``STREAM``) in order and as fast
as they come: one writer task sends whatever is pending in one round trip, so a burst of
deltas costs one, and the provider is never waited on by Redis. ``Assembler`` keeps
what the deltas said, so that the job's result (and its bill, when the stream stops
early) is the one a job that was not streamed would have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas import (
    ProviderError,
    ProviderServerError,
    StreamChunk,
    StreamInterruptedError,
    ToolCall,
    ToolCallChunk,
    Usage,
)
from schemas.keys import STREAM
from workers.pipeline.pricing import count_tokens
from workers.providers import ChatRequest, Completion, Delta, Provider

if TYPE_CHECKING:  # the context holds a sink: no import cycle at run time
    from workers.pipeline.attempts import AttemptRunner
    from workers.pipeline.steps import JobContext

__all__ = ["STREAM_TTL_S", "Assembler", "StreamSink", "chunk_calls", "stream_call"]

log = logging.getLogger(__name__)
#: How long a stream stays readable after its last chunk (for late or returning readers).
STREAM_TTL_S = 600
#: Entries a stream keeps at most (a reader far behind loses the oldest).
MAX_ENTRIES = 20_000


class StreamSink:
    """The writer of one job's stream."""

    def __init__(self, redis: aioredis.Redis, job_id: str) -> None:
        self._redis = redis
        self._key = STREAM.format(job_id=job_id)
        self._pending: list[str] = []
        self._wake = asyncio.Event()
        self._done = False
        self._task: asyncio.Task[None] | None = None
        #: Chunks written (queued) so far; the first one's epoch time.
        self.written = 0
        self.first_at: float | None = None

    def put(self, content: str = "", tool_calls: Iterable[ToolCallChunk] = ()) -> None:
        calls = list(tool_calls)
        chunk = StreamChunk(i=self.written, content=content, tool_calls=calls or None)
        self._queue(chunk)
        if self.first_at is None:
            self.first_at = time.time()

    def _queue(self, chunk: StreamChunk) -> None:
        self.written += 1
        self._pending.append(chunk.model_dump_json(exclude_defaults=True))
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._write())

    async def finish(self, outcome: dict[str, Any], finish_reason: str | None) -> None:
        """Write the last chunk (the job's outcome) and everything before it; the
        stream expires a while after."""
        self._queue(StreamChunk(i=self.written, finish_reason=finish_reason, outcome=outcome))
        self._done = True
        assert self._task is not None
        try:
            await self._task
        except RedisError as exc:
            log.warning("stream %s: chunks lost (%s)", self._key, type(exc).__name__)

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for entry in batch:
                        pipe.xadd(self._key, {"c": entry}, maxlen=MAX_ENTRIES,
                                  approximate=True)
                    if self._done and not self._pending:
                        pipe.expire(self._key, STREAM_TTL_S)
                    await pipe.execute()
            if self._done and not self._pending:
                return

    async def close(self) -> None:
        """Stop writing (the job ends without a last chunk: its worker is stopping)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError):
                await self._task


@dataclass
class _Call:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class Assembler:
    """What a stream's deltas said, put together."""

    text: list[str] = field(default_factory=list)
    calls: dict[int, _Call] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: Usage | None = None

    def add(self, delta: Delta) -> None:
        if delta.content:
            self.text.append(delta.content)
        for piece in delta.tool_calls:
            call = self.calls.setdefault(piece.index, _Call())
            call.id = piece.id or call.id
            call.name = piece.name or call.name
            call.arguments.append(piece.arguments)
        self.finish_reason = delta.finish_reason or self.finish_reason
        self.usage = delta.usage or self.usage

    def spent(self, prompt_tokens: int) -> Usage:
        """The usage the provider said, else counted from what it wrote (estimated): what
        a stream that stopped early is billed."""
        if self.usage is not None:
            return self.usage
        written = count_tokens("".join(self.text)) + sum(
            count_tokens(c.name + "".join(c.arguments)) for c in self.calls.values())
        return Usage(prompt_tokens=prompt_tokens, completion_tokens=written, estimated=True)

    def completion(self) -> Completion:
        calls = [ToolCall.model_validate({"id": c.id or f"call_{i}", "function": {
            "name": c.name, "arguments": "".join(c.arguments)}})
            for i, c in sorted(self.calls.items())]
        return Completion(content="".join(self.text), finish_reason=self.finish_reason,
                          usage=self.usage, tool_calls=calls or None)


def chunk_calls(delta: Delta) -> list[ToolCallChunk]:
    return [ToolCallChunk(index=c.index, id=c.id, name=c.name, arguments=c.arguments)
            for c in delta.tool_calls]


async def stream_call(provider: Provider, request: ChatRequest, runner: AttemptRunner,
                      ctx: JobContext, max_retries: int) -> Completion:
    """One model's streamed answer, written to the job's sink as it comes. Opening the
    stream and reading to its first delta is one attempt, retried as any call is; after
    that, what was written went out, so a failure ends the job (StreamInterruptedError)
    and what the provider wrote until then is billed to it (``ctx.discarded``)."""
    assert ctx.sink is not None
    sink, assembler = ctx.sink, Assembler()

    async def first() -> tuple[Delta, AsyncIterator[Delta]]:
        iterator = aiter(provider.stream(request))
        async for delta in iterator:
            if delta.visible or delta.finish_reason is not None or delta.usage is not None:
                return delta, iterator
        raise ProviderServerError(f"{provider.name}: {request.model}: an empty stream",
                                  provider=provider.name, model=request.model)

    delta, iterator = await runner.run(first, model=request.model, provider=provider.name,
                                       max_retries=max_retries, deadline=ctx.deadline,
                                       log=ctx.log, quota=ctx.quota)
    try:
        while True:
            assembler.add(delta)
            if delta.visible:
                sink.put(delta.content, chunk_calls(delta))
            delta = await anext(iterator)
    except StopAsyncIteration:
        return assembler.completion()
    except ProviderError as exc:
        ctx.discarded.append((request.model, assembler.spent(ctx.prompt_tokens)))
        raise StreamInterruptedError(f"{exc.message} (after {sink.written} chunks)",
                                     provider=provider.name, model=request.model,
                                     status_code=exc.status_code) from exc
    except asyncio.CancelledError:  # the job was cancelled: bill what was written
        ctx.discarded.append((request.model, assembler.spent(ctx.prompt_tokens)))
        raise
    finally:
        with contextlib.suppress(Exception):
            await iterator.aclose()  # type: ignore[attr-defined]
