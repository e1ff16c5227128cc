"""Prometheus' counters kept by the ledger flusher, against real Redis and Postgres: a row
counts once however often it is flushed, only rows that land count, and the migration
backfills them from the ledger and the roll-ups of purged days."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis
from alembic import command
from sqlalchemy import Engine, func, insert, make_url, select, text

from schemas import JobStatus, LedgerRow
from schemas.keys import LEDGER_DEAD_LETTERS, LEDGER_FLUSH_LOCK, LEDGER_SPOOL
from schemas.tables import job_ledger, metric_counters, metric_latency, metrics_rollup
from tests.workers.accounting.conftest import row
from workers.accounting.flusher import LedgerFlusher
from workers.store.engines import alembic_config, async_engine, migrate, sync_engine

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture()
def run(redis_url: str, database_url: str) -> Iterator[tuple[Any, LedgerFlusher, Any]]:
    loop = asyncio.new_event_loop()
    client = aioredis.from_url(redis_url)
    engine = async_engine(database_url)
    flusher = LedgerFlusher(client, engine)
    yield loop.run_until_complete, flusher, client
    loop.run_until_complete(engine.dispose())
    loop.run_until_complete(client.delete(LEDGER_FLUSH_LOCK))
    loop.run_until_complete(client.aclose())
    loop.close()


def landing(tag: str, name: str, **fields: Any) -> str:
    """A spooled ledger row of agent ``tag`` in tier ``tag`` (so its latency rows are
    its own); ``fields`` override."""
    values: dict[str, Any] = {
        "job_id": f"{tag}-{name}", "kind": "completion", "agent": tag, "tier": tag,
        "model": "m-small", "status": JobStatus.SUCCEEDED, "prompt_tokens": 10,
        "completion_tokens": 5, "cost_usd": 0.001, "latency_ms": 40.0,
        "created_at": NOW, "finished_at": NOW}
    return LedgerRow(**{**values, **fields}).model_dump_json()


def counters_of(engine: Engine, agent: str) -> dict[tuple[str, str, str], dict[str, Any]]:
    c = metric_counters.c
    with engine.connect() as connection:
        rows = connection.execute(select(metric_counters).where(c.agent == agent)).mappings()
        return {(r["model"], r["tier"], r["status"]): {
            k: v for k, v in r.items() if k not in ("agent", "model", "tier", "status")}
            for r in rows}


def ledger_figures(engine: Engine, agent: str) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The same figures, aggregated from the ledger."""
    c = job_ledger.c
    key = (func.coalesce(c.model, ""), func.coalesce(c.tier, ""), c.status)
    with engine.connect() as connection:
        rows = connection.execute(select(
            *key, func.count(), func.sum(c.prompt_tokens), func.sum(c.completion_tokens),
            func.sum(c.cached_tokens), func.count().filter(c.cache_hit), func.sum(c.cost_usd),
            func.sum(c.cost_saved_usd)).where(c.agent == agent).group_by(*key)).all()
    names = ("jobs", "prompt_tokens", "completion_tokens", "cached_tokens", "cache_hits",
             "cost_usd", "cost_saved_usd")
    return {tuple(r[:3]): dict(zip(names, r[3:], strict=True)) for r in rows}


def latency_of(engine: Engine, tier: str) -> dict[float, tuple[int, float]]:
    with engine.connect() as connection:
        rows = connection.execute(select(metric_latency.c.le, metric_latency.c.jobs,
                                         metric_latency.c.sum_ms)
                                  .where(metric_latency.c.tier == tier)).all()
    return {le: (jobs, sum_ms) for le, jobs, sum_ms in rows}


def drain(do: Any, flusher: LedgerFlusher) -> None:
    while do(flusher.flush()):
        pass


def test_a_batch_flushed_twice_counts_once(run: tuple[Any, LedgerFlusher, Any],
                                           engine: Engine) -> None:
    do, flusher, client = run
    tag = f"ctr-{uuid.uuid4().hex[:8]}"
    # Given four jobs: two that succeeded (one a cache hit), one failed, one rejected
    batch = [
        landing(tag, "a", cached_tokens=4, latency_ms=40.0),
        landing(tag, "b", cache_hit=True, cost_usd=0.0, cost_saved_usd=0.002,
                latency_ms=3.0),
        landing(tag, "c", status=JobStatus.FAILED, model=None, cost_usd=0.0,
                latency_ms=700.0, error="ProviderError"),
        landing(tag, "d", status=JobStatus.REJECTED, tier=None, model=None,
                prompt_tokens=0, completion_tokens=0, cost_usd=0.0, latency_ms=0.5)]
    do(client.rpush(LEDGER_SPOOL, *batch))
    drain(do, flusher)
    # When the same rows are spooled again, twice over in one batch, as redelivered jobs
    do(client.rpush(LEDGER_SPOOL, *batch, *batch))
    drain(do, flusher)
    # Then each counts once: the counters hold exactly the ledger's figures
    counters = counters_of(engine, tag)
    assert counters == ledger_figures(engine, tag)
    assert counters[("m-small", tag, "succeeded")] == {
        "jobs": 2, "prompt_tokens": 20, "completion_tokens": 10, "cached_tokens": 4,
        "cache_hits": 1, "cost_usd": Decimal("0.001"), "cost_saved_usd": Decimal("0.002")}
    assert counters[("", tag, "failed")]["jobs"] == 1
    assert counters[("", "", "rejected")]["jobs"] == 1
    # And the latency rows hold the three jobs that waited, each in its bucket's range
    assert latency_of(engine, tag) == {0.05: (2, 43.0), 1.0: (1, 700.0)}


def test_only_the_rows_that_land_count(run: tuple[Any, LedgerFlusher, Any],
                                       engine: Engine) -> None:
    do, flusher, client = run
    drain(do, flusher)  # start from an empty spool
    tag = f"ctr-{uuid.uuid4().hex[:8]}"
    # Given a batch of six rows and one that no int4 column can hold
    good = [landing(tag, str(i), latency_ms=300.0) for i in range(6)]
    poison = landing(tag, "huge", prompt_tokens=3_000_000_000)
    do(client.rpush(LEDGER_SPOOL, *good[:3], poison, *good[3:]))
    try:
        # When the flusher drains the spool (splitting the batch to find the refused row)
        drain(do, flusher)
        # Then the six that landed count, and the refused one nowhere
        counters = counters_of(engine, tag)
        assert counters == ledger_figures(engine, tag)
        assert counters[("m-small", tag, "succeeded")]["jobs"] == 6
        assert counters[("m-small", tag, "succeeded")]["prompt_tokens"] == 60
        assert latency_of(engine, tag) == {0.5: (6, 1800.0)}
        assert any(f"{tag}-huge".encode() in entry
                   for entry in do(client.lrange(LEDGER_DEAD_LETTERS, 0, -1)))
    finally:
        do(client.delete(LEDGER_DEAD_LETTERS))


# -- the migration's backfill ---------------------------------------------------------

@pytest.fixture()
def scratch(engine: Engine, database_url: str) -> Iterator[str]:
    """A database of its own, migrated up to the revision before the counters."""
    name = f"scratch_{uuid.uuid4().hex[:8]}"
    admin = engine.execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    try:
        command.upgrade(alembic_config(url), "0005_rollup_watermark")
        yield url
    finally:
        sync_engine(url).dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))


def day_rollup(day: dt.datetime, jobs: int, errors: int, cost: str) -> dict[str, Any]:
    return {"granularity": "day", "bucket_start": day, "model": "m-small", "agent": "old",
            "tier": "simple", "jobs": jobs, "errors": errors, "cache_hits": 1,
            "prompt_tokens": 10 * jobs, "completion_tokens": 5 * jobs,
            "cost_usd": Decimal(cost), "cost_saved_usd": Decimal("0.5")}


def test_the_migration_counts_the_ledger_and_the_purged_days(scratch: str) -> None:
    # Given a ledger purged in part: March 1 gone (4 jobs rolled up, one failed), March 2
    # partly (3 rolled up, 1 left), March 3 whole (rolled up and still in the ledger)
    days = [dt.datetime(2030, 3, d, tzinfo=dt.UTC) for d in (1, 2, 3)]
    ledger = [row("old", days[1] + dt.timedelta(hours=20), 1.0, latency_ms=90.0),
              row("old", days[2] + dt.timedelta(hours=1), 2.0, latency_ms=90.0),
              row("old", days[2] + dt.timedelta(hours=2), 0.0, status="failed",
                  latency_ms=20_000.0),
              row("old", days[2] + dt.timedelta(hours=3), 0.0, status="rejected",
                  tier=None, model=None, latency_ms=0.0)]
    with sync_engine(scratch).begin() as connection:
        connection.execute(insert(job_ledger), ledger)
        connection.execute(insert(metrics_rollup), [
            day_rollup(days[0], 4, 1, "8"), day_rollup(days[1], 3, 0, "3"),
            day_rollup(days[2], 3, 2, "2")])
    # When the database is migrated
    migrate(scratch)
    # Then March 1 and 2 come from their roll-ups, March 3 from the ledger, by status
    counters = counters_of(sync_engine(scratch), "old")
    assert counters[("m-small", "simple", "succeeded")] == {
        "jobs": 3 + 3 + 1, "prompt_tokens": 40 + 30 + 10, "completion_tokens": 20 + 15 + 5,
        "cached_tokens": 0, "cache_hits": 2, "cost_usd": Decimal(8 + 3 + 2),
        "cost_saved_usd": Decimal(1)}
    assert counters[("m-small", "simple", "failed")]["jobs"] == 1 + 1
    assert counters[("", "", "rejected")]["jobs"] == 1
    # And the histogram holds the ledger's rows that waited (roll-ups keep no buckets)
    assert latency_of(sync_engine(scratch), "simple") == {
        0.1: (2, 180.0), 30.0: (1, 20_000.0)}


def test_with_monitoring_off_rows_land_and_nothing_counts(
        run: tuple[Any, LedgerFlusher, Any], engine: Engine, database_url: str) -> None:
    do, _, client = run
    tag = f"ctr-{uuid.uuid4().hex[:8]}"
    # Given the flusher of a worker with ENABLE_MONITORING=false
    quiet = LedgerFlusher(client, async_engine(database_url), count=False)
    # When rows land
    do(client.rpush(LEDGER_SPOOL, landing(tag, "a"), landing(tag, "b")))
    drain(do, quiet)
    # Then the ledger has them, and the counters (Prometheus' figures) nothing
    assert ledger_figures(engine, tag)[("m-small", tag, "succeeded")]["jobs"] == 2
    assert counters_of(engine, tag) == {}
    assert latency_of(engine, tag) == {}
