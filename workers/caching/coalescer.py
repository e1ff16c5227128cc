"""In-flight coalescing: identical jobs running at the same time, on any workers, cost
one provider call.

The first takes a short lock (SET NX PX, refreshed while it works), holding its job's
id, in the same round trip that looks the cache up; the rest follow it: they read the
holder's outcome from its job state (``JOB_STATE``), woken when it is stored
(``JOB_WAKE``) and polling in case a wake-up is lost. A holder whose answer is cached
leaves the lock to expire (a job just like it finds the entry first); one whose answer
may not be cached (cut short, from a fallback model, an error) gives it up as it ends
(``release``), so the next such job calls again. When the holder failed, one follower takes the
lock over (compare and set) and calls; when the lock lapsed (its holder died), the
first to see it takes it. A job's token is its id, so a follower knows whose stream it
may read (``watch``) and a redelivered job finds its own lock. Redis trouble never
fails a job: the job calls on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas import CompletionResult
from schemas.cache_key import CachedAnswer
from schemas.keys import CACHE_ENTRY, CACHE_LOCK, CACHE_LRU, JOB_STATE, JOB_WAKE
from tasks._pubsub import Channels
from tasks._redis import as_text
from tasks._results import state_envelope
from workers.pipeline.outbox import Write

__all__ = ["Coalescer"]

log = logging.getLogger(__name__)

#: Take the lock over from a holder that failed, if nobody has yet. KEYS: lock.
#: ARGV: the failed holder, the taker, lock ms. Returns the holder now.
_TAKE_OVER = """
local holder = redis.call('GET', KEYS[1])
if not holder or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return ARGV[2]
end
return holder
"""
#: Give the lock up if its holder is the one asking. KEYS: lock. ARGV: token.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
#: Extend the lock while its holder is the one asking. KEYS: lock. ARGV: token, lock ms.
_KEEP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

#: The holder's work: a provider's result, or an answer it found (by meaning).
Produce = Callable[[], Awaitable[CompletionResult | CachedAnswer]]
#: Told each holder a job follows, by its token (the holder's job id).
Watch = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class _Look:
    """What one look found: an answer; or who holds the lock now (maybe the caller),
    and, when the holder followed until now failed, the seconds it asked to wait."""

    answer: CachedAnswer | None = None
    holder: str | None = None
    failed: bool = False
    retry_after: float | None = None


class Coalescer:
    """One provider call per key at a time, fleet-wide; identical jobs share it."""

    def __init__(self, redis: aioredis.Redis, *, lock_ms: int = 5000, refresh_s: float = 2.0,
                 poll_s: float = 0.25, takeover_backoff_s: float = 0.25) -> None:
        self._redis = redis
        self._lock_ms, self._refresh_s, self._poll_s = lock_ms, refresh_s, poll_s
        self._backoff_s = takeover_backoff_s
        self._take_over = redis.register_script(_TAKE_OVER)
        self._keep = redis.register_script(_KEEP)
        self._wakeups = Channels(redis)

    async def run(self, key: str, produce: Produce, timeout: float, *,
                  token: str, watch: Watch | None = None) -> CompletionResult | CachedAnswer:
        """The cached answer; else ``produce()``'s result if this job made the call;
        else the answer of the identical job that did. Waits at most ``timeout`` for
        another job, then produces itself; when the job it waits on fails, one waiter
        takes over (after the failure's backoff), the others wait on. ``token``: the
        job's id; ``watch``: told each holder followed."""
        try:
            look = await self._first_look(key, token)
            if look.answer is not None:
                return look.answer
            if look.holder != token:
                assert look.holder is not None
                look = await self._follow(key, look.holder, token, timeout, watch)
                if look.answer is not None:
                    return look.answer
        except (RedisError, ValueError) as exc:
            log.warning("cache unavailable (%s): calling on", type(exc).__name__)
            return await produce()
        if look.holder != token:
            return await produce()  # waited as long as allowed: call on, unlocked
        if look.failed:
            await asyncio.sleep(look.retry_after if look.retry_after is not None
                                else random.uniform(0, self._backoff_s))
        return await self._lead(key, token, produce)

    async def _first_look(self, key: str, token: str) -> _Look:
        """The entry and the lock, in one round trip: the answer, or the lock taken, or
        who holds it."""
        entry, lock = CACHE_ENTRY.format(key=key), CACHE_LOCK.format(key=key)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(entry)
            pipe.set(lock, token, nx=True, px=self._lock_ms)
            found, took = await pipe.execute()
        if found is not None:
            with contextlib.suppress(ValueError):
                answer = CachedAnswer.model_validate_json(found)
                await self._redis.zadd(CACHE_LRU, {entry: _now_ms()})  # marked used
                return _Look(answer=answer)
        if took:
            return _Look(holder=token)
        holder = await self._redis.get(lock)
        if holder is None:  # lapsed between the two: look again
            return await self._first_look(key, token)
        return _Look(holder=as_text(holder))

    async def _follow(self, key: str, holder: str, token: str, timeout: float,
                      watch: Watch | None) -> _Look:
        """Wait on the holder (and whoever takes over from it) until an answer comes,
        the lock falls to this job, or ``timeout`` passes (then nobody's lock)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if watch is not None:
                watch(holder)
            async with self._wakeups.watch(JOB_WAKE.format(job_id=holder)) as woken:
                while True:
                    look = await self._look_at(key, holder, token)
                    if look is not None:
                        break
                    left = deadline - loop.time()
                    if left <= 0:
                        return _Look()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(woken.wait(), min(self._poll_s, left))
                    woken.clear()
            if look.answer is not None or look.holder == token:
                return look
            assert look.holder is not None
            holder = look.holder  # another took over: follow it

    async def _look_at(self, key: str, holder: str, token: str) -> _Look | None:
        """The holder's outcome if it has one (or the lock, taken over or lapsed);
        None while it runs."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(JOB_STATE.format(job_id=holder))
            pipe.get(CACHE_LOCK.format(key=key))
            state, lock = await pipe.execute()
        envelope = state_envelope(state)
        if envelope is not None and envelope.get("ok"):
            result = CompletionResult.model_validate(envelope["result"])
            return _Look(answer=CachedAnswer.of(result))
        if envelope is not None:  # it failed: one follower takes over, after its backoff
            now = as_text(await self._take_over(keys=[CACHE_LOCK.format(key=key)],
                                              args=[holder, token, self._lock_ms]))
            fields = (envelope.get("error") or {}).get("fields") or {}
            return _Look(holder=now, failed=now == token, retry_after=fields.get("retry_after"))
        if lock is None:  # lapsed: its holder died; the first to see it takes it
            if await self._redis.set(CACHE_LOCK.format(key=key), token, nx=True,
                                     px=self._lock_ms):
                return _Look(holder=token)
            return None
        if as_text(lock) != holder:
            return _Look(holder=as_text(lock))
        return None

    async def _lead(self, key: str, token: str, produce: Produce
                    ) -> CompletionResult | CachedAnswer:
        """Call, keeping the lock while the call lasts. The lock is left to expire: the
        job's outcome, stored when it ends, answers its followers."""
        loop = asyncio.get_running_loop()
        keeping = _Keeping(loop, self._refresh_s, lambda: self._keep(
            keys=[CACHE_LOCK.format(key=key)], args=[token, self._lock_ms]))
        try:
            return await produce()
        finally:
            keeping.stop()

    def release(self, key: str, token: str) -> Write:
        """A write for the job's outbox: the lock given up, if ``token`` holds it."""
        lock = CACHE_LOCK.format(key=key)
        return lambda pipe: pipe.eval(_RELEASE, 1, lock, token)

    async def close(self) -> None:
        await self._wakeups.close()


class _Keeping:
    """A timer that refreshes the lock every ``every_s``: no task for a call that ends
    sooner (most do)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, every_s: float,
                 refresh: Callable[[], Awaitable[Any]]) -> None:
        self._loop, self._every_s, self._refresh = loop, every_s, refresh
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer = loop.call_later(every_s, self._due)

    def _due(self) -> None:
        task = self._loop.create_task(self._quietly())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._timer = self._loop.call_later(self._every_s, self._due)

    async def _quietly(self) -> None:
        with contextlib.suppress(RedisError):
            await self._refresh()

    def stop(self) -> None:
        self._timer.cancel()


def _now_ms() -> float:
    return time.time() * 1000
