"""What ``limits_snapshot`` reads from real Redis after the admission script ran: each
rate's use on Redis' clock, places still leased, the counters, quotas and keys' own
limits; and that reading changes nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from schemas import FleetConfig, LimitConfig, load_fleet_config
from schemas.keys import LIMIT_INFLIGHT, LIMIT_RATE, PARKED, QUOTA_RATE
from workers.admission.limiter import Place, Rate, RateLimiter
from workers.admission.report import limits_snapshot, parked_jobs

MODEL = "openai/gpt-4o-mini"


def run(redis_url: str, body: Callable[[RateLimiter], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await body(RateLimiter(client))
        finally:
            await client.aclose()
    return asyncio.run(go())


def rates_of(limit: LimitConfig, tokens: int) -> tuple[list[Rate], list[Place]]:
    """The limit's rates and place as admission builds them (``plan.limits_of``)."""
    rates = [Rate(limit.name, kind, LIMIT_RATE.format(name=limit.name, kind=kind),  # type: ignore[arg-type]
                  getattr(limit, kind), 1 if kind == "rpm" else tokens, 60_000, limit.mode)
             for kind in ("rpm", "tpm") if getattr(limit, kind) is not None]
    places = [Place(limit.name, LIMIT_INFLIGHT.format(name=limit.name), limit.concurrency,
                    limit.mode)] if limit.concurrency else []
    return rates, places


@pytest.fixture()
def sync_redis(redis_url: str) -> Any:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture()
def limit() -> LimitConfig:
    return LimitConfig(name=f"r-{uuid.uuid4().hex[:8]}", scope="agent:reporter", rpm=10,
                       tpm=1000, concurrency=5)


def fleet_with(limits: list[LimitConfig], model_rpm: int | None = None) -> FleetConfig:
    fleet = load_fleet_config()
    models = dict(fleet.models)
    if model_rpm is not None:
        models[MODEL] = models[MODEL].model_copy(update={"rpm": model_rpm})
    return fleet.model_copy(update={"limits": limits, "models": models})


def by_kind(rows: list[dict[str, Any]], name: str) -> dict[str, dict[str, Any]]:
    return {row["kind"]: row for row in rows if row["name"] == name}


def test_use_counts_and_a_refusal_show_per_kind(redis_url: str, sync_redis: Any,
                                                limit: LimitConfig) -> None:
    # Given three jobs of 100 tokens admitted under a limit, and a fourth too big for it
    rates, places = rates_of(limit, 100)

    async def body(limiter: RateLimiter) -> None:
        for i in range(3):
            decision = await limiter.admit(rates, places, f"job-{i}", horizon_s=0,
                                           lease_s=60)
            assert decision.status == "admitted"
        big, _ = rates_of(limit, 5000)
        assert (await limiter.admit(big, places, "job-big", horizon_s=0,
                                    lease_s=60)).status == "too_big"

    run(redis_url, body)
    # When the snapshot is read
    rows = by_kind(limits_snapshot(sync_redis, fleet_with([limit])), limit.name)
    # Then each kind shows its use, size and mode, and the limit's counters
    assert {k: (r["used"], r["limit"]) for k, r in rows.items()} == {
        "rpm": (3, 10), "tpm": (300, 1000), "concurrency": (3, 5)}
    assert all(r["scope"] == "agent:reporter" and r["mode"] == "reject"
               and r["source"] == "limits" for r in rows.values())
    assert {(r["rejected"], r["delayed"]) for r in rows.values()} == {(1, 0)}


def test_settled_tokens_and_left_places_are_no_longer_used(
        redis_url: str, sync_redis: Any, limit: LimitConfig) -> None:
    rates, places = rates_of(limit, 400)

    async def body(limiter: RateLimiter) -> None:
        await limiter.admit(rates, places, "job-a", horizon_s=0, lease_s=60)
        # the job used 150 of its 400 tokens, and ended
        tpm = next(r for r in rates if r.kind == "tpm")
        await limiter.settle([(tpm.key, tpm.per_ms, 250)], [p.key for p in places], "job-a")

    run(redis_url, body)
    rows = by_kind(limits_snapshot(sync_redis, fleet_with([limit])), limit.name)
    assert (rows["rpm"]["used"], rows["tpm"]["used"], rows["concurrency"]["used"]) == (
        1, 150, 0)


def test_an_ended_lease_is_not_counted_and_reading_deletes_nothing(
        redis_url: str, sync_redis: Any, limit: LimitConfig) -> None:
    _, places = rates_of(limit, 1)

    async def body(limiter: RateLimiter) -> None:
        await limiter.admit([], places, "job-short", horizon_s=0, lease_s=0.05)
        await limiter.admit([], places, "job-long", horizon_s=0, lease_s=60)
        await asyncio.sleep(0.15)

    run(redis_url, body)
    rows = by_kind(limits_snapshot(sync_redis, fleet_with([limit])), limit.name)
    assert rows["concurrency"]["used"] == 1
    assert sync_redis.zcard(LIMIT_INFLIGHT.format(name=limit.name)) == 2  # read-only


def test_quotas_and_keys_own_limits_are_reported(redis_url: str, sync_redis: Any) -> None:
    # Given a model quota of 600 rpm, two calls spent on it, and a fleet key's own limit
    quota = QUOTA_RATE.format(owner=f"model:{MODEL}", kind="rpm")
    sync_redis.delete(quota)
    rate = Rate(f"model:{MODEL}", "rpm", quota, 600, 1, 1000.0, "queue")
    run(redis_url, lambda limiter: asyncio.gather(*(
        limiter.admit([rate], [], uuid.uuid4().hex, horizon_s=60, lease_s=1)
        for _ in range(2))))
    key_id = uuid.uuid4().hex[:12]
    own = LimitConfig(name=f"key-{key_id}", scope=f"key:{key_id}", rpm=5, mode="queue")
    # When the snapshot is read
    rows = limits_snapshot(sync_redis, fleet_with([], model_rpm=600), [own])
    # Then the quota shows under its owner, and the key's limit with no use yet
    quota_row = by_kind(rows, f"model:{MODEL}")["rpm"]
    assert (quota_row["used"], quota_row["limit"], quota_row["mode"],
            quota_row["source"], quota_row["scope"]) == (2, 600, "queue", "quota",
                                                         f"model:{MODEL}")
    key_row = by_kind(rows, f"key-{key_id}")
    assert list(key_row) == ["rpm"]
    assert (key_row["rpm"]["used"], key_row["rpm"]["source"]) == (0, "key")
    # And a fleet with no limits and no quotas reports nothing
    assert limits_snapshot(sync_redis, fleet_with([])) == []


def test_parked_jobs_are_counted(sync_redis: Any) -> None:
    before = parked_jobs(sync_redis)
    ids = [f"report-test-{uuid.uuid4().hex}" for _ in range(2)]
    # (due in 2100: no worker's mover takes them meanwhile)
    sync_redis.zadd(PARKED, dict.fromkeys(ids, 4_102_444_800_000))
    try:
        assert parked_jobs(sync_redis) == before + 2
    finally:
        sync_redis.zrem(PARKED, *ids)
