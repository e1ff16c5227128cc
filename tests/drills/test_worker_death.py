"""Drill: a worker killed with SIGKILL while 200 jobs are in flight on it; another worker
takes its place, and the sweeper hands it the dead worker's jobs long before Redis's
own visibility timeout would (ten minutes with the default job time limit). A live
worker whose jobs outlast the sweeper's minimum age keeps them."""

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
    # (the sweeper's window in this fleet: min age 4 s, stale after 2.5 x 2 s, a sweep
    # every 2 s; with the defaults, 10 s and 30 s, it is about 40 s)
    assert answered < 30, "the dead worker's jobs waited for Redis's visibility timeout"
    # And each has exactly one ledger row, and the budget holds no stale reservation
    assert sorted(r["job_id"] for r in rows) == sorted(h.job_id for h in handles)
    assert sim.stats()["requests"] <= 2 * JOBS  # the killed calls, then one each
    assert_budget_exact(stack, "worker")


def test_a_slow_live_worker_keeps_its_jobs(drill_stack: DrillStack, sim: Any,
                                           tmp_path: Path) -> None:
    stack = drill_stack
    # Given jobs running longer than the sweeper's minimum age and stale window (9 s
    # against 4 s and 5 s), on a live worker, while another worker sweeps
    sim.configure(latency_ms=9000)
    before = sim.stats()["requests"]
    with running_worker(stack, "worker", tmp_path / "slow.log", concurrency=8) as (_, client):
        other = start_worker(stack, "sweeper", tmp_path / "sweeper.log", concurrency=4,
                             tiers="embeddings")
        try:
            run = uuid.uuid4().hex[:8]
            handles = [client.submit([{"role": "user", "content": f"slow {run} {i}"}],
                                     tier="simple", max_tokens=16, timeout=60)
                       for i in range(8)]
            # Then each is answered once, by one provider call: none was handed out again
            results = [h.get(timeout=60) for h in handles]
        finally:
            stop_process(other)
            sim.configure(latency_ms=0)
    assert all(r.content for r in results)
    assert sim.stats()["requests"] - before == 8
