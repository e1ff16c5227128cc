"""The cache step against real Redis: what a job may read and write, and coalescing
between two steps standing for two workers (the semantic cache:
``test_semantic_cache.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from schemas import CacheConfig, CompletionResult, ProviderServerError, Settings
from schemas.cache_key import cache_key
from schemas.keys import CACHE_LOCK
from tests.workers.caching.helpers import (
    FLEET,
    ON,
    Provider,
    context,
    job,
    run,
    steps,
    through,
    uid,
)

# -- the step's policy ----------------------------------------------------------


def test_a_hit_answers_without_calling_on_and_records_what_it_saved(redis_url: str) -> None:
    async def scenario() -> None:
        async with steps(redis_url) as (step,):
            provider, text = Provider(), uid()
            first = await run(step, job(text, user="u1"), provider)
            # When the same question comes from another agent and user
            again = job(text, agent="planner", user="u2")
            ctx = context(again)
            hit = await through(step, ctx, provider)
            # Then no call was made, and the hit is the new job's, free, flagged
            assert provider.calls == 1 and isinstance(hit, CompletionResult)
            assert hit.content == first.content
            assert (hit.job_id, hit.agent, hit.user, hit.tier) == (
                again.job_id, "planner", "u2", "simple")
            assert hit.cache_hit and hit.cost_usd == 0 and hit.attempts == 0
            assert ctx.cost_saved_usd == 0.25

    asyncio.run(scenario())


@pytest.mark.parametrize(("settings", "fields", "calls", "stored"), [
    (Settings(enable_llm_cache=False), {}, 2, False),  # cache off
    (Settings(cache_ttl_seconds=0), {}, 2, False),  # nothing may be kept: off too
    (Settings(cache_max_size=0), {}, 2, False),
    (ON, {"cache": "skip"}, 2, False),
    (ON, {"temperature": 0.9}, 2, False),  # above [cache].max_temperature
    (ON, {"temperature": 0.9, "cache": "use"}, 1, True),  # asked for despite it
    (ON, {"temperature": 0.5}, 1, True),  # at the bound
    (ON, {"cache": "use"}, 1, True),
])
def test_what_a_job_may_read_and_write(redis_url: str, settings: Settings,
                                       fields: dict[str, Any], calls: int,
                                       stored: bool) -> None:
    async def scenario() -> None:
        async with steps(redis_url, settings=settings) as (step,):
            provider, text = Provider(), uid()
            # When the same job runs twice
            for _ in range(2):
                await run(step, job(text, **fields), provider)
            # Then the provider was called as often as the policy says
            assert provider.calls == calls
            key = cache_key("openai/gpt-4o-mini", job(text, **fields),
                            fields.get("max_tokens", 1024))
            async with steps(redis_url) as (reader,):
                assert (await reader._cache.get(key) is not None) is stored

    asyncio.run(scenario())


def test_refresh_does_not_read_but_stores_the_new_answer(redis_url: str) -> None:
    async def scenario() -> None:
        async with steps(redis_url) as (step,):
            provider, text = Provider(), uid()
            await run(step, job(text), provider)
            # When a refresh job runs, Then it calls on although an answer is cached
            fresh = await run(step, job(text, cache="refresh"), provider)
            assert provider.calls == 2 and not fresh.cache_hit
            # And the next plain job gets the refreshed answer
            assert (await run(step, job(text), provider)).content == fresh.content
            assert provider.calls == 2

    asyncio.run(scenario())


@pytest.mark.parametrize("provider", [Provider(fail=True), Provider(finish="length"),
                                      Provider(fallback=True)],
                         ids=["error", "truncated", "fallback-model"])
def test_errors_truncated_and_fallback_answers_are_not_cached(
        redis_url: str, provider: Provider) -> None:
    async def scenario() -> None:
        async with steps(redis_url) as (step,):
            text = uid()
            for _ in range(2):
                with contextlib.suppress(ProviderServerError):
                    assert not (await run(step, job(text), provider)).cache_hit
            # Then the second job called again
            assert provider.calls == 2

    asyncio.run(scenario())


# -- coalescing -----------------------------------------------------------------


def test_identical_jobs_on_two_workers_make_one_call(redis_url: str) -> None:
    async def scenario() -> None:
        async with steps(redis_url, count=2) as (one, two):
            provider, text = Provider(delay=0.5), uid()
            # When 8 identical jobs run at once, half on each "worker"
            results = await asyncio.gather(
                *(run(one if i % 2 else two, job(text, user=f"u{i}"), provider)
                  for i in range(8)))
            # Then one call served them all
            assert provider.calls == 1
            assert len({r.content for r in results}) == 1
            assert sum(r.cache_hit for r in results) == 7

    asyncio.run(scenario())


def test_followers_take_over_when_the_holder_dies(redis_url: str) -> None:
    async def scenario() -> None:
        async with steps(redis_url) as (step,):
            provider, text = Provider(), uid()
            key = cache_key("openai/gpt-4o-mini", job(text), 1024)
            # Given a lock whose holder died: it never publishes and never refreshes
            client = aioredis.from_url(redis_url)
            await client.set(CACHE_LOCK.format(key=key), "dead-holder", px=800)
            await client.aclose()
            started = time.monotonic()
            # When an identical job comes
            result = await run(step, job(text), provider)
            # Then it waits for the lock to expire, takes over and calls once
            assert provider.calls == 1 and not result.cache_hit
            assert 0.6 < time.monotonic() - started < 3

    asyncio.run(scenario())


def test_a_follower_calls_on_its_own_after_the_coalescing_timeout(redis_url: str) -> None:
    fleet = FLEET.model_copy(update={"cache": CacheConfig(coalesce_timeout_s=0.3)})

    async def scenario() -> None:
        async with steps(redis_url, fleet=fleet) as (step,):
            provider, text = Provider(), uid()
            key = cache_key("openai/gpt-4o-mini", job(text), 1024)
            # Given a holder that keeps its lock for a minute
            client = aioredis.from_url(redis_url)
            await client.set(CACHE_LOCK.format(key=key), "slow-holder", px=60_000)
            started = time.monotonic()
            # When an identical job comes, Then it stops waiting after 0.3 s
            await run(step, job(text), provider, fleet)
            assert provider.calls == 1 and time.monotonic() - started < 1.5
            await client.delete(CACHE_LOCK.format(key=key))
            await client.aclose()

    asyncio.run(scenario())


def test_when_the_holder_fails_one_follower_calls_and_the_rest_wait_for_it(
        redis_url: str) -> None:
    async def scenario() -> None:
        async with steps(redis_url, count=2) as (one, two):
            failing, text = Provider(delay=0.3, fail=True), uid()
            holder = asyncio.create_task(run(one, job(text), failing))
            await asyncio.sleep(0.1)
            later = Provider(delay=0.3)
            # When the holder's call fails while three identical jobs wait
            results = await asyncio.gather(*(run(two, job(text), later) for _ in range(3)))
            with pytest.raises(ProviderServerError):
                await holder
            # Then the followers do not inherit the error, nor call all at once: one
            # takes the lock over and calls, the other two get its answer
            assert later.calls == 1
            assert sorted(r.cache_hit for r in results) == [False, True, True]
            assert len({r.content for r in results}) == 1


