"""The semantic cache: near misses (another number, name or negation) never match,
rewordings do; through the CacheStep with the simulator's embeddings over real HTTP.

The simulator embeds by feature hashing (``workers/simulator/_embeddings.py``): words
and word pairs, so it is blind to meaning but close to real models on near misses,
whose one changed word is what they blur. ``bench/cache.py`` prints the rates.
"""

from __future__ import annotations

import asyncio
from typing import Any

from schemas import CacheConfig, CompletionJob, FleetConfig
from tests.workers.caching.helpers import Provider, job, run, steps, uid
from workers.caching.semantic import DIMENSIONS, cosine, guard_of, pack, unpack
from workers.devstack.simulator._embeddings import embed

NEAR_MISS_TEMPLATES = [
    "Is {n} times 23 {neg}more than 300, {name}?",
    "Explain why the service owned by {name} {neg}handles more than {n} requests per second "
    "when the cache is warm and the database sits in the same zone as the workers",
    "Write a farewell message for my colleague {name} who is {neg}leaving the team in {n} "
    "weeks after five years of working with us on the data platform and the billing "
    "migration",
    "Review this pull request from {name}: requests are {neg}retried up to {n} times with "
    "exponential backoff and full jitter, and a circuit breaker per provider route opens "
    "after repeated failures within a sliding window",
]


def near_misses() -> list[tuple[str, str]]:
    """Questions and a twin that differs by a number, a name or a negation only."""
    pairs = []
    for template in NEAR_MISS_TEMPLATES:
        base = template.format(n=12, name="Alice", neg="")
        pairs += [(base, template.format(n=15, name="Alice", neg="")),
                  (base, template.format(n=12, name="Bob", neg="")),
                  (base, template.format(n=12, name="Alice", neg="not "))]
    return pairs


def similar(a: str, b: str, threshold: float) -> bool:
    (guard_a, va), (guard_b, vb) = (unpack(pack(guard_of(t), embed(t, DIMENSIONS)))
                                    for t in (a, b))
    return guard_a == guard_b and cosine(va, vb) >= threshold


def test_near_misses_never_match_and_rewordings_do() -> None:
    # Given the simulator's embeddings and the default threshold
    threshold = CacheConfig().semantic_threshold
    # Then no question matches its twin with another number, name or negation
    false_hits = [pair for pair in near_misses() if similar(*pair, threshold)]
    assert false_hits == []
    # And the same question reworded in punctuation, spacing or politeness does
    rewordings = [(q, variant) for q, _ in near_misses()[::3]
                  for variant in (q.rstrip("?") + ".", "  " + q.replace(" ", "  "),
                                  "Please " + q[0].lower() + q[1:])]
    assert sum(similar(a, b, threshold) for a, b in rewordings) >= len(rewordings) - 2


def test_a_rewording_is_served_by_meaning_and_a_near_miss_is_not(
        redis_url: str, fleet: FleetConfig, sim: Any) -> None:
    semantic = fleet.model_copy(update={"cache": CacheConfig(semantic_tiers=["simple"])})
    tag = uid()
    question = (f"Explain to Alice why service {tag} handles 40 requests per second when "
                "the cache is warm and the database sits next to the workers")

    async def scenario() -> None:
        async with steps(redis_url, fleet=semantic) as (step,):
            provider = Provider()
            first = await run(step, job(question), provider, semantic)
            # When the question comes back reworded, Then it is served from the cache
            reworded = await run(step, job("Please " + question.lower()[:1] + question[1:]
                                           + "."), provider, semantic)
            assert reworded.cache_hit and reworded.content == first.content
            # But not with another number, nor under another system prompt
            near = await run(step, job(question.replace("40", "400")), provider, semantic)
            framed = CompletionJob(tier="simple", messages=[
                {"role": "system", "content": "Answer in French."},
                {"role": "user", "content": question + "."}])
            other = await run(step, framed, provider, semantic)
            assert not near.cache_hit and not other.cache_hit and provider.calls == 3
            assert sim.stats()["by_path"]["/v1/embeddings"] == 4

    asyncio.run(scenario())


def test_a_burst_of_identical_jobs_embeds_its_question_once(
        redis_url: str, fleet: FleetConfig, sim: Any) -> None:
    semantic = fleet.model_copy(update={"cache": CacheConfig(semantic_tiers=["simple"])})

    async def scenario() -> None:
        async with steps(redis_url, count=2, fleet=semantic) as (one, two):
            provider, text = Provider(delay=0.3), f"burst {uid()}"
            # When 6 identical jobs of a semantic tier run at once on two workers
            await asyncio.gather(*(run(one if i % 2 else two, job(text), provider, semantic)
                                   for i in range(6)))
            # Then only the holder of the lock embedded the question, and called
            assert provider.calls == 1 and sim.stats()["by_path"]["/v1/embeddings"] == 1

    asyncio.run(scenario())


def test_a_failing_embedding_only_skips_the_semantic_lookup(
        redis_url: str, fleet: FleetConfig, sim: Any) -> None:
    semantic = fleet.model_copy(update={"cache": CacheConfig(semantic_tiers=["simple"])})

    async def scenario() -> None:
        async with steps(redis_url, fleet=semantic) as (step,):
            # Given an embeddings model that fails
            sim.configure(fail_models={"text-embedding-3-small": 500})
            provider, text = Provider(), uid()
            # Then jobs are answered and the exact cache still serves repeats
            assert not (await run(step, job(text), provider, semantic)).cache_hit
            assert (await run(step, job(text), provider, semantic)).cache_hit
            assert provider.calls == 1 and sim.stats()["by_status"].get("500", 0) >= 1

    asyncio.run(scenario())


def test_the_question_is_embedded_by_a_fleet_job_with_its_own_ledger_row(
        redis_url: str, fleet: FleetConfig, fleet_env: dict[str, str], sim: Any) -> None:
    import dataclasses
    import json

    from schemas import Settings, load_config
    from schemas.keys import LEDGER_SPOOL
    from workers.runtime import WorkerRuntime

    # Given a worker runtime whose simple tier is looked up by meaning too
    settings, loaded = load_config(Settings.from_env(fleet_env))
    settings = dataclasses.replace(settings, database_url=None)  # no flusher: rows stay put
    semantic = loaded.model_copy(update={"cache": CacheConfig(semantic_tiers=["simple"])})
    runtime = WorkerRuntime(semantic, settings, redis_url, env={})
    try:
        question = CompletionJob(messages=[{"role": "user", "content": f"why {uid()}?"}],
                                 tier="simple", agent="semantic-agent", user="u7")
        spooled_before = runtime.sync_redis.llen(LEDGER_SPOOL)
        # When a job runs
        result = runtime.run(runtime.pipeline.complete(question), timeout=30)
        rows = [json.loads(r) for r in runtime.sync_redis.lrange(LEDGER_SPOOL,
                                                                 spooled_before, -1)]
    finally:
        runtime.close()
    # Then its question's embedding left a row of its own, billed to the same agent
    assert not result.cache_hit
    mine = [r for r in rows if r["metadata"].get("for_job") == question.job_id]
    assert len(mine) == 1
    embedding = mine[0]
    assert (embedding["kind"], embedding["agent"], embedding["user_id"]) == \
        ("embedding", "semantic-agent", "u7")
    assert embedding["metadata"]["purpose"] == "semantic_cache"
    assert embedding["cost_usd"] > 0 and embedding["status"] == "succeeded"
    assert any(r["job_id"] == question.job_id for r in rows)
