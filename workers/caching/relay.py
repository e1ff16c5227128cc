"""A streamed job that follows an identical one in flight reads its provider stream live.

The coalescer has the follower wait for the job holding the key; a streamed follower
copies that holder's chunks into its own stream as they come, so its reader sees every
delta from the first, no later than the holder's own reader does, for one provider call.
Once a chunk went out, the follower's stream is that holder's: when the holder's stream
ends in an error (it failed, or its reader cancelled it) the follower's ends in
StreamInterruptedError, rather than a second answer glued onto part of the first. A
follower that copied nothing yet is free: it replays the answer or calls on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas import (
    CompletionResult,
    FleetError,
    FleetUnavailableError,
    JobTimeoutError,
    StreamInterruptedError,
    decode_outcome,
)
from schemas.cache_key import CachedAnswer
from schemas.keys import STREAM
from tasks._streams import read_chunks
from workers.pipeline.streams import StreamSink

__all__ = ["StreamRelay"]

#: A holder's stream that went quiet this long part-way is taken for dead.
IDLE_S = 30.0


class StreamRelay:
    """Copies the chunks of the holder a streamed job follows into the job's own sink."""

    def __init__(self, redis: aioredis.Redis, sink: StreamSink, idle_s: float = IDLE_S) -> None:
        self._redis, self._sink, self._idle_s = redis, sink, idle_s
        self._holder: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._after = -1  # the holder's last chunk position copied
        self._outcome: dict[str, Any] | None = None
        #: Chunks of the holder written to this job's stream.
        self.copied = 0

    def follow(self, holder: str) -> None:
        """The coalescer's ``watch``: read ``holder``'s stream from its start, unless
        another holder's chunks already went out."""
        if self.copied or holder == self._holder:
            return
        if self._task is not None:
            self._task.cancel()
        self._holder = holder
        self._task = asyncio.get_running_loop().create_task(self._copy(holder))

    async def _copy(self, holder: str) -> None:
        while True:
            try:
                async for chunk in read_chunks(self._redis, holder, self._idle_s, self._after):
                    self._after = chunk.i
                    if chunk.last:
                        self._outcome = chunk.outcome
                        return
                    self._sink.put(chunk.content, chunk.tool_calls or ())
                    self.copied += 1
            except (JobTimeoutError, FleetUnavailableError):
                if self.copied:  # quiet part-way: the holder is gone
                    self._outcome = {"ok": False}
                    return
                # nothing yet: it may be waiting on its first token, or not streamed

    async def settle(self, *, answered: bool) -> CachedAnswer | None:
        """The holder's answer once this job's stream carries (part of) it: after the
        coalescer answered (``answered``), or before this job would call itself. None
        when nothing was copied: the job writes its own stream."""
        if self._task is None or self._holder is None:
            return None
        if not self.copied and (not answered or not await self._streamed(self._holder)):
            await self.close()
            if not self.copied:
                return None
            # It had begun in the meantime: copy the rest.
            self._task = asyncio.get_running_loop().create_task(self._copy(self._holder))
        await self._task
        try:
            result = decode_outcome(self._outcome)
        except FleetError as exc:
            raise StreamInterruptedError(
                f"the identical job whose stream this one shared failed after {self.copied} "
                f"chunks: {exc.message}") from exc
        assert isinstance(result, CompletionResult)
        return CachedAnswer.of(result)

    async def _streamed(self, holder: str) -> bool:
        try:
            return bool(await self._redis.exists(STREAM.format(job_id=holder)))
        except RedisError:
            return False

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
