"""Exactly once against real Redis: a second delivery of a running job waits for the
first's outcome, takes over only from a dead holder, and a finished job is answered from
its stored outcome, success or failure."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from schemas import (
    AllModelsFailedError,
    CompletionJob,
    CompletionResult,
    FleetError,
    Usage,
    encode_error,
    encode_result,
    load_fleet_config,
)
from schemas.keys import JOB_STATE
from workers.accounting.once import OnceStep, write_outcome
from workers.pipeline.deadline import Deadline
from workers.pipeline.steps import JobContext, Result, compose

FLEET = load_fleet_config()


@dataclass
class Provider:
    """The layers inside: counts calls, answers after ``delay``, or fails."""

    delay: float = 0.0
    fail: bool = False
    calls: int = 0

    async def __call__(self, ctx: JobContext) -> Result:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail:
            raise AllModelsFailedError("every model failed", tier="simple", attempts=[])
        return CompletionResult(
            job_id=ctx.job.job_id, content=f"answer {self.calls}", model="m", provider="p",
            tier="simple", usage=Usage(prompt_tokens=1, completion_tokens=1), cost_usd=0.5,
            latency_ms=1.0)


def _context(job: CompletionJob) -> JobContext:
    return JobContext(job=job, fleet=FLEET, tier="simple", chain=FLEET.chain("simple"),
                      prompt_tokens=3, max_tokens=8, deadline=Deadline(at=None))


def _job() -> CompletionJob:
    return CompletionJob(messages=[{"role": "user", "content": "hi"}], tier="simple")


async def _workers(redis_url: str, count: int, lease_ms: int
                   ) -> tuple[list[OnceStep], list[aioredis.Redis]]:
    clients = [aioredis.from_url(redis_url) for _ in range(count)]
    return [OnceStep(c, lease_ms=lease_ms, poll_s=0.05) for c in clients], clients


async def _deliver(step: OnceStep, client: aioredis.Redis, job: CompletionJob,
                   provider: Provider) -> Result:
    """One delivery of ``job``, ended as a job body ends it (its outcome stored and
    published)."""
    try:
        result = await compose([step], provider)(_context(job))
        envelope = encode_result(result)
    except FleetError as exc:
        envelope, result = encode_error(exc), exc  # type: ignore[assignment]
    async with client.pipeline(transaction=False) as pipe:
        write_outcome(pipe, job.job_id, json.dumps(envelope))
        await pipe.execute()
    if isinstance(result, FleetError):
        raise result
    return result


async def _close(steps: list[OnceStep], clients: list[aioredis.Redis]) -> None:
    for step, client in zip(steps, clients, strict=True):
        await step.close()
        await client.aclose()


def test_a_second_delivery_of_a_running_job_waits_for_its_outcome(redis_url: str) -> None:
    async def scenario() -> tuple[list[Result], int]:
        steps, clients = await _workers(redis_url, 2, lease_ms=600)
        provider = Provider(delay=1.5)  # longer than the lease: the holder must renew it
        job = _job()
        try:
            # Given one job delivered to two workers at once
            first = asyncio.ensure_future(_deliver(steps[0], clients[0], job, provider))
            await asyncio.sleep(0.1)
            second = _deliver(steps[1], clients[1], job, provider)
            results = await asyncio.gather(first, second)
            return list(results), provider.calls
        finally:
            await _close(steps, clients)

    results, calls = asyncio.run(scenario())
    # Then the provider is called once, and both deliveries answer the same
    assert calls == 1
    assert results[0].content == results[1].content == "answer 1"


def test_a_dead_holders_job_is_taken_over_when_its_lease_lapses(redis_url: str) -> None:
    async def scenario() -> tuple[Result, int, float]:
        steps, clients = await _workers(redis_url, 1, lease_ms=600)
        provider = Provider()
        job = _job()
        try:
            # Given a claim left by a worker that died (nobody renews it)
            await clients[0].set(JOB_STATE.format(job_id=job.job_id), "run:dead", px=600)
            loop = asyncio.get_running_loop()
            started = loop.time()
            result = await _deliver(steps[0], clients[0], job, provider)
            return result, provider.calls, loop.time() - started
        finally:
            await _close(steps, clients)

    result, calls, waited = asyncio.run(scenario())
    # Then the redelivery waits out the lease, then runs the job itself, once
    assert calls == 1 and result.content == "answer 1"
    assert 0.3 < waited < 5


@pytest.mark.parametrize("fail", [False, True])
def test_a_finished_job_is_answered_from_its_stored_outcome(redis_url: str,
                                                           fail: bool) -> None:
    async def scenario() -> tuple[list[object], int]:
        steps, clients = await _workers(redis_url, 1, lease_ms=600)
        provider = Provider(fail=fail)
        job = _job()
        outcomes: list[object] = []
        try:
            # Given a job that finished; When its message is delivered again
            for _ in range(2):
                try:
                    outcomes.append((await _deliver(steps[0], clients[0], job,
                                                    provider)).content)
                except AllModelsFailedError as exc:
                    outcomes.append(type(exc).__name__)
            return outcomes, provider.calls
        finally:
            await _close(steps, clients)

    outcomes, calls = asyncio.run(scenario())
    # Then the second delivery answers what the first did, with no second call
    assert calls == 1
    assert outcomes[0] == outcomes[1]
