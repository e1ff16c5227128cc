"""The dashboard's extra figures (``/spend``, ``/alerts``, ``/fleet``): spend per bucket
and model, top agents and users, recent budget alerts, the filters' choices; computed
in SQL and checked here against ledger rows whose figures the test chose."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import Engine, insert

from schemas import BudgetConfig, FleetConfig
from schemas.tables import job_ledger
from tests.workers.api.conftest import ADMIN_KEY
from workers.accounting.alerts import Alerter
from workers.accounting.periodic import enforce_budgets
from workers.api import breakdowns

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def hour(t: dt.datetime) -> str:
    return t.replace(minute=0, second=0, microsecond=0).isoformat()


@pytest.fixture(scope="module")
def ledger(engine: Engine) -> Iterator[dict[str, Any]]:
    """Rows of one fresh agent: (minutes ago, model, user, cost USD, status)."""
    agent = f"bd-{uuid.uuid4().hex[:8]}"
    now = dt.datetime.now(dt.UTC)
    spec = [(1, "bd/model-a", "u1", "0.003", "succeeded"),
            (2, "bd/model-b", "u2", "0.002", "succeeded"),
            (125, "bd/model-a", "u1", "0.001", "succeeded"),
            (130, "bd/model-a", "u3", "0.0005", "failed"),
            (60 * 30, "bd/model-b", "u2", "0.5", "succeeded")]  # outside 24 h
    rows = [{"job_id": uuid.uuid4().hex, "kind": "completion", "agent": agent,
             "user_id": user, "tier": "simple", "model": model, "provider": "bd",
             "status": status, "cost_usd": Decimal(cost), "latency_ms": 10.0,
             "created_at": now - dt.timedelta(minutes=ago),
             "finished_at": now - dt.timedelta(minutes=ago)}
            for ago, model, user, cost, status in spec]
    with engine.begin() as connection:
        connection.execute(insert(job_ledger), rows)
    yield {"agent": agent, "now": now, "rows": rows}


def test_spend_per_hour_and_model_counts_each_row_once(engine: Engine,
                                                       ledger: dict[str, Any]) -> None:
    # Given the agent's rows over the last 30 hours
    rows = ledger["rows"]
    # When its last 24 hours are read
    page = breakdowns.spend_page(engine, "24h", agent=ledger["agent"], now=ledger["now"])
    # Then each (hour, model) holds the sum of its rows, and the 30-hour-old row is out
    expected: dict[tuple[str, str], float] = {}
    for row in rows[:4]:
        key = (hour(row["created_at"]), row["model"])
        expected[key] = expected.get(key, 0.0) + float(row["cost_usd"])
    got = {(p["bucket"], p["model"]): p["cost_usd"] for p in page["by_bucket_model"]}
    assert got == pytest.approx(expected)
    assert page["bucket"] == "hour" and page["total_cost_usd"] == pytest.approx(0.0065)
    assert page["models"] == ["bd/model-a", "bd/model-b"]  # dearest first


def test_the_top_users_and_the_rest_add_up(engine: Engine, ledger: dict[str, Any]) -> None:
    # When the top two users are asked for
    page = breakdowns.spend_page(engine, "24h", agent=ledger["agent"], top=2,
                                 now=ledger["now"])
    # Then they come dearest first, and "others" is the one user left
    users = page["users"]
    assert [(r["user"], r["jobs"]) for r in users["rows"]] == [("u1", 2), ("u2", 1)]
    assert users["rows"][0]["cost_usd"] == pytest.approx(0.004)
    assert users["others"]["groups"] == 1 and users["others"]["jobs"] == 1
    assert users["others"]["cost_usd"] == pytest.approx(0.0005)
    assert page["agents"]["rows"] == [{"agent": ledger["agent"], "jobs": 4,
                                       "cost_usd": pytest.approx(0.0065),
                                       "cost_saved_usd": 0.0}]
    # And a model filter narrows every figure
    only_b = breakdowns.spend_page(engine, "7d", agent=ledger["agent"], model="bd/model-b",
                                   now=ledger["now"])
    assert only_b["total_cost_usd"] == pytest.approx(0.502)
    assert [r["user"] for r in only_b["users"]["rows"]] == ["u2"]
    assert only_b["bucket"] == "day"


def test_the_spend_route_is_admin_only_and_equals_the_query(
        http: httpx.Client, engine: Engine, ledger: dict[str, Any]) -> None:
    url = f"/api/admin/ml-ops/spend?time_range=24h&agent={ledger['agent']}&top=2"
    assert http.get(url).status_code == 401
    page = http.get(url, headers=ADMIN).json()
    direct = breakdowns.spend_page(engine, "24h", agent=ledger["agent"], top=2)
    for name in ("by_bucket_model", "agents", "users", "models", "total_cost_usd"):
        assert page[name] == direct[name], name
    assert http.get("/api/admin/ml-ops/spend?time_range=2h", headers=ADMIN).status_code == 400


def test_a_budget_alert_shows_in_recent_alerts(
        http: httpx.Client, engine: Engine, redis_url: str, api_fleet: FleetConfig,
        ledger: dict[str, Any]) -> None:
    # Given a budget the agent's spend today has passed (its newest rows are minutes old)
    name = f"bd-alert-{uuid.uuid4().hex[:6]}"
    budget = BudgetConfig(name=name, limit_usd=0.004, scope=f"agent:{ledger['agent']}")
    fleet = api_fleet.model_copy(update={"budgets": [*api_fleet.budgets, budget]})
    client = redis.Redis.from_url(redis_url)
    try:
        # When beat's budget task runs
        enforce_budgets(engine, client, fleet, Alerter())
    finally:
        client.close()
    # Then the newest alert is that budget's, with its delivery per channel
    assert http.get("/api/admin/ml-ops/alerts").status_code == 401
    newest = http.get("/api/admin/ml-ops/alerts?limit=5", headers=ADMIN).json()["alerts"][0]
    assert newest["budget"] == name and newest["level"] == "exceeded"
    assert newest["limit_usd"] == pytest.approx(0.004)
    assert newest["spent_usd"] >= 0.004 and newest["deliveries"]["log"] == "sent"
    assert newest == breakdowns.recent_alerts(engine, 1)[0]


def test_the_filters_offer_seen_agents_and_every_model(
        http: httpx.Client, api_fleet: FleetConfig, ledger: dict[str, Any]) -> None:
    options = http.get("/api/admin/ml-ops/fleet", headers=ADMIN).json()
    assert ledger["agent"] in options["agents"]
    assert set(api_fleet.models) | {"bd/model-a", "bd/model-b"} <= set(options["models"])
    providers = {p["name"]: p["models"] for p in options["providers"]}
    assert "openai/gpt-4o-mini" in providers["openrouter"]
    assert options["tiers"]["simple"] == api_fleet.tiers["simple"].models
