"""Operational alerts end to end: a real worker, the simulator failing 30% of one
model's requests, the ledger, and beat's evaluation body run here twice per step: one
alert fires for that model, then, once its failures have left the window and it
answers again, resolves; nothing fires or resolves twice. ENABLE_MONITORING=false makes
the body do nothing.

The fleet file gives this module a tier of its own whose two models (named afresh for
each run) are only ever called here, without retries or fallback, so that a job's
outcome is its one request's; a window of a few seconds and min_jobs 10 keep it short.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterator
from importlib import resources
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine, delete, func, select

from schemas import AllModelsFailedError, FleetConfig, Settings, load_config
from schemas.tables import job_ledger, operational_alerts
from tasks import FleetClient
from tests.conftest import client_with_worker, wait_until
from workers.bodies import database, housekeeping
from workers.store.engines import sync_engine

RUN = uuid.uuid4().hex[:8]
FLAKY, STEADY, AGENT = f"mon-{RUN}/flaky", f"mon-{RUN}/steady", f"mon-{RUN}"
TIER = "monitored"
WINDOW_S = 6.0
_MODEL = """
[models."{name}"]
provider = "openrouter"
input_per_mtok = 0.15
output_per_mtok = 0.60
context_window = 128000
"""


@pytest.fixture(scope="module")
def env(fleet_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
        ) -> dict[str, str]:
    base = resources.files("schemas").joinpath("default_fleet.toml").read_text()
    # A breaker that never opens: a job it refused would fail before reaching the model.
    base = base.replace("failure_threshold = 8 ", "failure_threshold = 100000 ")
    path = tmp_path_factory.mktemp("monitoring-fleet") / "fleet.toml"
    path.write_text(base + _MODEL.format(name=FLAKY) + _MODEL.format(name=STEADY) + f"""
[tiers.{TIER}]
models = ["{FLAKY}", "{STEADY}"]
max_retries = 0

[monitoring]
window_s = {WINDOW_S}
min_jobs = 10
""")
    return {**fleet_env, "LLMFLEET_CONFIG": str(path)}


@pytest.fixture(scope="module")
def fleet(env: dict[str, str]) -> FleetConfig:
    return load_config(Settings.from_env(env))[1]


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    engine = sync_engine(database_url)
    yield engine
    with engine.begin() as connection:
        connection.execute(delete(operational_alerts).where(
            operational_alerts.c.target.in_([FLAKY, STEADY, AGENT, TIER])))


@pytest.fixture(scope="module")
def client(env: dict[str, str], fleet: FleetConfig,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetClient]:
    logs = tmp_path_factory.mktemp("monitoring-logs")
    with client_with_worker(env, fleet, TIER, "w-monitoring", logs / "w.log",
                            agent=AGENT) as fleet_client:
        yield fleet_client


@pytest.fixture()
def beat_body(env: dict[str, str], fleet: FleetConfig,
              monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, Any]]:
    """Beat's body, ``workers.bodies.housekeeping.evaluate_alerts``, called here with
    the settings and fleet file a worker of ``env`` (plus ``overrides``) would have: the
    runtime it asks for is those two alone (the body needs nothing else of it)."""

    def call(**overrides: str) -> dict[str, Any]:
        runtime = SimpleNamespace(settings=Settings.from_env({**env, **overrides}),
                                  fleet=fleet)
        monkeypatch.setattr(housekeeping, "get_runtime", lambda: runtime)
        monkeypatch.setattr(database, "get_runtime", lambda: runtime)
        return housekeeping.evaluate_alerts()

    return call


def run_jobs(client: FleetClient, model: str, n: int) -> tuple[list[str], int]:
    """``n`` jobs on ``model`` alone, each its own prompt: (job ids, how many failed)."""
    handles = [client.submit(f"monitor me {uuid.uuid4().hex}", tier=TIER, model=model,
                             fallback=False, cache="skip", max_tokens=8) for _ in range(n)]
    failed = 0
    for handle in handles:
        try:
            handle.get(timeout=30)
        except AllModelsFailedError:
            failed += 1
    return [h.job_id for h in handles], failed


def landed(engine: Engine, job_ids: list[str]) -> dt.datetime:
    """Once every job's ledger row is in Postgres: the newest one's ``created_at``."""
    query = select(func.count(), func.max(job_ledger.c.created_at)) \
        .where(job_ledger.c.job_id.in_(job_ids))
    found: list[Any] = []

    def all_there() -> bool:
        with engine.connect() as connection:
            found[:] = connection.execute(query).one()
        return bool(found[0] == len(job_ids))

    wait_until(all_there, timeout=30, interval=0.1)
    newest: dt.datetime = found[1]
    return newest


def alerts(engine: Engine, target: str) -> list[dict[str, Any]]:
    query = select(operational_alerts).where(operational_alerts.c.target == target) \
        .order_by(operational_alerts.c.id)
    with engine.connect() as connection:
        return [dict(r) for r in connection.execute(query).mappings()]


def test_a_failing_model_fires_once_and_resolves_once(
        client: FleetClient, sim: Any, engine: Engine,
        beat_body: Callable[..., dict[str, Any]]) -> None:
    # Given the steady model answering every job, then the flaky one failing 30% of them
    steady, _ = run_jobs(client, STEADY, 12)
    sim.configure(error_rate=0.3, seed=20_240_601)
    flaky, failed = run_jobs(client, FLAKY, 30)
    sim.configure(error_rate=0.0)
    last_bad = landed(engine, steady + flaky)
    assert 3 <= failed <= 20, failed
    # When beat's body runs with ENABLE_MONITORING=false
    off = beat_body(ENABLE_MONITORING="false")
    # Then it does nothing
    assert "skipped" in off and alerts(engine, FLAKY) == []
    # When it runs twice with monitoring on
    first, second = beat_body(), beat_body()
    assert time.time() - last_bad.timestamp() < WINDOW_S, "too slow for the window"
    # Then the flaky model's error rate fired once, at its measured rate; the steady
    # model's did not
    assert [a["target"] for a in first["fired"] if a["scope"] == "model"] == [FLAKY]
    assert [a for a in second["fired"] if a["target"] in (FLAKY, STEADY)] == []
    [fired] = alerts(engine, FLAKY)
    assert (fired["kind"], fired["scope"], fired["resolved_at"]) == ("error_rate", "model",
                                                                     None)
    assert fired["value"] == pytest.approx(failed / 30) and fired["jobs"] == 30
    assert fired["deliveries"]["log"] == "sent"
    assert alerts(engine, STEADY) == []

    # Given the failures out of the window, and the flaky model answering again
    time.sleep(max(0.0, last_bad.timestamp() + WINDOW_S + 0.5 - time.time()))
    good, none_failed = run_jobs(client, FLAKY, 20)
    landed(engine, good)
    assert none_failed == 0
    # When beat's body runs twice
    resolved, after = beat_body(), beat_body()
    # Then that alert resolved once, and nothing fired again
    assert [a["target"] for a in resolved["resolved"] if a["scope"] == "model"] == [FLAKY]
    assert [a for a in resolved["fired"] + after["fired"] + after["resolved"]
            if a["target"] in (FLAKY, STEADY)] == []
    [row] = alerts(engine, FLAKY)
    assert row["id"] == fired["id"] and row["resolved_at"] is not None
    assert row["resolved_value"] == 0.0 and row["resolved_jobs"] == 20
    assert alerts(engine, STEADY) == []


def test_monitoring_off_skips_the_roll_ups(env: dict[str, str], fleet: FleetConfig,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def rollup(**overrides: str) -> dict[str, Any]:
        runtime = SimpleNamespace(settings=Settings.from_env({**env, **overrides}),
                                  fleet=fleet)
        monkeypatch.setattr(housekeeping, "get_runtime", lambda: runtime)
        monkeypatch.setattr(database, "get_runtime", lambda: runtime)
        return housekeeping.rollup_metrics()

    assert "skipped" in rollup(ENABLE_MONITORING="false")
    assert "skipped" not in rollup()
