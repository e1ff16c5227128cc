"""What a job writes to Redis when it ends, sent in one round trip.

Steps add their writes here as the job unwinds (its ledger row, its cache entry, the
settlement of its budgets); the job's body sends them together with the job's outcome
(``workers.bodies.jobs``): one pipeline, instead of a round trip each. Every write is
idempotent or deduplicated downstream, so a pipeline retried after a broker restart
is harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

__all__ = ["Outbox", "Write"]

#: Adds its commands to a (non-transactional) pipeline.
Write = Callable[[Any], None]


class Outbox:
    def __init__(self) -> None:
        self._writes: list[Write] = []

    def add(self, write: Write) -> None:
        self._writes.append(write)

    def apply(self, pipe: Any) -> None:
        """Add every write to ``pipe``, in the order they came."""
        for write in self._writes:
            write(pipe)
        self._writes.clear()

    async def send(self, redis: aioredis.Redis) -> None:
        """Send what is pending on its own (a job run outside a body: its writes)."""
        if not self._writes:
            return
        async with redis.pipeline(transaction=False) as pipe:
            self.apply(pipe)
            await pipe.execute()

    def __len__(self) -> int:
        return len(self._writes)
