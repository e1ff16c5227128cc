"""A running ``llmfleet api`` (a real subprocess on a free port) in front of a real worker,
the session's Redis and Postgres, and the provider simulator; fleet keys to call it."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources

import httpx
import pytest
from sqlalchemy import Engine

from schemas import FleetConfig, Settings, load_config
from tasks import FleetClient
from tests.conftest import start_worker, stop_process, wait_until
from workers.api.keys import create_key

ADMIN_KEY = "test-admin-key-0123456789"
#: A budget so small that any job of agent "broke" exceeds it.
BROKE_BUDGET = "broke-daily"
#: A budget of agent "dash-coder" (the dashboard's tests) that a few jobs take past its
#: alert threshold, far from its limit.
DASH_BUDGET = "dash-coder-daily"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="package")
def api_env(fleet_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, str]:
    base = resources.files("schemas").joinpath("default_fleet.toml").read_text()
    path = tmp_path_factory.mktemp("api-fleet") / "fleet.toml"
    path.write_text(base + f"""
[[budgets]]
name = "{BROKE_BUDGET}"
limit_usd = 0.000001
period = "daily"
scope = "agent:broke"

[[budgets]]
name = "{DASH_BUDGET}"
limit_usd = 0.0005
period = "daily"
scope = "agent:dash-coder"
alert_threshold = 0.1

# Jobs that can wait (test_openai_batches.py): batched when their deadline is 10 s away,
# the batcher gathering for 0.5 s, going round every second. No other job names one.
[batch]
min_deadline_s = 10
margin_s = 6
gather_s = 0.5
poll_s = 1
""")
    return {**fleet_env, "LLMFLEET_CONFIG": str(path), "LLMFLEET_ADMIN_KEY": ADMIN_KEY}


@pytest.fixture(scope="package")
def api_fleet(api_env: dict[str, str]) -> FleetConfig:
    return load_config(Settings.from_env(api_env))[1]


@pytest.fixture(scope="package")
def api_workers(api_env: dict[str, str], api_fleet: FleetConfig, redis_url: str,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One worker consuming every tier's queue, up and answering pings."""
    logs = tmp_path_factory.mktemp("api-worker-logs")
    worker = start_worker(api_env, ",".join(api_fleet.tiers), "api-all", logs / "w.log")
    client = FleetClient(redis_url=redis_url, fleet=api_fleet)
    try:
        wait_until(lambda: worker.poll() is None and any(
            "api-all" in name for reply in client._app.control.ping(timeout=0.5) or []
            for name in reply), timeout=60)
        yield
    finally:
        client.close()
        stop_process(worker)


@pytest.fixture(scope="package")
def api_url(api_env: dict[str, str], api_workers: None,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``llmfleet api`` (the click command itself) in a subprocess."""
    port = free_port()
    log = (tmp_path_factory.mktemp("api-logs") / "api.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-c", "from workers.cli.api import api_command; api_command()",
         "--port", str(port), "--workers", "2"], env=api_env, stdout=log,
        stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert process.poll() is None, "the API process died at start"
        try:
            return httpx.get(f"{url}/api/admin/ml-ops/health", timeout=2).status_code > 0
        except httpx.TransportError:
            return False

    try:
        wait_until(answers, timeout=60)
        yield url
    finally:
        stop_process(process)
        log.close()


@pytest.fixture(scope="package")
def engine(database_url: str) -> Engine:
    from workers.store.engines import sync_engine

    return sync_engine(database_url)


@pytest.fixture(scope="package")
def key(engine: Engine) -> str:
    """A key of agent "api-tester", user "u1"."""
    return create_key(engine, "api-tester", "u1")[1]


@pytest.fixture(scope="package")
def http(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="package")
def spool_empty(redis_url: str) -> Iterator[object]:
    """A callable that waits until every ledger row has reached Postgres."""
    import redis

    from schemas.keys import LEDGER_SPOOL

    client = redis.Redis.from_url(redis_url)
    yield lambda: wait_until(lambda: client.llen(LEDGER_SPOOL) == 0, timeout=30)
    client.close()
