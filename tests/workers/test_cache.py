"""The response cache against real Redis: the key, TTL and LRU, the CacheStep's policy,
coalescing between two steps standing for two workers (the semantic cache:
``test_semantic_cache.py``).

Every test asks its own questions (``uid``): the session's Redis is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from schemas import (
    CacheConfig,
    CompletionJob,
    CompletionResult,
    FleetConfig,
    ProviderServerError,
    Settings,
    Usage,
    load_fleet_config,
)
from schemas.cache_key import CachedAnswer, cache_key, effective_max_tokens
from schemas.keys import CACHE_ENTRY, CACHE_LOCK, CACHE_LRU
from workers.caching.response import ResponseCache
from workers.caching.step import CacheStep
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
    with the fleet's providers (over real HTTP) for its semantic cache."""
    clients = [aioredis.from_url(redis_url) for _ in range(count)]
    http = httpx.AsyncClient()
    providers = build_providers(fleet, http, {})
    built = [CacheStep(c, fleet, settings, providers) for c in clients]
    try:
        yield built
    finally:
        for step, client in zip(built, clients, strict=True):
            await step.close()
            await client.aclose()
        await http.aclose()


async def run(step: CacheStep, j: CompletionJob, provider: Provider,
              fleet: FleetConfig = FLEET) -> CompletionResult:
    result = await step(context(j, fleet), provider)
    assert isinstance(result, CompletionResult)
    return result


# -- the key ---------------------------------------------------------------


def test_the_key_is_the_same_in_another_process() -> None:
    # Given a job with every option that changes the answer
    j = job("stable ✓", max_tokens=50, temperature=0.2, top_p=0.9, stop=["\n"], seed=7,
            presence_penalty=0.1, frequency_penalty=0.2)
    code = ("import sys; from schemas import CompletionJob; "
            "from schemas.cache_key import cache_key; "
            "j = CompletionJob.model_validate_json(sys.stdin.read()); "
            "print(cache_key('openai/gpt-4o-mini', j, 50))")
    # When another process (another hash seed) computes its key
    out = subprocess.run([sys.executable, "-c", code], input=j.model_dump_json(), text=True,
                         capture_output=True, check=True, env={"PYTHONHASHSEED": "123"})
    # Then it is this process's key
    assert out.stdout.strip() == cache_key("openai/gpt-4o-mini", j, 50)


def test_the_key_ignores_who_asks_and_heeds_what_is_asked() -> None:
    base = job("same question", max_tokens=20)
    key = cache_key("m", base, 20)
    # Given the same request from another agent, user, job id, time, metadata or timeout
    for other in (job("same question", max_tokens=20, agent="other", user="u9",
                      metadata={"trace": "x"}, timeout=5, submitted_at=1.0,
                      fallback=False, cache="use"),):
        assert cache_key("m", other, 20) == key
    # But another model, text, output limit or sampling option is another key
    changed = [cache_key("m2", base, 20), cache_key("m", job("same question!"), 20),
               cache_key("m", base, 21)] + [
        cache_key("m", job("same question", **{name: value}), 20)
        for name, value in (("temperature", 0.0), ("top_p", 0.5), ("stop", ["x"]),
                            ("seed", 1), ("presence_penalty", 0.5),
                            ("frequency_penalty", 0.5))]
    assert len({key, *changed}) == len(changed) + 1


# -- the store: TTL and LRU ---------------------------------------------------


def answer(text: str) -> CachedAnswer:
    return CachedAnswer(content=text, model="m", provider="p", usage=Usage(),
                        cost_usd=0.1, stored_at=time.time())


def test_entries_expire_after_their_ttl(redis_url: str) -> None:
    async def scenario() -> None:
        client = aioredis.from_url(redis_url)
        try:
            cache = ResponseCache(client, ttl_s=0.3, max_size=100)
            # Given an entry stored with a TTL of 0.3 s
            await cache.put(key := uid(), answer("short-lived"))
            got = await cache.get(key)
            assert got is not None and got.content == "short-lived"
            assert 0 < await client.pttl(CACHE_ENTRY.format(key=key)) <= 300
            # When the TTL has passed, Then it is gone
            await asyncio.sleep(0.4)
            assert await cache.get(key) is None
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_the_least_recently_used_entries_go_beyond_the_size(redis_url: str) -> None:
    async def scenario() -> None:
        client = aioredis.from_url(redis_url)
        try:
            cache = ResponseCache(client, ttl_s=60, max_size=3)
            await client.set(other := f"llmfleet:test:{uid()}", "not the cache's")
            keys = [uid() for _ in range(4)]
            # Given three entries, the first used again after the others were stored
            for key in keys[:3]:
                await cache.put(key, answer(key))
                await asyncio.sleep(0.005)
            assert await cache.get(keys[0]) is not None
            await asyncio.sleep(0.005)
            # When a fourth is stored
            evicted = await cache.put(keys[3], answer(keys[3]))
            # Then the least recently used (the second) went, and nothing else of ours
            assert evicted >= 1 and await client.zcard(CACHE_LRU) == 3
            assert [await cache.get(k) is not None for k in keys] == [True, False, True, True]
            assert await client.get(other) == b"not the cache's"
            await client.delete(other)
        finally:
            await client.aclose()

    asyncio.run(scenario())


# -- the step's policy ----------------------------------------------------------


def test_a_hit_answers_without_calling_on_and_records_what_it_saved(redis_url: str) -> None:
    async def scenario() -> None:
        async with steps(redis_url) as (step,):
            provider, text = Provider(), uid()
            first = await run(step, job(text, user="u1"), provider)
            # When the same question comes from another agent and user
            again = job(text, agent="planner", user="u2")
            ctx = context(again)
            hit = await step(ctx, provider)
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


def test_when_the_holder_fails_its_followers_call_at_once(redis_url: str) -> None:
    async def scenario() -> None:
        async with steps(redis_url, count=2) as (one, two):
            failing, text = Provider(delay=0.3, fail=True), uid()
            holder = asyncio.create_task(run(one, job(text), failing))
            await asyncio.sleep(0.1)
            later = Provider(delay=0.3)
            started = time.monotonic()
            # When the holder's call fails while three identical jobs wait
            results = await asyncio.gather(*(run(two, job(text), later) for _ in range(3)))
            with pytest.raises(ProviderServerError):
                await holder
            # Then the followers do not inherit the error: they call, concurrently
            assert not any(r.cache_hit for r in results) and later.calls == 3
            assert time.monotonic() - started < 1.0

    asyncio.run(scenario())


# -- the short-circuit's read ------------------------------------------------------


def test_the_client_finds_what_a_worker_stored(redis_url: str) -> None:
    from tasks._cache import CacheShortCircuit

    async def store(text: str) -> None:
        async with steps(redis_url) as (step,):
            await run(step, job(text), Provider())

    text = uid()
    asyncio.run(store(text))
    lookup = CacheShortCircuit(redis_url, FLEET, ON)
    try:
        hit = lookup.lookup(job(text).model_copy(update={"agent": "a2"}))
        assert hit is not None and hit.cache_hit and hit.agent == "a2"
        assert lookup.lookup(job(text, cache="refresh")) is None
        off = CacheShortCircuit(redis_url, FLEET, Settings(enable_llm_cache=False))
        assert off.lookup(job(text)) is None
        off.close()
    finally:
        lookup.close()
