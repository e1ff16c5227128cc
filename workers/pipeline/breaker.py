"""A model route that keeps failing is skipped by every worker for a cool-down.

The unit is a route, ``provider:model``: one overloaded model must not take its
provider's healthy models down with it, and a provider that is down trips each of its
routes on their own. State lives in Redis so that one worker's discovery spares the
others. The breaker opens when, within the current window, a route has at least
``failure_threshold`` transient failures and they are at least half of its calls, so a
steady few percent of errors never trips it. Failures are counted at once (one round
trip); successes are summed in-process and flushed once a second; the open/closed check
is cached for a second. When the cool-down key expires, calls resume.
"""

from __future__ import annotations

import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas import BreakerConfig
from schemas.keys import BREAKER_CALLS, BREAKER_FAILURES, BREAKER_OPEN

__all__ = ["Breaker", "route_key"]

log = logging.getLogger(__name__)
_CHECK_EVERY_S = 1.0
_FLUSH_EVERY_S = 1.0
#: Share of a window's calls that must have failed for the breaker to open.
_FAILURE_SHARE = 0.5


def route_key(provider: str, model: str) -> str:
    return f"{provider}:{model}"


class Breaker:
    def __init__(self, redis: aioredis.Redis, config: BreakerConfig) -> None:
        self._redis = redis
        self._config = config
        self._open_until: dict[str, tuple[float, float]] = {}  # route -> (until, checked)
        self._successes: dict[str, int] = {}
        self._flushed_at = time.monotonic()

    def _bucket(self) -> int:
        return int(time.time() // self._config.window_s)

    async def is_open(self, route: str) -> bool:
        now = time.monotonic()
        until, checked = self._open_until.get(route, (0.0, -_CHECK_EVERY_S))
        if now - checked < _CHECK_EVERY_S:
            return now < until
        try:
            ttl_ms = await self._redis.pttl(BREAKER_OPEN.format(route=route))
        except RedisError:
            log.warning("breaker state unreadable; treating %s as closed", route)
            ttl_ms = -2
        until = now + ttl_ms / 1000 if ttl_ms > 0 else 0.0
        self._open_until[route] = (until, now)
        return now < until

    async def record_failure(self, route: str) -> None:
        bucket, expiry = self._bucket(), int(self._config.window_s * 2) + 1
        fails_key = BREAKER_FAILURES.format(route=route, bucket=bucket)
        calls_key = BREAKER_CALLS.format(route=route, bucket=bucket)
        pending = self._successes.pop(route, 0)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(fails_key)
                pipe.incrby(calls_key, pending + 1)
                pipe.expire(fails_key, expiry)
                pipe.expire(calls_key, expiry)
                fails, calls, _, _ = await pipe.execute()
            if fails >= self._config.failure_threshold and fails >= _FAILURE_SHARE * calls:
                await self._open(route, fails, calls)
        except RedisError:
            log.warning("breaker could not record a failure of %s", route)

    async def _open(self, route: str, fails: int, calls: int) -> None:
        opened = await self._redis.set(BREAKER_OPEN.format(route=route), "1",
                                       px=int(self._config.cooldown_s * 1000), nx=True)
        if opened:
            log.warning("%s failed %d of %d calls: every worker skips it for %.0fs",
                        route, fails, calls, self._config.cooldown_s)
        self._open_until.pop(route, None)

    async def record_success(self, route: str) -> None:
        self._successes[route] = self._successes.get(route, 0) + 1
        if time.monotonic() - self._flushed_at >= _FLUSH_EVERY_S:
            await self.flush()

    async def flush(self) -> None:
        """Add this process's counted successes to the shared window."""
        self._flushed_at = time.monotonic()
        pending, self._successes = self._successes, {}
        if not pending:
            return
        bucket, expiry = self._bucket(), int(self._config.window_s * 2) + 1
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for route, count in pending.items():
                    key = BREAKER_CALLS.format(route=route, bucket=bucket)
                    pipe.incrby(key, count)
                    pipe.expire(key, expiry)
                await pipe.execute()
        except RedisError:
            log.warning("breaker could not record successes")
