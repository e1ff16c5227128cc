"""Drill: Redis (broker, results, spool, budgets) killed with SIGKILL while jobs are in
flight, down for a while, then restarted from its append-only file on the same port.

The kill comes once the worker holds every job: a message kombu has popped (BRPOP) but
not yet recorded as unacknowledged, an instant later, is lost with a Redis killed in
that instant (docs/architecture.md, "What a Redis crash can lose")."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from schemas import FleetError, FleetUnavailableError
from tasks.names import queue_for
from tests.conftest import wait_until
from tests.drills.conftest import (
    DrillStack,
    assert_budget_exact,
    running_worker,
    wait_for_rows,
)

JOBS = 400
DOWN_S = 10.0

pytestmark = pytest.mark.timeout(240)


def test_jobs_in_flight_outlive_a_broker_restart(drill_stack: DrillStack, sim: Any,
                                                 tmp_path: Path) -> None:
    stack = drill_stack
    sim.configure(latency_ms=3000)
    with running_worker(stack, "broker", tmp_path / "worker.log", concurrency=JOBS + 16) \
            as (worker, client):
        # Given 400 jobs in flight on a worker, every agent waiting
        run = uuid.uuid4().hex[:8]
        handles = [client.submit([{"role": "user", "content": f"drill {run} {i}"}],
                                 tier="simple", max_tokens=16, timeout=120)
                   for i in range(JOBS)]
        outcomes: list[Any] = []
        finished_at: list[float] = []

        async def wait_all() -> None:
            async def one(handle: Any) -> Any:
                try:
                    return await handle.wait(timeout=120)
                except FleetError as exc:
                    return exc
                finally:
                    finished_at.append(time.monotonic())
            outcomes.extend(await asyncio.gather(*(one(h) for h in handles)))

        waiting = threading.Thread(target=lambda: asyncio.run(wait_all()))
        waiting.start()
        # Every job taken by the worker and in flight (its provider calls take 3 s)
        queue = redis.Redis.from_url(stack.redis_url)
        wait_until(lambda: queue.llen(queue_for("simple")) == 0, timeout=20, interval=0.05)
        queue.close()
        time.sleep(0.5)
        # When Redis dies without warning, stays down, and comes back
        stack.kill_redis()
        killed = time.monotonic()
        time.sleep(DOWN_S)
        stack.restart_redis()
        back = time.monotonic()
        waiting.join(timeout=150)
        assert not waiting.is_alive(), "waits still hanging"
        rows = wait_for_rows(stack, "broker", JOBS, timeout=30)
        rows_at = time.monotonic() - back
        # And the worker carries on: still running, it answers a new job (Celery's own
        # consumer shut the worker down after a broker loss with jobs in flight)
        sim.configure(latency_ms=0)
        assert client.submit(f"after {run}", tier="simple", max_tokens=8).get(timeout=60)
        assert worker.poll() is None, "the worker died"
    kinds = Counter(type(o).__name__ for o in outcomes)
    print(f"\nbroker restart drill: {JOBS} jobs, Redis down {DOWN_S:.0f} s "
          f"({back - killed:.1f} s with the restart); outcomes {dict(kinds)}; "
          f"last answer {max(finished_at) - back:.1f} s after Redis returned; "
          f"{len(rows)} ledger rows {rows_at:.1f} s after; "
          f"{sim.stats()['requests']} provider calls")
    # Then every job is answered (no FleetUnavailableError for jobs that finished)
    assert not any(isinstance(o, FleetUnavailableError) for o in outcomes)
    assert kinds == Counter({"CompletionResult": JOBS})
    # And each left exactly one ledger row, within 30 s of Redis' return
    assert len(rows) >= JOBS and len({r["job_id"] for r in rows}) == len(rows)
    assert {r["status"] for r in rows} == {"succeeded"}
    # And the provider was called once per job (and the one after), but for the jobs
    # whose claims the append-only file had not yet written when Redis died: those run
    # again when their messages come back (docs/architecture.md), still charged once
    assert JOBS + 1 <= sim.stats()["requests"] <= JOBS + 1 + JOBS // 50
    # And the budget counter holds exactly what the ledger says was spent
    assert_budget_exact(stack, "broker")
