"""In-flight coalescing: identical jobs running at the same time, on any workers, cost
one provider call.

The first takes a short lock (SET NX PX, refreshed while it works) in the same script
that looks the cache up, so no job calls after another stored; the rest follow it, woken
through pub/sub and polling in case a wake-up is lost, and take the lock over when it
expires (its holder died). A job's token is its id, so a follower knows whose stream it
may read (``watch``) and a redelivered job finds its own lock. Redis trouble never fails a
job: the job calls on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas import CompletionResult
from schemas.cache_key import CachedAnswer, entry_lookup_lua
from schemas.keys import CACHE_DONE, CACHE_ENTRY, CACHE_LOCK, CACHE_LRU, CACHE_WAKE
from tasks._pubsub import Channels

__all__ = ["Coalescer"]

log = logging.getLogger(__name__)

#: One look, atomic: the answer if there is one (on arrival the cache entry, marked used;
#: for a follower its holder's outcome), else the lock's holder, else the lock for the
#: caller. A follower that finds its holder failed takes the lock over if nobody has yet
#: ("failed", the new holder, the failure), so one job calls again and the rest keep
#: waiting. KEYS: lock, LRU index, the answer's key. ARGV: token, lock ms, what the
#: answer's key is ("entry" or "done").
_LOOK = ("""
local found
if ARGV[3] == 'entry' then""" + entry_lookup_lua("KEYS[3]", "KEYS[2]") + """else
  found = redis.call('GET', KEYS[3])
end
if found and ARGV[3] == 'entry' then return {'entry', found} end
local holder = redis.call('GET', KEYS[1])
if found then
  local ok, outcome = pcall(cjson.decode, found)
  if ok and outcome['ok'] then return {'done', found} end
  if not holder then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    holder = ARGV[1]
  end
  return {'failed', holder, found}
end
if holder then return {'held', holder} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {'held', ARGV[1]}
""")
#: Extend the lock while its holder is the one asking. KEYS: lock. ARGV: token, lock ms.
_KEEP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
#: Leave the outcome, release the lock if still ours, wake the followers.
#: KEYS: lock, done. ARGV: token, outcome, done ms, channel.
_FINISH = """
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', ARGV[4], ARGV[1])
return 1
"""
DONE_MS = 60_000

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
        self._lock_ms, self._refresh_s, self._poll_s = lock_ms, refresh_s, poll_s
        self._backoff_s = takeover_backoff_s
        self._look_lua = redis.register_script(_LOOK)
        self._keep = redis.register_script(_KEEP)
        self._finish = redis.register_script(_FINISH)
        self._wakeups = Channels(redis)

    async def run(self, key: str, produce: Produce, timeout: float, *,
                  token: str | None = None, watch: Watch | None = None
                  ) -> CompletionResult | CachedAnswer:
        """The cached answer; else ``produce()``'s result if this job made the call;
        else the answer of the identical job that did. The cache lookup and taking the
        lock are one step, so no job calls after another stored. Waits at most
        ``timeout`` for another job, then produces itself; when the job it waits on
        fails, one waiter takes over (after the failure's backoff), the others wait on.
        ``token``: the job's id (unique if not given); ``watch``: told each holder
        followed."""
        token = token or uuid.uuid4().hex
        try:
            look = await self._look(key, None, token)
            if look.answer is not None:
                return look.answer
            if look.holder is not None and look.holder != token:
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

    async def _look(self, key: str, holder: str | None, token: str) -> _Look:
        answer_key = (CACHE_ENTRY.format(key=key) if holder is None
                      else CACHE_DONE.format(key=key, token=holder))
        found = await self._look_lua(
            keys=[CACHE_LOCK.format(key=key), CACHE_LRU, answer_key],
            args=[token, self._lock_ms, "entry" if holder is None else "done"])
        kind, value = _text(found[0]), _text(found[1])
        if kind == "held":
            return _Look(holder=value)
        if kind == "entry":
            return _Look(answer=CachedAnswer.model_validate_json(value))
        if kind == "done":
            return _Look(answer=CachedAnswer.model_validate(json.loads(value)["answer"]))
        failure = json.loads(_text(found[2]))
        return _Look(holder=value, failed=True, retry_after=failure.get("retry_after"))

    async def _follow(self, key: str, holder: str, token: str, timeout: float,
                      watch: Watch | None) -> _Look:
        """Wait on the holder (and whoever takes over from it) until an answer comes,
        the lock falls to this job, or ``timeout`` passes (then nobody's lock)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if watch is not None:
            watch(holder)
        async with self._wakeups.watch(CACHE_WAKE.format(key=key)) as woken:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    return _Look()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(self._poll_s, left))
                woken.clear()
                look = await self._look(key, holder, token)
                if look.answer is not None or look.holder == token:
                    return look
                if look.holder and look.holder != holder and watch is not None:
                    watch(look.holder)
                holder = look.holder or holder

    async def _lead(self, key: str, token: str, produce: Produce
                    ) -> CompletionResult | CachedAnswer:
        keeper = asyncio.get_running_loop().create_task(self._keep_lock(key, token))
        outcome: dict[str, object] = {"ok": False}
        try:
            result = await produce()
            answer = result if isinstance(result, CachedAnswer) else CachedAnswer.of(result)
            outcome = {"ok": True, "answer": answer.model_dump(mode="json")}
            return result
        except Exception as exc:
            outcome = {"ok": False, "retry_after": getattr(exc, "retry_after", None)}
            raise
        finally:
            keeper.cancel()
            try:
                await self._finish(keys=[CACHE_LOCK.format(key=key),
                                         CACHE_DONE.format(key=key, token=token)],
                                   args=[token, json.dumps(outcome), DONE_MS,
                                         CACHE_WAKE.format(key=key)])
            except RedisError:
                log.warning("could not release the coalescing lock of %s: it expires", key)

    async def _keep_lock(self, key: str, token: str) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            with contextlib.suppress(RedisError):
                await self._keep(keys=[CACHE_LOCK.format(key=key)], args=[token, self._lock_ms])

    async def close(self) -> None:
        await self._wakeups.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
