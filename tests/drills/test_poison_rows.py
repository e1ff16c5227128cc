"""Drill: rows Postgres would refuse, from every way in (an agent's metadata, a message
that skipped the client, a row no column can hold), while jobs keep running: none of
them stops the ledger."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from schemas import JobStatus, JobValidationError, LedgerRow
from schemas.keys import LEDGER_DEAD_LETTERS, LEDGER_SPOOL
from tasks.names import COMPLETE, queue_for
from tests.drills.conftest import DrillStack, running_worker, wait_for_rows
from workers.accounting.dead_letters import list_dead_letters

JOBS = 20

pytestmark = pytest.mark.timeout(120)


def test_poison_never_stops_the_ledger(drill_stack: DrillStack, sim: Any,
                                       tmp_path: Path) -> None:
    stack = drill_stack
    sync = redis.Redis.from_url(stack.redis_url)
    sync.delete(LEDGER_DEAD_LETTERS)
    with running_worker(stack, "poison", tmp_path / "worker.log") as (worker, client):
        # Given an agent whose metadata holds a NUL: refused at submit, naming the field
        with pytest.raises(JobValidationError) as info:
            client.submit([{"role": "user", "content": "x"}], tier="simple",
                          metadata={"note": "a\x00b"})
        assert info.value.field == "metadata.note"  # type: ignore[attr-defined]
        # And a message that skipped the client: a NUL in its metadata, a tier past the
        # ledger column's 40 characters
        hostile = {"job_id": uuid.uuid4().hex, "agent": "poison", "tier": "t" * 300,
                   "messages": [{"role": "user", "content": "hi"}],
                   "metadata": {"note": "a\x00b"}}
        client._send(COMPLETE, hostile, queue_for("simple"), hostile["job_id"])
        # And a row no int4 column can hold, spooled among the others
        now = dt.datetime.now(dt.UTC)
        sync.rpush(LEDGER_SPOOL, LedgerRow(
            job_id=uuid.uuid4().hex, kind="completion", agent="poison-row",
            status=JobStatus.SUCCEEDED, prompt_tokens=3_000_000_000, created_at=now,
            finished_at=now).model_dump_json())
        # When jobs keep coming
        handles = [client.submit([{"role": "user", "content": f"after {uuid.uuid4()}"}],
                                 tier="simple", max_tokens=16) for _ in range(JOBS)]
        assert all(h.get(30).content for h in handles)
        rejected = client._waiter.wait(hostile["job_id"], 30)
        # Then every row lands but the one Postgres refuses, set aside with its reason
        rows = wait_for_rows(stack, "poison", JOBS + 1, timeout=30)
        assert worker.poll() is None
    letters = list_dead_letters(sync)
    sync.close()
    assert not rejected["ok"] and rejected["error"]["type"] == "JobValidationError"
    assert len(rows) == JOBS + 1
    assert {r["status"] for r in rows if r["job_id"] == hostile["job_id"]} == {"rejected"}
    assert len(letters) == 1 and "NumericValueOutOfRange" in letters[0]["reason"]
