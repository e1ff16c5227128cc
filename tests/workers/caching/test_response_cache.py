"""The response cache against real Redis: its key (the same in every process), TTL and
LRU eviction, and the client's short-circuit reading what a worker stored."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import redis.asyncio as aioredis

from schemas import Settings, Usage
from schemas.cache_key import CachedAnswer, cache_key
from schemas.keys import CACHE_ENTRY, CACHE_LRU
from tests.workers.caching.helpers import FLEET, ON, Provider, job, run, steps, uid
from workers.caching.response import ResponseCache

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
                      metadata={"trace": "x"}, timeout=5, submitted_at=1_700_000_000.0,
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
