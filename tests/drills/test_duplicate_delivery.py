"""Drill: the same job's message delivered twice while it runs (a broker that handed it
out again, an operator's re-publish): one provider call, one row, one answer."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from schemas import CompletionJob
from tasks.names import COMPLETE, queue_for
from tests.drills.conftest import (
    DrillStack,
    assert_budget_exact,
    running_worker,
    wait_for_rows,
)

JOBS = 20

pytestmark = pytest.mark.timeout(120)


def test_a_second_delivery_of_a_running_job_costs_nothing(drill_stack: DrillStack, sim: Any,
                                                          tmp_path: Path) -> None:
    stack = drill_stack
    sim.configure(latency_ms=1500)
    with running_worker(stack, "duplicate", tmp_path / "worker.log") as (_, client):
        # Given jobs whose messages are each published twice, the second while the first
        # is waiting on the provider
        jobs = [CompletionJob(messages=[{"role": "user", "content": f"twice {uuid.uuid4()}"}],
                              tier="simple", max_tokens=16, agent="duplicate")
                for _ in range(JOBS)]
        for job in jobs:
            client._send(COMPLETE, job.model_dump(mode="json"), queue_for("simple"), job.job_id)
        time.sleep(0.5)
        for job in jobs:
            client._send(COMPLETE, job.model_dump(mode="json"), queue_for("simple"), job.job_id)
        # When both deliveries run
        results = [client._waiter.wait(job.job_id, 60) for job in jobs]
        rows = wait_for_rows(stack, "duplicate", JOBS, timeout=30)
        time.sleep(2)  # the second deliveries finish too
        calls = sim.stats()["requests"]
    # Then each job was answered, called its provider once and left one row
    assert all(r["ok"] for r in results)
    assert calls == JOBS
    assert sorted(r["job_id"] for r in rows) == sorted(j.job_id for j in jobs)
    assert_budget_exact(stack, "duplicate")
