"""Drill: jobs waiting for a provider batch while every fleet process dies. The worker
running the batcher and beat are killed with SIGKILL while a batch is in flight at its
provider, then started again: the batch is found again in Postgres and finished, every
job answered once, one ledger row each at batch prices, the budget exact.

The kill comes once every job waits, that is once each has its row in Postgres, not as
soon as the first batch is at its provider: the batcher sends a batch of the jobs
recorded so far while the worker may still be taking the others off the queue, and a
worker killed then can lose the one message it has popped and not yet recorded as
unacknowledged (kombu's two-command take, docs/architecture.md). That job comes back
only when its client sends it again (``RESEND_AFTER_S``, 30 s), too late for a batch
within this drill's deadline, so it is answered live at its deadline, as it should be;
that is the worker-death path, not the one this drill is about."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from schemas import Settings, load_config
from tasks import FleetClient
from tests.conftest import stop_process
from tests.drills.conftest import DrillStack, assert_budget_exact, wait_for_rows
from workers.store.engines import sync_engine

JOBS = 200
pytestmark = pytest.mark.timeout(180)


def _process(env: dict[str, str], args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "workers.cli", *args, "--loglevel",
                             "WARNING"], env=env, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT)


def _fleet(env: dict[str, str], log: Path, name: str) -> list[subprocess.Popen[bytes]]:
    worker = _process(env, ["worker", "--tiers", "simple", "--concurrency", "32",
                            "--hostname", f"{name}@%h"], log)
    return [worker, _process(env, ["beat"], log)]


def _waiting(stack: DrillStack, ids: list[str]) -> tuple[int, set[str]]:
    """How many of the jobs wait for a batch (their rows), and their batches' statuses."""
    with sync_engine(stack.database_url).connect() as connection:
        rows = connection.execute(text(
            "SELECT j.job_id, b.status FROM provider_batch_jobs j LEFT JOIN provider_batches b "
            "ON j.batch_id = b.id WHERE j.job_id = ANY(:ids)"), {"ids": ids}).all()
    return len(rows), {r[1] for r in rows if r[1] is not None}


def _batched(stack: DrillStack, ids: list[str]) -> int:
    """How many of the jobs' ledger rows say a batch answered them."""
    with sync_engine(stack.database_url).connect() as connection:
        return int(connection.execute(text(
            "SELECT count(*) FROM job_ledger WHERE job_id = ANY(:ids) AND batch"),
            {"ids": ids}).scalar_one())


def test_batches_in_flight_outlive_every_fleet_process(drill_stack: DrillStack, sim: Any,
                                                       tmp_path: Path) -> None:
    stack = drill_stack
    fleet_file = tmp_path / "batch-fleet.toml"
    fleet_file.write_text(Path(stack.env["LLMFLEET_CONFIG"]).read_text() + """
[batch]
min_deadline_s = 20
margin_s = 5
gather_s = 0.5
poll_s = 1
""")
    env = {**stack.env, "LLMFLEET_CONFIG": str(fleet_file)}
    fleet = load_config(Settings.from_env(env))[1]
    sim.configure(batch_completion_s=6)
    processes = _fleet(env, tmp_path / "first.log", "first")
    client = FleetClient(redis_url=stack.redis_url, fleet=fleet, agent="batch")
    try:
        # Given 200 jobs that can wait 60 s, all waiting, some in a batch at its provider
        run = uuid.uuid4().hex[:8]
        handles = [client.submit([{"role": "user", "content": f"batch drill {run} {i}"}],
                                 tier="simple", max_tokens=16, deadline=60)
                   for i in range(JOBS)]
        ids = [h.job_id for h in handles]
        end = time.monotonic() + 60
        waiting, statuses = _waiting(stack, ids)
        while waiting < JOBS or "in_progress" not in statuses:
            assert time.monotonic() < end, (f"{waiting} of {JOBS} jobs wait, their batches "
                                            f"{sorted(statuses)}")
            time.sleep(0.2)
            waiting, statuses = _waiting(stack, ids)
        # When the worker running the batcher and beat are killed, then started again
        for process in processes:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        time.sleep(1)
        processes = _fleet(env, tmp_path / "second.log", "second")
        # Then every job is answered, through the batch
        results = [h.get(timeout=90) for h in handles]
        rows = wait_for_rows(stack, "batch", JOBS, timeout=30)
    finally:
        client.close()
        for process in processes:
            stop_process(process)
    stats = sim.stats()
    print(f"\nbatch restart drill: {JOBS} jobs answered; {stats['batch_requests']} batch "
          f"items, {stats['requests']} live calls; {len(rows)} ledger rows")
    assert all(r.content for r in results)
    # And each has one ledger row, and the budget holds what the ledger says
    assert sorted(r["job_id"] for r in rows) == sorted(ids)
    assert stats["batch_requests"] >= JOBS
    assert _batched(stack, ids) == JOBS, "some jobs were answered live, not by their batch"
    assert_budget_exact(stack, "batch")
