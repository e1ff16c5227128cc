"""Reading a streamed job: its chunks from the job's Redis Stream, from any position, in
order, to the last one (which carries the job's outcome).

Each reader blocks on XREAD on a connection of its own (a pool apart from the result
waiter's, so many streams at once never starve the waits), on the waiter's event loop
thread; the sync iterator hands chunks across with a queue. A reader that closes early
cancels its job: nobody else is reading it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas import (
    ClientClosedError,
    CompletionResult,
    FleetUnavailableError,
    JobTimeoutError,
    StreamChunk,
    ToolCallChunk,
    decode_outcome,
    encode_result,
    split_answer,
)
from schemas.keys import STREAM
from tasks._redis import async_pool

__all__ = ["ChunkStream", "read_chunks", "replayed", "stream_pool"]

#: Connections of one client's stream readers (each XREAD that blocks holds one).
MAX_READERS = 1024
_BLOCK_MS = 1000
_END = object()


async def read_chunks(redis: aioredis.Redis, job_id: str, timeout: float | None,
                      after: int = -1) -> AsyncIterator[StreamChunk]:
    """The job's chunks after position ``after``, to the last; JobTimeoutError when none
    comes for ``timeout`` seconds (the stream may not exist yet: its job is queued)."""
    key, cursor = STREAM.format(job_id=job_id), "0-0"
    idle_since = time.monotonic()
    while True:
        try:
            batches: Any = await redis.xread({key: cursor}, count=256, block=_BLOCK_MS)
        except (RedisError, OSError) as exc:
            if timeout is not None and time.monotonic() - idle_since > timeout:
                raise FleetUnavailableError(f"the stream of job {job_id} is unreachable: "
                                            f"{type(exc).__name__}") from exc
            await asyncio.sleep(0.2)
            continue
        if not batches:
            if timeout is not None and time.monotonic() - idle_since > timeout:
                raise JobTimeoutError(f"no chunk of job {job_id} within {timeout}s",
                                      job_id=job_id, timeout=timeout)
            continue
        idle_since = time.monotonic()
        # RESP2 answers [[key, entries]], RESP3 {key: entries}.
        entries = next(iter(batches.values())) if isinstance(batches, dict) else batches[0][1]
        for entry_id, fields in entries:
            cursor = entry_id
            chunk = StreamChunk.model_validate_json(fields[b"c"])
            if chunk.i > after:
                yield chunk
            if chunk.last:
                return


class ChunkStream:
    """A streamed job's chunks as a sync and an async iterator. After the last chunk,
    ``result`` is the job's result (the same a job not streamed returns), or the job's
    error is raised. Closing it early (``close()``, leaving a ``with`` or breaking an
    ``async for`` that closes it) cancels the job."""

    def __init__(self, job_id: str, chunks: Callable[[], AsyncIterator[StreamChunk]],
                 loop: asyncio.AbstractEventLoop, cancel: Callable[[], None]) -> None:
        self.job_id = job_id
        self._chunks, self._loop, self._cancel = chunks, loop, cancel
        self._result: CompletionResult | None = None
        self._ended = False
        self._queue: queue.Queue[Any] | None = None
        self._pump: concurrent.futures.Future[None] | None = None

    @property
    def result(self) -> CompletionResult:
        if self._result is None:
            raise RuntimeError("the stream has not ended yet: read it to its end")
        return self._result

    def _end(self, chunk: StreamChunk) -> None:
        self._ended = True
        assert chunk.outcome is not None
        result = decode_outcome(chunk.outcome)  # raises the job's error
        assert isinstance(result, CompletionResult)
        self._result = result

    # -- async ------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        return self._async_chunks()

    async def _async_chunks(self) -> AsyncIterator[StreamChunk]:
        source = self._chunks()

        async def step() -> StreamChunk:
            return await anext(source)

        try:
            while True:
                future = asyncio.run_coroutine_threadsafe(step(), self._loop)
                try:
                    chunk = await asyncio.wrap_future(future)
                except StopAsyncIteration:
                    return
                except RuntimeError as exc:  # the client's loop is gone
                    raise ClientClosedError("the client was closed") from exc
                if chunk.last:
                    self._end(chunk)
                yield chunk
        finally:
            self.close()

    # -- sync -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[StreamChunk]:
        self._queue = queue.Queue()
        self._pump = asyncio.run_coroutine_threadsafe(self._fill(self._queue), self._loop)
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                if item.last:
                    self._end(item)
                yield item
        finally:
            self.close()

    async def _fill(self, into: queue.Queue[Any]) -> None:
        try:
            async for chunk in self._chunks():
                into.put(chunk)
        except Exception as exc:
            into.put(exc)
        finally:
            into.put(_END)

    def close(self) -> None:
        """Stop reading; a job whose stream did not end is cancelled."""
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
        if not self._ended:
            self._ended = True
            with _quiet():
                self._cancel()

    def __enter__(self) -> ChunkStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _quiet:
    """Cancelling is best effort: a Redis that does not answer must not hide the error
    that ended the read."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, value: Any, tb: Any) -> bool:
        return kind is not None and issubclass(kind, RedisError | OSError)


def stream_pool(url: str) -> aioredis.Redis:
    pool = async_pool(url, max_connections=MAX_READERS, timeout=None)
    return aioredis.Redis(connection_pool=pool)


async def replayed(result: CompletionResult) -> AsyncIterator[StreamChunk]:
    """A whole answer (a cache hit at submit) as the chunks a worker would have written."""
    index = 0
    for piece in split_answer(result.content):
        yield StreamChunk(i=index, content=piece)
        index += 1
    for n, call in enumerate(result.tool_calls or ()):
        yield StreamChunk(i=index, tool_calls=[ToolCallChunk(
            index=n, id=call.id, name=call.name, arguments=call.function.arguments)])
        index += 1
    yield StreamChunk(i=index, finish_reason=result.finish_reason,
                      outcome=encode_result(result))
