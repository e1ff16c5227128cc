"""The batcher's fleet-wide lock: a round whose lock lapses (another round may hold it
now) stops, rather than carry on beside the next one and send a batch twice."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis

from schemas import FleetConfig
from schemas.keys import BATCH_LOCK
from workers.batching import Batcher


class SlowStore:
    """A store whose first look takes long, as Postgres under load might."""

    def __init__(self) -> None:
        self.reached_batches = False

    async def overdue(self, by: Any) -> list[Any]:
        await asyncio.sleep(5)
        return []

    async def groups(self) -> list[Any]:
        return []

    async def batches(self, status: str) -> list[Any]:
        self.reached_batches = True
        return []


def test_a_round_whose_lock_lapses_stops(redis_url: str, fleet: FleetConfig) -> None:
    async def scenario() -> tuple[dict[str, int], float, bool, bool]:
        redis = aioredis.Redis.from_url(redis_url)
        store = SlowStore()
        batcher = Batcher(redis, store, fleet, {}, lambda *_: None)  # type: ignore[arg-type]
        batcher._lock_s = 0.6  # renewed every 0.2 s

        async def finish(*_: Any) -> None:
            return None

        async def lose_the_lock() -> None:
            await asyncio.sleep(0.3)
            await redis.delete(BATCH_LOCK)  # lapsed, as after a long stall

        started = time.monotonic()
        loser = asyncio.create_task(lose_the_lock())
        figures = await batcher.tick(finish)
        took = time.monotonic() - started
        await loser
        held = bool(await redis.exists(BATCH_LOCK))
        await redis.aclose()
        return figures, took, store.reached_batches, held

    figures, took, reached, held = asyncio.run(scenario())
    # The round stopped at its next renewal instead of going on to send batches
    assert figures == {"lapsed": 1} and took < 2 and not reached
    assert not held  # and it took nothing of the next holder's
