"""Drill: a worker killed with SIGKILL while 200 jobs are in flight on it; another worker
takes its place."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import stop_process
from tests.drills.conftest import (
    DrillStack,
    assert_budget_exact,
    running_worker,
    start_worker,
    wait_for_rows,
)

JOBS = 200

pytestmark = pytest.mark.timeout(180)


def test_a_dead_workers_jobs_run_again_and_count_once(drill_stack: DrillStack, sim: Any,
                                                       tmp_path: Path) -> None:
    stack = drill_stack
    sim.configure(latency_ms=3000)
    with running_worker(stack, "worker", tmp_path / "victim.log",
                        concurrency=JOBS) as (victim, client):
        # Given 200 jobs in flight on one worker, all waiting on the provider
        run = uuid.uuid4().hex[:8]
        handles = [client.submit([{"role": "user", "content": f"death {run} {i}"}],
                                 tier="simple", max_tokens=16, timeout=150)
                   for i in range(JOBS)]
        time.sleep(1.5)
        # When it is killed without warning, and another worker takes its place
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        killed = time.monotonic()
        sim.configure(latency_ms=100)
        heir = start_worker(stack, "heir", tmp_path / "heir.log", concurrency=64)
        try:
            # Then every job is answered (its message handed out again)
            results = [h.get(timeout=150) for h in handles]
            answered = time.monotonic() - killed
            rows = wait_for_rows(stack, "worker", JOBS, timeout=30)
        finally:
            stop_process(heir)
    print(f"\nworker death drill: {JOBS} jobs answered {answered:.1f} s after the kill; "
          f"{len(rows)} ledger rows; {sim.stats()['requests']} provider calls")
    assert all(r.content for r in results)
    # And each has exactly one ledger row, and the budget holds no stale reservation
    assert sorted(r["job_id"] for r in rows) == sorted(h.job_id for h in handles)
    assert sim.stats()["requests"] <= 2 * JOBS  # the killed calls, then one each
    assert_budget_exact(stack, "worker")
