"""Accounting end to end, with real workers, Redis, Postgres and the simulator: one
ledger row per job whatever happens, budgets under a race (a killed worker, a broker
restart, a Postgres outage: ``tests/drills/``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from schemas import (
    AllModelsFailedError,
    BudgetExceededError,
    FleetConfig,
    JobValidationError,
    Settings,
    load_config,
)
from tasks import FleetClient
from tasks.client import JobHandle
from tasks.names import COMPLETE, queue_for
from tests.conftest import start_worker, stop_process, wait_until
from workers.store.engines import sync_engine

RACE_LIMIT = 0.01


@pytest.fixture(scope="module")
def fleet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from importlib import resources

    base = resources.files("schemas").joinpath("default_fleet.toml").read_text()
    path = tmp_path_factory.mktemp("fleet") / "fleet.toml"
    path.write_text(base.replace("default_max_tokens = 1024", "default_max_tokens = 1024\n"
                                 "job_time_limit_s = 10") + f"""
[[budgets]]
name = "racers"
limit_usd = {RACE_LIMIT}
period = "daily"
scope = "agent:racer"

[[budgets]]
name = "complex-cap"
limit_usd = 0.000001
period = "daily"
scope = "tier:complex"
action = "downgrade"
downgrade_to = "simple"
""")
    return path


@pytest.fixture(scope="module")
def env(fleet_env: dict[str, str], fleet_file: Path) -> dict[str, str]:
    return {**fleet_env, "LLMFLEET_CONFIG": str(fleet_file)}


@pytest.fixture(scope="module")
def fleet(env: dict[str, str]) -> FleetConfig:
    return load_config(Settings.from_env(env))[1]


@pytest.fixture(scope="module")
def workers(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    logs = tmp_path_factory.mktemp("acct-logs")
    procs = {"simple": start_worker(env, "simple,complex", "acct-simple", logs / "s.log"),
             "medium": start_worker(env, "medium", "acct-medium", logs / "m.log")}
    yield {"procs": procs, "logs": logs}
    for proc in procs.values():
        stop_process(proc)


@pytest.fixture(scope="module")
def client(workers: dict, redis_url: str, fleet: FleetConfig) -> Iterator[FleetClient]:
    with FleetClient(redis_url=redis_url, fleet=fleet, agent="acct") as client:
        wait_until(lambda: len(client._app.control.ping(timeout=0.5) or []) >= 2, timeout=60)
        yield client


def ledger(database_url: str, job_ids: list[str]) -> list[dict[str, Any]]:
    with sync_engine(database_url).connect() as connection:
        rows = connection.execute(text("select * from job_ledger where job_id = any(:ids)"),
                                  {"ids": job_ids}).mappings().all()
    return [dict(r) for r in rows]


def wait_for_rows(database_url: str, job_ids: list[str], timeout: float = 30) -> list[dict]:
    wait_until(lambda: len(ledger(database_url, job_ids)) >= len(job_ids), timeout=timeout)
    return ledger(database_url, job_ids)


def ask(text_: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text_}]


def test_every_outcome_leaves_exactly_one_row(client: FleetClient, sim: Any,
                                              database_url: str) -> None:
    ok = client.submit(ask("ledger ok"), tier="simple", user="u7")
    result = ok.get(30)
    sim.configure(error_rate=1.0)
    failed = client.submit(ask("ledger fail"), tier="simple", fallback=False)
    with pytest.raises(AllModelsFailedError):
        failed.get(30)
    sim.configure(error_rate=0.0)
    bad_id = uuid.uuid4().hex
    client._app.send_task(COMPLETE, args=[{"job_id": bad_id, "agent": "acct", "messages": []}],
                          queue=queue_for("simple"), task_id=bad_id)
    with pytest.raises(JobValidationError):
        JobHandle(client, bad_id).get(30)
    rows = {r["job_id"]: r for r in wait_for_rows(database_url, [ok.job_id, failed.job_id,
                                                                 bad_id])}
    good = rows[ok.job_id]
    assert (good["status"], good["agent"], good["user_id"], good["model"]) == (
        "succeeded", "acct", "u7", result.model)
    assert good["prompt_tokens"] == result.usage.prompt_tokens
    assert float(good["cost_usd"]) == pytest.approx(result.cost_usd)
    assert good["attempts"] == 1 and good["finished_at"] >= good["created_at"]
    assert (rows[failed.job_id]["status"], rows[failed.job_id]["error"]) == (
        "failed", "AllModelsFailedError")
    assert rows[failed.job_id]["attempts"] == 3
    assert (rows[bad_id]["status"], rows[bad_id]["error"]) == ("rejected", "JobValidationError")


def test_64_racing_jobs_stay_within_the_budget(client: FleetClient, sim: Any,
                                               database_url: str) -> None:
    # Given a $0.01 budget on agent "racer" and 64 jobs of up to ~$0.0006 each at once
    handles = [client.submit(ask(f"race {i} {uuid.uuid4().hex}"), tier="medium",
                             agent="racer", max_tokens=60) for i in range(64)]
    outcomes: list[Any] = []
    for handle in handles:
        try:
            outcomes.append(handle.get(60))
        except BudgetExceededError as exc:
            outcomes.append(exc)
    refused = [o for o in outcomes if isinstance(o, BudgetExceededError)]
    answered = [o for o in outcomes if not isinstance(o, BudgetExceededError)]
    # Then some ran, the rest were refused naming the budget, and the spend held
    assert answered and refused
    assert refused[0].budget == "racers" and refused[0].limit_usd == RACE_LIMIT
    rows = wait_for_rows(database_url, [h.job_id for h in handles])
    spent = sum(float(r["cost_usd"]) for r in rows)
    assert spent <= RACE_LIMIT
    assert sum(r["status"] == "rejected" for r in rows) == len(refused)


def test_a_full_budget_with_downgrade_moves_jobs_to_a_cheaper_tier(
        client: FleetClient, sim: Any) -> None:
    result = client.submit(ask("downgrade me"), tier="complex").get(30)
    assert result.tier == "simple" and result.model == "openai/gpt-4o-mini"
