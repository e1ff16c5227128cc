"""Shared fixtures: real Redis and Postgres (embedded unless the environment names
servers), the provider simulator over real HTTP, and real worker processes."""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from schemas import FleetConfig, Settings, load_config
from tasks import FleetClient


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llmfleet-data")


@pytest.fixture(scope="session")
def services(data_dir: Path) -> Iterator[tuple[str, str | None]]:
    """(redis_url, database_url): TEST_REDIS_URL / TEST_DATABASE_URL when set, else the
    embedded servers, started once for the session and stopped after it."""
    redis_url = os.environ.get("TEST_REDIS_URL")
    database_url = os.environ.get("TEST_DATABASE_URL")
    if redis_url and database_url:
        yield redis_url, database_url
        return
    from workers.devstack.embedded import ensure_stack, stop_stack

    info = ensure_stack(data_dir, redis=not redis_url, postgres=not database_url)
    try:
        yield redis_url or info.redis_url, database_url or info.database_url
    finally:
        stop_stack(data_dir)


@pytest.fixture(scope="session")
def redis_url(services: tuple[str, str | None]) -> str:
    return services[0]


@pytest.fixture(scope="session")
def database_url(services: tuple[str, str | None]) -> Iterator[str]:
    """The session's Postgres, migrated."""
    from workers.store.engines import migrate

    assert services[1] is not None
    migrate(services[1])
    yield services[1]
    from workers.store.engines import sync_engine

    sync_engine(services[1]).dispose()


@pytest.fixture(scope="session")
def simulator() -> Iterator[object]:
    from workers.devstack.simulator import SimulatorConfig, SimulatorThread

    with SimulatorThread(SimulatorConfig(latency_ms=0)) as sim:
        yield sim


@pytest.fixture()
def sim(simulator: object) -> Iterator[object]:
    """The session simulator, reset to a clean configuration for each test."""
    simulator.configure(latency_ms=0, jitter_ms=0, error_rate=0, rate_limit_rate=0,  # type: ignore[attr-defined]
                        fail_models={}, known_models=None, context_limits={}, omit_usage=False,
                        malformed_rate=0, first_token_ms=0, token_ms=0,
                        stream_failure_rate=0, quota_rpm={}, quota_tpm={},
                        quota_window_s=60.0, batch_completion_s=2.0,
                        batch_item_error_rate=0.0, batch_expire=0.0)
    simulator.reset_stats()  # type: ignore[attr-defined]
    yield simulator


@pytest.fixture(scope="session")
def fleet_env(redis_url: str, database_url: str, simulator: object,
              data_dir: Path) -> dict[str, str]:
    """Environment for processes of a test fleet: its servers, the simulator, no keys."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENROUTER_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    env.update(REDIS_URL=redis_url, DATABASE_URL=database_url,
               LLMFLEET_SIMULATOR_URL=simulator.base_url,  # type: ignore[attr-defined]
               LLMFLEET_DATA_DIR=str(data_dir))
    return env


@pytest.fixture(scope="session")
def fleet(fleet_env: dict[str, str]) -> FleetConfig:
    return load_config(Settings.from_env(fleet_env))[1]


def start_worker(env: dict[str, str], tiers: str, name: str,
                 log: Path, concurrency: int = 16) -> subprocess.Popen[bytes]:
    """A real ``llmfleet worker`` process."""
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "worker", "--tiers", tiers, "--concurrency",
         str(concurrency),
         "--loglevel", "WARNING", "--hostname", f"{name}@%h"],
        env=env, stdout=out, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def client_with_worker(env: dict[str, str], fleet: FleetConfig, tiers: str, name: str,
                       log: Path, agent: str) -> Iterator[FleetClient]:
    """A FleetClient of ``agent`` once a real worker of ``tiers`` answers pings; the
    worker is stopped afterwards."""
    worker = start_worker(env, tiers, name, log)
    client = FleetClient(redis_url=env["REDIS_URL"], fleet=fleet, agent=agent)
    try:
        end = time.monotonic() + 60
        while not client._app.control.ping(timeout=0.5):
            assert worker.poll() is None, "the worker died at start"
            assert time.monotonic() < end, "the worker did not come up"
        yield client
    finally:
        client.close()
        stop_process(worker)
        # The client's result waiter can leave an async Redis connection to the GC; collect
        # it now, not during a later ast parse (CPython 3.11.7 then raises SystemError).
        gc.collect()


@dataclass
class Sent:
    """A message a client sent (or meant to): task name, arguments, queue, task id."""

    name: str
    args: list[Any]
    queue: str
    task_id: str

    @property
    def jobs(self) -> list[dict[str, Any]]:
        first = self.args[0]
        return first if isinstance(first, list) else [first]


def intercept_sends(client: FleetClient, deliver: Callable[[Sent], bool] = lambda _: True
                    ) -> list[Sent]:
    """The messages ``client`` sends from now on, recorded in order; each goes to Redis
    only when ``deliver`` says so. A job the cache answers at submit is not a message:
    its lookup still answers it, as the client's one-round-trip send would."""
    wire = client._wire
    send, cached = wire.send, wire.cached
    sent: list[Sent] = []

    def recorded(name: str, args: list[Any], queue: str, task_id: str) -> None:
        message = Sent(name, args, queue, task_id)
        sent.append(message)
        if deliver(message):
            send(name, args, queue, task_id)

    def unless_cached(key: str, name: str, args: list[Any], queue: str, task_id: str
                      ) -> bytes | None:
        [raw] = cached([key])
        if raw is None:
            recorded(name, args, queue, task_id)
        return raw

    wire.send = recorded  # type: ignore[method-assign]
    wire.send_unless_cached = unless_cached  # type: ignore[method-assign]
    return sent


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until(predicate: object, timeout: float = 30, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def ledger_row(database_url: str, job_id: str, timeout: float = 30) -> dict[str, Any]:
    """A job's ledger row, once the flusher has written it."""
    from sqlalchemy import text

    from workers.store.engines import sync_engine

    query = text("SELECT * FROM job_ledger WHERE job_id = :j")
    found: list[dict[str, Any]] = []

    def present() -> bool:
        with sync_engine(database_url).connect() as connection:
            found[:] = [dict(r) for r in connection.execute(query, {"j": job_id}).mappings()]
        return bool(found)

    wait_until(present, timeout=timeout)
    return found[0]
