"""The ledger flusher against real Redis and Postgres: a batch and its automatic
experiment outcomes written once; a flusher whose lock lease ran out never trims."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from sqlalchemy import Engine, select

from schemas import JobStatus, LedgerRow
from schemas.keys import LEDGER_FLUSH_LOCK, LEDGER_SPOOL
from schemas.tables import experiment_outcomes, job_ledger
from workers.accounting.flusher import LedgerFlusher
from workers.store.engines import async_engine, migrate, sync_engine


@pytest.fixture(scope="module")
def engine(database_url: str) -> Engine:
    migrate(database_url)
    return sync_engine(database_url)


@pytest.fixture()
def run(redis_url: str, database_url: str) -> Iterator[tuple[Any, LedgerFlusher, Any]]:
    loop = asyncio.new_event_loop()
    client = aioredis.from_url(redis_url)
    flusher = LedgerFlusher(client, async_engine(database_url))
    yield loop.run_until_complete, flusher, client
    loop.run_until_complete(client.delete(LEDGER_FLUSH_LOCK))
    loop.run_until_complete(client.aclose())
    loop.close()


def spooled(tag: str, n: int, outcome: dict[str, Any] | None = None) -> list[str]:
    now = dt.datetime.now(dt.UTC)
    return [LedgerRow(job_id=f"{tag}-{i}", kind="completion", agent=tag,
                      status=JobStatus.SUCCEEDED, created_at=now, finished_at=now,
                      outcome=outcome).model_dump_json() for i in range(n)]


def ledger_ids(engine: Engine, tag: str) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(select(job_ledger.c.job_id)
                                   .where(job_ledger.c.agent == tag)).scalars())


def test_a_flush_writes_rows_and_their_outcomes_once(
        run: tuple[Any, LedgerFlusher, Any], engine: Engine) -> None:
    do, flusher, client = run
    tag = f"flush-{uuid.uuid4().hex[:8]}"
    outcome = {"experiment": tag, "variant": "b", "success": True, "score": 12.0}
    do(client.rpush(LEDGER_SPOOL, *spooled(tag, 3, outcome)))
    while do(flusher.flush()):
        pass
    # the same rows spooled again (a redelivered job) change nothing
    do(client.rpush(LEDGER_SPOOL, *spooled(tag, 3, {**outcome, "success": False})))
    while do(flusher.flush()):
        pass
    assert ledger_ids(engine, tag) == [f"{tag}-{i}" for i in range(3)]
    with engine.connect() as conn:
        found = conn.execute(select(experiment_outcomes.c.variant,
                                    experiment_outcomes.c.success)
                             .where(experiment_outcomes.c.experiment == tag)).all()
    assert sorted(found) == [("b", True)] * 3


def test_a_flusher_whose_lease_ran_out_leaves_the_batch(
        run: tuple[Any, LedgerFlusher, Any], engine: Engine,
        monkeypatch: pytest.MonkeyPatch) -> None:
    do, flusher, client = run
    while do(flusher.flush()):  # start from an empty spool
        pass
    tag = f"lease-{uuid.uuid4().hex[:8]}"
    do(client.rpush(LEDGER_SPOOL, *spooled(tag, 4)))
    insert = flusher._insert

    async def slow_insert(rows: list[dict[str, Any]]) -> bool:
        # the lease runs out while Postgres is slow, and another flusher takes the lock
        await client.set(LEDGER_FLUSH_LOCK, "another-flusher")
        return await insert(rows)

    monkeypatch.setattr(flusher, "_insert", slow_insert)
    assert do(flusher.flush()) == 0
    # the rows are written, and still in the spool for the lock's holder to trim
    assert ledger_ids(engine, tag) == [f"{tag}-{i}" for i in range(4)]
    assert do(client.llen(LEDGER_SPOOL)) == 4
    assert do(client.get(LEDGER_FLUSH_LOCK)) == b"another-flusher"
    monkeypatch.setattr(flusher, "_insert", insert)
    do(client.delete(LEDGER_FLUSH_LOCK))
    assert do(flusher.flush()) == 4 and do(client.llen(LEDGER_SPOOL)) == 0
    assert ledger_ids(engine, tag) == [f"{tag}-{i}" for i in range(4)]
