"""The cancel step: a job in flight stops within a poll of its cancel key being set, its
task goes on afterwards (a batch's other jobs, the job's own end), and a job that ends
before the first poll leaves nothing behind."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from schemas import CompletionJob, JobCancelledError
from schemas.keys import CANCEL
from workers.pipeline.cancel import CancelStep


class Ctx:
    """The little of a job's context the step reads."""

    def __init__(self) -> None:
        self.job = CompletionJob(job_id=uuid.uuid4().hex, messages=[{"role": "user",
                                                                      "content": "hi"}])
        self.cancelled = False


def test_a_job_cancelled_in_flight_stops_and_its_task_goes_on(redis_url: str) -> None:
    async def scenario() -> tuple[float, bool, str]:
        redis = aioredis.Redis.from_url(redis_url)
        step, ctx = CancelStep(redis, poll_s=0.1), Ctx()
        stopped: list[str] = []

        async def slow(_: Any) -> Any:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                stopped.append("provider call closed")
                raise

        async def cancel_soon() -> None:
            await asyncio.sleep(0.25)
            await redis.set(CANCEL.format(job_id=ctx.job.job_id), 1, ex=60)

        setter = asyncio.create_task(cancel_soon())
        started = time.monotonic()
        with pytest.raises(JobCancelledError, match="cancelled in flight"):
            await step(ctx, slow)  # type: ignore[arg-type]
        took = time.monotonic() - started
        await setter
        # The task that ran the job is not cancelled: it finishes the job's end
        await asyncio.sleep(0.01)
        task = asyncio.current_task()
        assert task is not None
        await redis.aclose()
        return took, task.cancelling() == 0, stopped[0]

    took, going_on, stopped = asyncio.run(scenario())
    assert 0.25 <= took < 0.6 and going_on and stopped == "provider call closed"


def test_a_quick_job_makes_no_task(redis_url: str) -> None:
    async def scenario() -> tuple[str, int]:
        redis = aioredis.Redis.from_url(redis_url)
        step = CancelStep(redis, poll_s=0.05)
        before = len(asyncio.all_tasks())

        async def quick(_: Any) -> Any:
            return "answer"

        answer = await step(Ctx(), quick)  # type: ignore[arg-type]
        made = len(asyncio.all_tasks()) - before
        await asyncio.sleep(0.15)  # past the first poll: the timer was cancelled
        made = max(made, len(asyncio.all_tasks()) - before)
        await redis.aclose()
        return answer, made

    assert asyncio.run(scenario()) == ("answer", 0)


def test_a_worker_stopping_stops_the_job_as_it_is(redis_url: str) -> None:
    async def scenario() -> None:
        redis = aioredis.Redis.from_url(redis_url)
        step = CancelStep(redis, poll_s=0.05)

        async def slow(_: Any) -> Any:
            await asyncio.sleep(10)

        job = asyncio.create_task(step(Ctx(), slow))  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        await redis.aclose()

    asyncio.run(scenario())
