"""Fault drills: each breaks a real part of a running fleet (Redis, Postgres, a worker,
a message, an HTTP client) and checks what the fleet promises still holds: every job
answered or failed with a typed error, one ledger row per job, one provider call per job
(except after a worker's death), budgets exact.

The drills run on a stack of their own (an embedded Redis with its append-only file and
an embedded Postgres, under a data directory of their own), since they kill its servers;
the session's simulator stands in for providers and counts their calls.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import text

from schemas import FleetConfig, Settings, load_config
from tasks import FleetClient
from tests.conftest import stop_process
from workers.accounting.budgets import NANO, budget_key, counter_figures, period_of
from workers.store.engines import sync_engine

#: The drills' agents, each with a daily budget of its own (never reached), checked to
#: the nano-dollar against the ledger after the drill.
AGENTS = ("broker", "database", "worker", "poison", "duplicate", "sdk", "shutdown", "batch")


@dataclass
class DrillStack:
    data_dir: Path
    redis_url: str
    database_url: str
    env: dict[str, str]
    fleet: FleetConfig

    def redis_pid(self) -> int:
        return int((self.data_dir / "redis.pid").read_text().strip())

    def kill_redis(self) -> None:
        os.kill(self.redis_pid(), signal.SIGKILL)

    def restart_redis(self) -> None:
        from workers.devstack.embedded import ensure_stack

        info = ensure_stack(self.data_dir, postgres=False)  # on its old port
        assert info.redis_url == self.redis_url


def _fleet_file(directory: Path) -> Path:
    base = resources.files("schemas").joinpath("default_fleet.toml").read_text()
    path = directory / "drill-fleet.toml"
    # The default job time limit (Redis itself would hand a dead worker's jobs out
    # again after ten minutes) and a quick sweeper: the drills see it bring them back.
    budgets = "".join(f"""
[[budgets]]
name = "drill-{agent}"
limit_usd = 1000.0
period = "daily"
scope = "agent:{agent}"
""" for agent in AGENTS)
    quick = "default_max_tokens = 1024\nsweep_every_s = 2\nsweep_min_age_s = 4"
    path.write_text(base.replace("default_max_tokens = 1024", quick) + budgets)
    return path


@pytest.fixture(scope="session")
def drill_stack(tmp_path_factory: pytest.TempPathFactory, simulator: Any
                ) -> Iterator[DrillStack]:
    from workers.devstack.embedded import ensure_stack, stop_stack
    from workers.store.engines import migrate

    data_dir = tmp_path_factory.mktemp("drill-stack")
    info = ensure_stack(data_dir)
    migrate(info.database_url)
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENROUTER_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    env.update(REDIS_URL=info.redis_url, DATABASE_URL=info.database_url,
               LLMFLEET_SIMULATOR_URL=simulator.base_url, LLMFLEET_DATA_DIR=str(data_dir),
               LLMFLEET_CONFIG=str(_fleet_file(data_dir)))
    fleet = load_config(Settings.from_env(env))[1]
    try:
        yield DrillStack(data_dir, info.redis_url, info.database_url, env, fleet)
    finally:
        sync_engine(info.database_url).dispose()
        stop_stack(data_dir)


def start_worker(stack: DrillStack, name: str, log: Path, *, concurrency: int = 32,
                 tiers: str = "simple,medium,complex,embeddings") -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "worker", "--tiers", tiers, "--concurrency",
         str(concurrency), "--loglevel", "WARNING", "--hostname", f"{name}@%h"],
        env=stack.env, stdout=out, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def running_worker(stack: DrillStack, name: str, log: Path, **options: Any
                   ) -> Iterator[tuple[subprocess.Popen[bytes], FleetClient]]:
    """A real worker of the drill stack, answering pings, and a client of it."""
    worker = start_worker(stack, name, log, **options)
    client = FleetClient(redis_url=stack.redis_url, fleet=stack.fleet, agent=name)
    try:
        end = time.monotonic() + 60
        while name not in str(_ping(client)):
            assert worker.poll() is None, f"the worker died at start: {log.read_text()[-2000:]}"
            assert time.monotonic() < end, "the worker did not come up"
        yield worker, client
    finally:
        client.close()
        stop_process(worker)


def _ping(client: FleetClient) -> object:
    """Workers answering a ping. A drill before may have restarted Redis under kombu's
    process-wide connection pool, whose stale connection fails once: try again."""
    try:
        return client._app.control.ping(timeout=0.5)
    except (redis.RedisError, OSError) as exc:
        return exc


def ledger_rows(stack: DrillStack, agent: str) -> list[dict[str, Any]]:
    with sync_engine(stack.database_url).connect() as connection:
        return [dict(r) for r in connection.execute(text(
            "SELECT job_id, status, cost_usd, error FROM job_ledger WHERE agent = :agent"),
            {"agent": agent}).mappings()]


def wait_for_rows(stack: DrillStack, agent: str, count: int, timeout: float
                  ) -> list[dict[str, Any]]:
    """The agent's ledger rows once there are ``count`` (or whatever is there at the
    timeout)."""
    deadline = time.monotonic() + timeout
    rows = ledger_rows(stack, agent)
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.5)
        rows = ledger_rows(stack, agent)
    return rows


def assert_budget_exact(stack: DrillStack, agent: str) -> None:
    """The agent's budget counter in Redis holds the ledger's spend (to a nano-dollar a
    row: each side rounds each job), and no job of it still holds a reservation."""
    import datetime as dt

    budget = next(b for b in stack.fleet.budgets if b.name == f"drill-{agent}")
    period = period_of(budget, dt.datetime.now(dt.UTC), stack.fleet.budget_timezone)
    with redis.Redis.from_url(stack.redis_url) as client:
        spent, held = counter_figures(client.hgetall(budget_key(budget, period)),
                                      time.time())
    with sync_engine(stack.database_url).connect() as connection:
        rows, ledger = connection.execute(text(
            "SELECT count(*), coalesce(sum(cost_usd), 0) FROM job_ledger "
            "WHERE agent = :agent AND created_at >= :start"),
            {"agent": agent, "start": period.start}).one()
    assert held == 0, f"{held / NANO} USD still reserved"
    assert abs(Decimal(spent) - Decimal(ledger) * NANO) <= max(1, rows), (spent, ledger)
