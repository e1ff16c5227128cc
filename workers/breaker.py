"""A provider that keeps failing is skipped by every worker for a cool-down.

State lives in Redis so that one worker's discovery spares all the others. A failure
costs one Redis round trip; a success costs none unless this process saw a failure of
that provider lately; the open/closed check is cached for a second per process. After
the cool-down key expires, calls resume (the first ones are the probe).
"""

from __future__ import annotations

import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas import BreakerConfig
from workers.keys import BREAKER_FAILURES, BREAKER_OPEN

__all__ = ["Breaker"]

log = logging.getLogger(__name__)
_CHECK_EVERY_S = 1.0


class Breaker:
    def __init__(self, redis: aioredis.Redis, config: BreakerConfig) -> None:
        self._redis = redis
        self._config = config
        self._open_until: dict[str, tuple[float, float]] = {}  # provider -> (until, checked)
        self._failed_lately: set[str] = set()

    async def is_open(self, provider: str) -> bool:
        now = time.monotonic()
        until, checked = self._open_until.get(provider, (0.0, -_CHECK_EVERY_S))
        if now - checked < _CHECK_EVERY_S:
            return now < until
        try:
            ttl_ms = await self._redis.pttl(BREAKER_OPEN.format(provider=provider))
        except RedisError:
            log.warning("breaker state unreadable; treating %s as closed", provider)
            ttl_ms = -2
        until = now + ttl_ms / 1000 if ttl_ms > 0 else 0.0
        self._open_until[provider] = (until, now)
        return now < until

    async def record_failure(self, provider: str) -> None:
        self._failed_lately.add(provider)
        key = BREAKER_FAILURES.format(provider=provider)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, int(self._config.window_s) or 1)
                count, _ = await pipe.execute()
            if count >= self._config.failure_threshold:
                opened = await self._redis.set(BREAKER_OPEN.format(provider=provider), "1",
                                               px=int(self._config.cooldown_s * 1000), nx=True)
                await self._redis.delete(key)
                if opened:
                    log.warning("provider %s failed %d times in a row: cooling down for %.0fs",
                                provider, count, self._config.cooldown_s)
                self._open_until.pop(provider, None)
        except RedisError:
            log.warning("breaker could not record a failure of %s", provider)

    async def record_success(self, provider: str) -> None:
        if provider not in self._failed_lately:
            return
        self._failed_lately.discard(provider)
        try:
            await self._redis.delete(BREAKER_FAILURES.format(provider=provider))
        except RedisError:
            log.warning("breaker could not record a success of %s", provider)

    async def cooling_down(self, providers: list[str]) -> list[str]:
        """The providers among ``providers`` in cool-down now (for health reports)."""
        return [p for p in providers if await self.is_open(p)]
