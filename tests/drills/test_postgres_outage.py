"""Drill: Postgres stopped for 20 s while jobs run; then restarted on its old port."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from schemas.keys import LEDGER_SPOOL
from tests.drills.conftest import (
    DrillStack,
    assert_budget_exact,
    running_worker,
    wait_for_rows,
)
from workers.store.engines import sync_engine

JOBS = 60
DOWN_S = 20.0

pytestmark = pytest.mark.timeout(180)


def test_a_postgres_outage_loses_no_row_and_counts_none_twice(
        drill_stack: DrillStack, sim: Any, tmp_path: Path) -> None:
    from workers.devstack.embedded import ensure_stack
    from workers.devstack.embedded._postgres import stop_postgres

    stack = drill_stack
    with running_worker(stack, "database", tmp_path / "worker.log") as (worker, client):
        # Given Postgres stops while jobs keep coming for 20 s
        sync_engine(stack.database_url).dispose()
        assert stop_postgres(stack.data_dir)
        stopped = time.monotonic()
        try:
            handles = []
            while time.monotonic() - stopped < DOWN_S:
                handles += [client.submit([{"role": "user", "content": f"outage {uuid.uuid4()}"}],
                                          tier="simple", max_tokens=16)
                            for _ in range(JOBS // 10)]
                time.sleep(DOWN_S / 10)
            # Then every job is answered meanwhile, its row waiting in Redis
            assert all(h.get(30).content for h in handles)
            with redis.Redis.from_url(stack.redis_url) as r:
                assert r.llen(LEDGER_SPOOL) >= len(handles)
        finally:
            info = ensure_stack(stack.data_dir, redis=False)  # back, on its old port
        assert info.database_url == stack.database_url
        # And when it is back, every row arrives exactly once
        rows = wait_for_rows(stack, "database", len(handles), timeout=60)
        assert worker.poll() is None
    assert sorted(r["job_id"] for r in rows) == sorted(h.job_id for h in handles)
    assert sim.stats()["requests"] == len(handles)
    assert_budget_exact(stack, "database")
