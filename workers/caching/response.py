"""The exact response cache, shared by every worker via Redis.

``ResponseCache`` keeps answers under their key (``schemas.cache_key``) for
CACHE_TTL_SECONDS and within CACHE_MAX_SIZE entries: a sorted set indexes its own
entries by last use. A put is two writes sent with the job's others (``write``); every
``TRIM_EVERY`` puts of a process, one Lua script drops what expired from the index and
evicts the least recently used beyond the size, so two workers never evict past each
other (the size may be passed by a few dozen entries between trims). (Redis' own maxmemory LRU would
evict anything, the ledger spool included.) Scripts touch keys they compute, so they
assume one Redis, not a cluster. Redis trouble never fails a job: the cache misses.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas.cache_key import LOOKUP_LUA, CachedAnswer
from schemas.keys import CACHE_ENTRY, CACHE_LRU
from workers.pipeline.outbox import Write

__all__ = ["ResponseCache"]

log = logging.getLogger(__name__)

#: Store an entry, index it, drop index members unused for a TTL (their entries have
#: expired), evict the least recently used beyond the size. KEYS: entry, index.
#: ARGV: value, ttl ms, max size. Returns how many entries were evicted.
_PUT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], now, KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl)
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if over > 0 then
  local old = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #old, 2 do redis.call('DEL', old[i]) end
end
redis.call('PEXPIRE', KEYS[2], ttl)
return math.max(over, 0)
"""
#: Puts between two trims of the index, per process.
TRIM_EVERY = 32


#: Drop index members unused for a TTL (their entries expired), evict the least
#: recently used beyond the size. KEYS: index. ARGV: ttl ms, max size.
_TRIM = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2])
if over > 0 then
  local old = redis.call('ZPOPMIN', KEYS[1], over)
  for i = 1, #old, 2 do redis.call('DEL', old[i]) end
end
redis.call('PEXPIRE', KEYS[1], ttl)
return math.max(over, 0)
"""


class ResponseCache:
    """Answers by key in Redis, bounded by a TTL and an LRU size."""

    def __init__(self, redis: aioredis.Redis, *, ttl_s: float, max_size: int) -> None:
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._max_size = max_size
        self._lookup = redis.register_script(LOOKUP_LUA)
        self._put = redis.register_script(_PUT)
        self._puts = 0

    def write(self, key: str, answer: CachedAnswer) -> Write:
        """``answer`` stored under ``key`` and marked used, as writes for a job's
        outbox (``workers.pipeline.outbox``)."""
        entry, value = CACHE_ENTRY.format(key=key), answer.model_dump_json()
        self._puts += 1
        trim = self._puts % TRIM_EVERY == 0

        def add(pipe: Any) -> None:
            if self._max_size <= 0:
                return
            pipe.set(entry, value, px=self._ttl_ms)
            pipe.zadd(CACHE_LRU, {entry: time.time() * 1000})
            if trim:  # (EVAL: a pipeline cannot load a script it lacks)
                pipe.eval(_TRIM, 1, CACHE_LRU, self._ttl_ms, self._max_size)

        return add

    async def get(self, key: str) -> CachedAnswer | None:
        """The answer under ``key``, marked as just used; None on a miss."""
        try:
            raw = await self._lookup(keys=[CACHE_ENTRY.format(key=key), CACHE_LRU])
        except RedisError as exc:
            log.warning("cache lookup failed (%s): treated as a miss", type(exc).__name__)
            return None
        if raw is None:
            return None
        try:
            return CachedAnswer.model_validate_json(raw)
        except ValueError:
            return None  # an entry of another shape: a miss, overwritten by the next put

    async def put(self, key: str, answer: CachedAnswer) -> int:
        """Store ``answer``; how many least recently used entries it evicted."""
        if self._max_size <= 0:
            return 0
        try:
            evicted = await self._put(keys=[CACHE_ENTRY.format(key=key), CACHE_LRU],
                                      args=[answer.model_dump_json(), self._ttl_ms,
                                            self._max_size])
        except RedisError as exc:
            log.warning("cache store failed (%s): the answer is not cached",
                        type(exc).__name__)
            return 0
        return int(evicted)
