"""Job messages run on the worker's event loop straight from Celery's consumer
(``workers.intake``): what a bad message does there, and the same tasks under a pool
of Celery's own, where they fall back to Celery's default strategy."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from schemas import CompletionResult, FleetConfig
from schemas.keys import JOB_STATE
from tasks import FleetClient
from tasks._wire import JobWire
from tasks.names import COMPLETE, queue_for
from tests.conftest import client_with_worker, stop_process, wait_until


def test_a_malformed_job_message_is_dropped_and_the_worker_goes_on(
        fleet_env: dict[str, str], fleet: FleetConfig, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    with client_with_worker(fleet_env, fleet, "simple", "intake", log, "intake") as client, \
            redis.Redis.from_url(fleet_env["REDIS_URL"]) as r:
        # Given a job message with two arguments where a job task takes one
        bad = uuid.uuid4().hex
        JobWire(r).send(COMPLETE, [{"job_id": bad}, "extra"], queue_for("simple"), bad)
        # When a good job follows it on the same queue
        result = client.submit("after a bad message", tier="simple", max_tokens=8).get(60)
        # Then the good one is answered, the bad one is logged as dropped and acknowledged
        # (not left in the broker's unacked set to come back after its visibility timeout)
        assert isinstance(result, CompletionResult) and result.content
        wait_until(lambda: "one positional argument: dropped" in log.read_text())
        assert bad in log.read_text()
        wait_until(lambda: not any(bad.encode() in raw for raw in r.hvals("unacked")))
        assert r.get(JOB_STATE.format(job_id=bad)) is None  # it never ran


def test_job_tasks_run_under_a_pool_of_celerys_own(
        fleet_env: dict[str, str], fleet: FleetConfig, tmp_path: Path) -> None:
    # Given a worker started with Celery's own command and thread pool, not `llmfleet worker`
    name = f"celery-threads-{uuid.uuid4().hex[:6]}"
    with (tmp_path / "celery.log").open("ab") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "--app", "workers.app:app", "worker",
             "--pool", "threads", "--concurrency", "4", "--queues", queue_for("simple"),
             "--loglevel", "WARNING", "--hostname", f"{name}@%h", "--without-mingle",
             "--without-gossip"], env=fleet_env, stdout=out, stderr=subprocess.STDOUT)
    client = FleetClient(redis_url=fleet_env["REDIS_URL"], fleet=fleet, agent="intake-pool")
    try:
        end = time.monotonic() + 60
        while not any(name in node for answer in client._app.control.ping(timeout=0.5) or []
                      for node in answer):
            assert worker.poll() is None, "the worker died at start"
            assert time.monotonic() < end, "the worker did not come up"
        # When jobs are sent, one by one and as a batch
        one = client.submit("under threads", tier="simple", max_tokens=8).get(60)
        many = client.submit_many([{"messages": f"batch {i}", "tier": "simple",
                                    "max_tokens": 8} for i in range(3)]).get(60)
        # Then they run (Celery's default strategy and the synchronous bodies)
        assert isinstance(one, CompletionResult) and one.content
        assert len(many) == 3 and all(isinstance(m, CompletionResult) for m in many)
    finally:
        client.close()
        stop_process(worker)


def test_a_job_in_flight_is_an_active_task_of_its_worker(
        fleet_env: dict[str, str], fleet: FleetConfig, sim: Any, tmp_path: Path) -> None:
    # Given a job that takes its provider 2 s
    sim.configure(latency_ms=2000)
    prompt = f"secret prompt {uuid.uuid4().hex}"
    with client_with_worker(fleet_env, fleet, "simple", "intake-active", tmp_path / "w.log",
                            "intake-active") as client:
        handle = client.submit(prompt, tier="simple", max_tokens=8)
        # When its worker is inspected while it runs
        found: list[dict[str, Any]] = []

        def listed() -> bool:
            active = client._app.control.inspect(timeout=0.5).active() or {}
            found[:] = [t for tasks in active.values() for t in tasks
                        if t["id"] == handle.job_id]
            return bool(found)

        wait_until(listed, timeout=20, interval=0.1)
        # Then it is an active task with its message's delivery info and a summary of its
        # arguments (its ids, never its prompt), and it is gone once answered
        task = found[0]
        assert task["name"] == COMPLETE and task["delivery_info"]["routing_key"] == "llm.simple"
        assert handle.job_id in str(task["args"]) and "secret prompt" not in str(task)
        assert handle.get(timeout=30).content
        wait_until(lambda: not listed(), timeout=10)
