"""Parked jobs against real Redis: sent when due, once, never lost to a mover that dies
or to a job parked again while it was being sent; and the order workers take queues."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis.asyncio as aioredis

from schemas.keys import PARKED, PARKED_JOBS
from workers.admission.cycle import PriorityCycle
from workers.admission.parking import Mover, Parking


def run(redis_url: str, body: Any) -> Any:
    async def go() -> Any:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await client.delete(PARKED, PARKED_JOBS)
            return await body(client, Parking(client))
        finally:
            await client.delete(PARKED, PARKED_JOBS)
            await client.aclose()
    return asyncio.run(go())


def test_a_parked_job_is_sent_when_due_and_only_then(redis_url: str) -> None:
    sent: list[tuple[str, list[Any], str, str]] = []

    async def body(client: aioredis.Redis, parking: Parking) -> list[int]:
        mover = Mover(parking, lambda *message: sent.append(message))
        await parking.park("job-soon", "llm.complete", [{"a": 1}], "llm.simple", 0.2)
        await parking.park("job-later", "llm.embed", [{"b": 2}], "llm.embeddings.low", 30)
        counts = [await mover.move_due()]
        await asyncio.sleep(0.3)
        counts += [await mover.move_due(), await mover.move_due(), await parking.waiting()]
        return counts

    assert run(redis_url, body) == [0, 1, 0, 1]
    assert sent == [("llm.complete", [{"a": 1}], "llm.simple", "job-soon")]


def test_a_job_whose_sending_failed_stays_parked_and_goes_later(redis_url: str) -> None:
    attempts: list[str] = []

    def broken(task: str, args: list[Any], queue: str, job_id: str) -> None:
        attempts.append(job_id)
        raise ConnectionError("broker down")

    async def body(client: aioredis.Redis, parking: Parking) -> tuple[int, int, int]:
        await parking.park("job-1", "llm.complete", [], "llm.simple", 0)
        first = await Mover(parking, broken, lease_s=0.2).move_due()
        held = await Mover(parking, broken).move_due()  # under the first mover's lease
        await asyncio.sleep(0.3)
        sent: list[Any] = []
        again = await Mover(parking, lambda *m: sent.append(m)).move_due()
        return first, held, again + len(sent) * 10

    assert run(redis_url, body) == (0, 0, 11)
    assert attempts == ["job-1"]


def test_a_job_parked_again_while_being_sent_is_not_lost(redis_url: str) -> None:
    async def body(client: aioredis.Redis, parking: Parking) -> dict[str, Any]:
        await parking.park("job-1", "llm.complete", [{"v": 1}], "llm.simple", 0)
        (job_id, message), = await parking.take(10, lease_s=30)
        # Meanwhile the job ran, found its turn not come, and was parked again
        await parking.park("job-1", "llm.complete", [{"v": 2}], "llm.simple", 5)
        await parking.sent(job_id, message)  # the first sending completes late
        stored = await client.hget(PARKED_JOBS, "job-1")
        return {"waiting": await parking.waiting(), "args": json.loads(stored)["args"]}

    assert run(redis_url, body) == {"waiting": 1, "args": [{"v": 2}]}


def test_many_due_jobs_go_in_batches_each_once(redis_url: str) -> None:
    sent: list[str] = []

    async def body(client: aioredis.Redis, parking: Parking) -> int:
        for n in range(450):
            await parking.park(f"job-{n}", "llm.complete", [], "llm.simple", 0)
        movers = [Mover(parking, lambda *m: sent.append(m[3]), batch=100) for _ in range(3)]
        total = 0
        while True:
            moved = sum(await asyncio.gather(*(m.move_due() for m in movers)))
            total += moved
            if not moved:
                return total

    assert run(redis_url, body) == 450
    assert sorted(sent) == sorted(f"job-{n}" for n in range(450))


def test_workers_take_high_first_and_give_low_its_share() -> None:
    PriorityCycle.low_share = 0.1
    cycle = PriorityCycle(["llm.simple.low", "llm.simple", "llm.admin", "llm.medium.high",
                           "llm.simple.high", "llm.medium", "llm.medium.low"])
    orders = [cycle.consume(7) for _ in range(20)]
    normal = ["llm.medium.high", "llm.simple.high", "llm.simple", "llm.admin", "llm.medium",
              "llm.simple.low", "llm.medium.low"]
    assert orders[0] == normal
    low_first = [i for i, order in enumerate(orders) if order[0].endswith(".low")]
    assert low_first == [9, 19]  # one fetch in ten
    # Queues of one priority take turns
    cycle.rotate("llm.medium.high")
    assert cycle.consume(7)[:2] == ["llm.simple.high", "llm.medium.high"]
