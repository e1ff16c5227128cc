"""Drill: SIGTERM to a worker with jobs in flight (a deploy, a scale-down): it finishes
what it runs, hands back what it had not started, and flushes the ledger rows it
spooled before it exits; another worker does the rest, nothing twice."""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from schemas.keys import LEDGER_SPOOL
from tests.conftest import stop_process
from tests.drills.conftest import (
    DrillStack,
    assert_budget_exact,
    ledger_rows,
    running_worker,
    start_worker,
    wait_for_rows,
)

JOBS = 60

pytestmark = pytest.mark.timeout(150)


def test_a_stopped_worker_finishes_hands_back_and_flushes(drill_stack: DrillStack,
                                                           sim: Any, tmp_path: Path) -> None:
    stack = drill_stack
    sim.configure(latency_ms=1000)
    with running_worker(stack, "shutdown", tmp_path / "w1.log",
                        concurrency=16) as (worker, client):
        # Given 60 jobs queued on a worker that runs 16 at a time
        handles = [client.submit([{"role": "user", "content": f"stop {uuid.uuid4()}"}],
                                 tier="simple", max_tokens=16, timeout=120)
                   for _ in range(JOBS)]
        time.sleep(0.5)
        # When it is asked to stop (SIGTERM: Celery's warm shutdown)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
        # Then nothing it ran is left in the spool: its last rows were flushed on exit
        with redis.Redis.from_url(stack.redis_url) as r:
            left = [row for raw in r.lrange(LEDGER_SPOOL, 0, -1)
                    if (row := json.loads(raw))["agent"] == "shutdown"]
        finished = len(ledger_rows(stack, "shutdown"))
        assert left == [] and finished >= 16
        # And another worker runs what it handed back
        heir = start_worker(stack, "shutdown-heir", tmp_path / "w2.log", concurrency=32)
        try:
            results = [h.get(timeout=120) for h in handles]
            rows = wait_for_rows(stack, "shutdown", JOBS, timeout=30)
        finally:
            stop_process(heir)
    print(f"\nshutdown drill: {finished} jobs finished and flushed by the stopped worker, "
          f"{JOBS - finished} by its heir; {sim.stats()['requests']} provider calls")
    assert all(r.content for r in results)
    assert sorted(r["job_id"] for r in rows) == sorted(h.job_id for h in handles)
    assert sim.stats()["requests"] == JOBS  # nothing ran twice
    assert_budget_exact(stack, "shutdown")
