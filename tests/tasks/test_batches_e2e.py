"""Jobs that can wait, end to end: a real worker and a real beat, the batcher sending
them through the simulator's batch APIs. Answered at half the live price, one ledger
row each, no live call; item errors and a stalled batch's jobs answered live, before
their deadline, still charged once."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import text

from schemas import FleetConfig, JobCancelledError, JobValidationError, Settings, load_config
from schemas.keys import BATCH_WAITING, JOB_STATE
from tasks import FleetClient
from tests.conftest import client_with_worker, stop_process, wait_until
from workers.pipeline.pricing import cost_of
from workers.store.engines import sync_engine

pytestmark = pytest.mark.timeout(120)
JOBS = 12


@pytest.fixture(scope="module")
def env(fleet_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
        ) -> dict[str, str]:
    base = resources.files("schemas").joinpath("default_fleet.toml").read_text()
    path = tmp_path_factory.mktemp("batch-fleet") / "fleet.toml"
    # Small times: a job waits if its deadline is 10 s away, runs live 6 s before it;
    # the batcher gathers for 0.5 s and goes round every second.
    path.write_text(base + """
[batch]
min_deadline_s = 10
margin_s = 6
gather_s = 0.5
poll_s = 1
""")
    return {**fleet_env, "LLMFLEET_CONFIG": str(path)}


@pytest.fixture(scope="module")
def fleet(env: dict[str, str]) -> FleetConfig:
    return load_config(Settings.from_env(env))[1]


@pytest.fixture(scope="module")
def client(env: dict[str, str], fleet: FleetConfig,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetClient]:
    logs = tmp_path_factory.mktemp("batch-logs")
    beat = _start_beat(env, logs / "beat.log")
    try:
        with client_with_worker(env, fleet, "simple", "batcher", logs / "worker.log",
                                "batch-agent") as client:
            yield client
    finally:
        stop_process(beat)


def _start_beat(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "workers.cli", "beat", "--loglevel",
                             "WARNING"], env=env, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT)


def rows_of(database_url: str, job_ids: list[str], timeout: float = 30) -> list[dict[str, Any]]:
    query = text("SELECT * FROM job_ledger WHERE job_id = ANY(:ids)")
    end = time.monotonic() + timeout
    while True:
        with sync_engine(database_url).connect() as connection:
            rows = [dict(r) for r in connection.execute(query, {"ids": job_ids}).mappings()]
        if len(rows) >= len(job_ids) or time.monotonic() > end:
            return rows
        time.sleep(0.3)


def _submit(client: FleetClient, label: str, count: int, deadline: Any = 30) -> list[Any]:
    run = uuid.uuid4().hex[:8]
    return [client.submit([{"role": "user", "content": f"{label} {run} {i}"}], tier="simple",
                          max_tokens=16, deadline=deadline) for i in range(count)]


def test_jobs_that_can_wait_are_answered_by_batches_at_half_price(
        client: FleetClient, sim: Any, database_url: str, fleet: FleetConfig) -> None:
    # Given jobs that can wait 30 s ("30s": a duration as well as seconds)
    handles = _submit(client, "batched", JOBS, deadline="30s")
    # When the agent waits on them as on any job
    results = [h.get(timeout=60) for h in handles]
    # Then each is answered, through the batch API only
    assert all(r.content for r in results)
    stats = sim.stats()
    assert stats["batch_requests"] == JOBS
    assert stats["requests"] == 0
    # And each leaves one ledger row, marked batch, at half the live price
    rows = rows_of(database_url, [h.job_id for h in handles])
    assert sorted(r["job_id"] for r in rows) == sorted(h.job_id for h in handles)
    for row in rows:
        live = _live_cost(fleet, row)
        assert row["batch"] is True and row["status"] == "succeeded"
        assert float(row["cost_usd"]) == pytest.approx(live / 2, rel=1e-6)
        assert float(row["cost_saved_usd"]) == pytest.approx(live / 2, rel=1e-6)


def test_item_errors_go_live_and_are_charged_once(client: FleetClient, sim: Any,
                                                  database_url: str) -> None:
    # Given a provider whose batch items all fail
    sim.configure(batch_item_error_rate=1.0)
    handles = _submit(client, "errored", 4)
    # When the batch ends
    results = [h.get(timeout=60) for h in handles]
    # Then every job is answered live, at live prices, one row each
    assert all(r.content for r in results)
    assert sim.stats()["requests"] == 4
    rows = rows_of(database_url, [h.job_id for h in handles])
    assert len(rows) == 4 and not any(r["batch"] for r in rows)


def test_a_stalled_batchs_jobs_are_answered_live_before_their_deadline(
        client: FleetClient, sim: Any, database_url: str) -> None:
    # Given a batch that would take far longer than the jobs can wait (14 s)
    sim.configure(batch_completion_s=10_000)
    started = time.time()
    handles = _submit(client, "stalled", 4, deadline=14)
    results = [h.get(timeout=60) for h in handles]
    # Then they are answered live, within their deadline, each charged once
    assert time.time() - started < 14
    assert all(r.content for r in results)
    assert sim.stats()["requests"] == 4
    rows = rows_of(database_url, [h.job_id for h in handles])
    assert len(rows) == 4 and not any(r["batch"] for r in rows)


def test_a_deadline_that_is_no_duration_is_refused_at_submit(client: FleetClient) -> None:
    with pytest.raises(JobValidationError, match="deadline"):
        client.submit("hi", deadline="tomorrow")
    with pytest.raises(JobValidationError, match="deadline"):
        client.submit("hi", deadline=-5)


def _live_cost(fleet: FleetConfig, row: dict[str, Any]) -> float:
    from schemas import Usage

    usage = Usage(prompt_tokens=row["prompt_tokens"], completion_tokens=row["completion_tokens"],
                  cached_tokens=row["cached_tokens"])
    return cost_of(fleet.models[row["model"]], usage)


def test_jobs_cancelled_while_they_wait_are_never_sent(client: FleetClient, sim: Any,
                                                       redis_url: str, database_url: str
                                                       ) -> None:
    # Given jobs waiting for a batch, cancelled by their agent before one takes them
    # (the batcher goes round every second: a batch opens the round after they wait),
    # and jobs that are not cancelled
    cancelled = _submit(client, "cancelled", 3)
    with redis.Redis.from_url(redis_url) as look:
        wait_until(lambda: all(look.get(JOB_STATE.format(job_id=h.job_id))
                               == BATCH_WAITING.encode() for h in cancelled), timeout=10,
                   interval=0.02)
    for handle in cancelled:
        handle.cancel()
    kept = _submit(client, "kept", 2)
    # When the kept ones are answered
    assert all(h.get(timeout=60).content for h in kept)
    # Then only they went to the provider: a cancelled job is billed nothing
    stats = sim.stats()
    assert stats["batch_requests"] == 2 and stats["requests"] == 0
    for handle in cancelled:
        with pytest.raises(JobCancelledError):
            handle.get(timeout=10)
    # And each leaves its one ledger row, cancelled, at no cost
    rows = rows_of(database_url, [h.job_id for h in cancelled])
    assert sorted(r["job_id"] for r in rows) == sorted(h.job_id for h in cancelled)
    assert {(r["status"], float(r["cost_usd"])) for r in rows} == {("cancelled", 0.0)}
