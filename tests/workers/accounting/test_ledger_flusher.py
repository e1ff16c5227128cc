"""The ledger flusher against real Redis and Postgres: a batch and its automatic
experiment outcomes written once; a flusher whose lock lease ran out never trims; a row
Postgres refuses is set aside while every other lands, and replayed once fixed."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from click.testing import CliRunner
from sqlalchemy import Engine, select

from schemas import JobStatus, LedgerRow
from schemas.keys import LEDGER_DEAD_LETTERS, LEDGER_FLUSH_LOCK, LEDGER_SPOOL
from schemas.tables import experiment_outcomes, job_ledger
from workers.accounting.dead_letters import (
    dead_letter_count,
    list_dead_letters,
    replay_dead_letters,
)
from workers.accounting.flusher import LedgerFlusher
from workers.cli import cli
from workers.store.engines import async_engine, migrate, sync_engine


@pytest.fixture(scope="module")
def engine(database_url: str) -> Engine:
    migrate(database_url)
    return sync_engine(database_url)


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


def test_a_row_postgres_refuses_is_set_aside_and_every_other_row_lands(
        run: tuple[Any, LedgerFlusher, Any], engine: Engine, redis_url: str,
        database_url: str) -> None:
    do, flusher, client = run
    while do(flusher.flush()):  # start from an empty spool
        pass
    do(client.delete(LEDGER_DEAD_LETTERS))
    tag = f"poison-{uuid.uuid4().hex[:8]}"
    good = spooled(tag, 6)
    # Given a row no int4 column can hold (a provider's absurd usage) and one unreadable
    now = dt.datetime.now(dt.UTC)
    poison = LedgerRow(job_id=f"{tag}-huge", kind="completion", agent=tag,
                       status=JobStatus.SUCCEEDED, prompt_tokens=3_000_000_000,
                       created_at=now, finished_at=now).model_dump_json()
    do(client.rpush(LEDGER_SPOOL, *good[:3], poison, "{not json", *good[3:]))
    # When the flusher drains the spool
    while do(flusher.flush()):
        pass
    # Then every good row landed, the spool is empty, and the two are set aside
    assert ledger_ids(engine, tag) == sorted(f"{tag}-{i}" for i in range(6))
    assert do(client.llen(LEDGER_SPOOL)) == 0
    sync = redis.Redis.from_url(redis_url)
    letters = list_dead_letters(sync)
    assert {e["job_id"] for e in letters} == {None, f"{tag}-huge"}
    reasons = " ".join(e["reason"] for e in letters)
    assert "NumericValueOutOfRange" in reasons and "malformed ledger row" in reasons
    # And the CLI lists them, and replays them (refused again, back they come)
    env = {"REDIS_URL": redis_url, "DATABASE_URL": database_url}
    listed = CliRunner().invoke(cli, ["ledger", "dead-letters"], env=env)
    assert listed.exit_code == 0 and f"job {tag}-huge" in listed.output
    assert "2 dead letter(s)" in listed.output
    replayed = CliRunner().invoke(cli, ["ledger", "replay"], env=env)
    assert replayed.exit_code == 0 and "moved 2 row(s)" in replayed.output
    while do(flusher.flush()):
        pass
    assert {e["job_id"] for e in list_dead_letters(sync)} == {None, f"{tag}-huge"}
    sync.delete(LEDGER_DEAD_LETTERS)
    sync.close()


def test_a_replayed_row_whose_cause_is_gone_lands(
        run: tuple[Any, LedgerFlusher, Any], engine: Engine, redis_url: str) -> None:
    do, flusher, client = run
    tag = f"replay-{uuid.uuid4().hex[:8]}"
    # Given a dead letter whose row Postgres would take now
    entry = json.dumps({"row": spooled(tag, 1)[0], "reason": "DataError: was", "at": None})
    do(client.rpush(LEDGER_DEAD_LETTERS, entry))
    sync = redis.Redis.from_url(redis_url)
    try:
        assert replay_dead_letters(sync) == 1
        assert dead_letter_count(sync) == 0
    finally:
        sync.close()
    while do(flusher.flush()):
        pass
    assert ledger_ids(engine, tag) == [f"{tag}-0"]
