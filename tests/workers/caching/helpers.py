"""What the caching tests share: jobs, their contexts, a stand-in for the layers inside
the cache step, and cache steps standing for separate workers.

Every test asks its own questions (``uid``): the session's Redis is shared.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis.asyncio as aioredis

from schemas import (
    CompletionJob,
    CompletionResult,
    FleetConfig,
    FleetError,
    ProviderServerError,
    Settings,
    Usage,
    encode_error,
    encode_result,
    load_fleet_config,
)
from schemas.cache_key import effective_max_tokens
from workers.accounting.once import end_job
from workers.caching.step import CacheStep
from workers.pipeline.attempts import AttemptRunner
from workers.pipeline.breaker import Breaker
from workers.pipeline.chain import Pipeline
from workers.pipeline.deadline import Deadline
from workers.pipeline.steps import JobContext, Result
from workers.providers import build_providers

FLEET = load_fleet_config()
ON = Settings(cache_ttl_seconds=60, cache_max_size=10_000)


def uid() -> str:
    return uuid.uuid4().hex[:12]


def job(text: str, **fields: Any) -> CompletionJob:
    return CompletionJob(messages=[{"role": "user", "content": text}], tier="simple",
                         **fields)


def context(j: CompletionJob, fleet: FleetConfig = FLEET) -> JobContext:
    tier = fleet.route(j.tier, j.model)
    return JobContext(job=j, fleet=fleet, tier=tier, chain=fleet.chain(tier, j.model),
                      prompt_tokens=10, max_tokens=effective_max_tokens(fleet, tier, j),
                      deadline=Deadline(at=None, job_id=j.job_id))


@dataclass
class Provider:
    """The layers inside the cache: counts calls, answers after ``delay``."""

    delay: float = 0.0
    finish: str = "stop"
    fail: bool = False
    fallback: bool = False
    calls: int = 0
    seen: list[str] = field(default_factory=list)

    async def __call__(self, ctx: JobContext) -> Result:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail:
            raise ProviderServerError("down", model=ctx.chain[0], provider="p")
        j = ctx.job
        assert isinstance(j, CompletionJob)
        model = ctx.chain[1] if self.fallback else ctx.chain[0]
        return CompletionResult(
            job_id=j.job_id, content=f"answer {self.calls} to {j.messages[-1].text}",
            finish_reason=self.finish, model=model, provider="openrouter", tier=ctx.tier,
            agent=j.agent, user=j.user, usage=Usage(prompt_tokens=10, completion_tokens=5),
            cost_usd=0.25, latency_ms=1.0, fallback_used=self.fallback)


@asynccontextmanager
async def steps(redis_url: str, count: int = 1, settings: Settings = ON,
                fleet: FleetConfig = FLEET) -> AsyncIterator[list[CacheStep]]:
    """``count`` cache steps, each on its own Redis client, as separate workers have;
    with the fleet's providers (over real HTTP) embedding for its semantic cache."""
    clients = [aioredis.from_url(redis_url) for _ in range(count)]
    http = httpx.AsyncClient()
    # The semantic cache embeds through a pipeline's embedding path (here a bare one).
    breaker = Breaker(clients[0], fleet.breaker)
    embedder = Pipeline(fleet, build_providers(fleet, http, {}), breaker,
                        AttemptRunner(retry=fleet.retry, breaker=breaker))
    built = [CacheStep(c, fleet, settings, embedder.embed) for c in clients]
    try:
        yield built
    finally:
        for step, client in zip(built, clients, strict=True):
            await step.close()
            await client.aclose()
        await http.aclose()


async def through(step: CacheStep, ctx: JobContext, provider: Provider) -> Result:
    """The step run on ``ctx`` and the job ended as its body ends it: its writes sent,
    its outcome stored (identical jobs following it read it there)."""
    try:
        result = await step(ctx, provider)
    except FleetError as exc:
        await end_job(step._redis, ctx.job.job_id, encode_error(exc), ctx.outbox)
        raise
    await end_job(step._redis, ctx.job.job_id, encode_result(result), ctx.outbox)
    return result


async def run(step: CacheStep, j: CompletionJob, provider: Provider,
              fleet: FleetConfig = FLEET) -> CompletionResult:
    result = await through(step, context(j, fleet), provider)
    assert isinstance(result, CompletionResult)
    return result


