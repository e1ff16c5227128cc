"""The admin API (behind LLMFLEET_ADMIN_KEY), health, and Prometheus /metrics equal to
the ledger."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest
from openai import OpenAI
from sqlalchemy import func, select

from schemas import parse_since
from schemas.tables import job_ledger
from tests.workers.api.conftest import ADMIN_KEY
from workers.accounting import reports

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
PAGES = ["overview", "metrics?time_range=1h", "metrics?time_range=7d&agent=api-tester",
         "costs", "experiments", "stats?since=24h"]


def run_some_jobs(api_url: str, key: str, n: int = 3) -> None:
    with OpenAI(base_url=f"{api_url}/v1", api_key=key, max_retries=0) as client:
        for _ in range(n):
            client.chat.completions.create(model="simple", max_tokens=16, messages=[
                {"role": "user", "content": uuid.uuid4().hex}])


@pytest.mark.parametrize("page", PAGES)
def test_admin_pages_need_the_admin_key(http: httpx.Client, key: str, page: str) -> None:
    url = f"/api/admin/ml-ops/{page}"
    assert http.get(url).status_code == 401
    assert http.get(url, headers={"authorization": f"Bearer {key}"}).status_code == 401
    response = http.get(url, headers=ADMIN)
    assert response.status_code == 200, response.text


def test_the_overview_has_today_budgets_queues_and_workers(
        http: httpx.Client, api_url: str, key: str, sim: Any, spool_empty: Any) -> None:
    run_some_jobs(api_url, key)
    spool_empty()
    data = http.get("/api/admin/ml-ops/overview", headers=ADMIN).json()
    assert data["today"]["jobs"] >= 3 and data["today"]["cost_usd"] > 0
    assert set(data["queue_depths"]) >= {"llm.simple", "llm.embeddings"}
    assert data["workers"]["up"] >= 1 and data["workers"]["per_queue"]["llm.simple"] >= 1
    assert any(b["name"] == "broke-daily" for b in data["budgets"])


def test_costs_equal_the_ledger_reports(http: httpx.Client, api_url: str, key: str,
                                        engine: Any, sim: Any, spool_empty: Any) -> None:
    run_some_jobs(api_url, key, 2)
    spool_empty()
    data = http.get("/api/admin/ml-ops/costs?since=7d", headers=ADMIN).json()
    by_agent = reports.costs(engine, parse_since("7d"), "agent", retention_days=30)
    assert data["by"]["agent"] == by_agent
    assert data["top_spenders"]["agents"][0] == by_agent[0]
    assert data["projection"]["projected_month_usd"] >= data["projection"]["month_to_date_usd"]
    metrics = http.get("/api/admin/ml-ops/metrics?time_range=24h&agent=api-tester",
                       headers=ADMIN).json()
    assert metrics["totals"]["jobs"] == sum(p["jobs"] for p in metrics["series"])


def test_health_is_public_and_names_its_parts(http: httpx.Client) -> None:
    response = http.get("/api/admin/ml-ops/health")
    data = response.json()
    assert response.status_code == 200, data
    assert data["status"] == "ok" and data["redis"]["ok"] and data["postgres"]["ok"]
    assert data["workers"]["per_queue"]["llm.simple"] >= 1
    assert "beat" in data and isinstance(data["providers_in_cooldown"], list)


def _samples(text: str, name: str) -> list[tuple[str, float]]:
    pattern = re.compile(rf"^{name}(\{{[^}}]*\}})? (\S+)$", re.M)
    return [(m[1] or "", float(m[2])) for m in pattern.finditer(text)]


def test_prometheus_counters_equal_the_ledger(http: httpx.Client, api_url: str, key: str,
                                              engine: Any, sim: Any,
                                              spool_empty: Any) -> None:
    run_some_jobs(api_url, key)
    spool_empty()
    text = http.get("/metrics").text
    with engine.connect() as connection:
        jobs, cost, hits = connection.execute(select(
            func.count(), func.coalesce(func.sum(job_ledger.c.cost_usd), 0),
            func.count().filter(job_ledger.c.cache_hit))).one()
        mine = connection.execute(select(func.count()).where(
            job_ledger.c.agent == "api-tester", job_ledger.c.status == "succeeded")).scalar()
    assert sum(v for _, v in _samples(text, "llmfleet_jobs_total")) == jobs
    assert sum(v for _, v in _samples(text, "llmfleet_cost_usd_total")) == \
        pytest.approx(float(cost))
    assert sum(v for _, v in _samples(text, "llmfleet_cache_hits_total")) == hits
    assert sum(v for labels, v in _samples(text, "llmfleet_jobs_total")
               if 'agent="api-tester"' in labels and 'status="succeeded"' in labels) == mine
    assert _samples(text, "llmfleet_queue_depth")
    assert _samples(text, "llmfleet_job_latency_seconds_count")
    assert all(v == 1.0 for _, v in _samples(text, "llmfleet_up"))
    limits = dict(_samples(text, "llmfleet_budget_limit_usd"))
    assert any("broke-daily" in labels for labels in limits)


def test_with_no_admin_key_the_admin_api_is_off(api_env: dict[str, str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from schemas import Settings
    from workers.api.app import create_app

    monkeypatch.delenv("LLMFLEET_ADMIN_KEY", raising=False)
    app = create_app(Settings.from_env(api_env))
    with TestClient(app) as client:
        response = client.get("/api/admin/ml-ops/overview", headers=ADMIN)
        assert response.status_code == 503
        assert "LLMFLEET_ADMIN_KEY" in response.json()["error"]["message"]
        assert client.get("/openapi.json").json()["paths"]["/v1/chat/completions"]


def test_experiments_page_reports_the_fleets_experiments(http: httpx.Client,
                                                         engine: Any) -> None:
    from workers.store import experiments as experiments_store

    # Given an experiment over two models
    name = f"api-exp-{uuid.uuid4().hex[:6]}"
    experiments_store.create(engine, name, "user", "success_rate", [
        {"name": "a", "model": "openai/gpt-4o-mini", "weight": 1},
        {"name": "b", "model": "anthropic/claude-3-haiku", "weight": 1}])
    # When the admin page is read
    page = http.get("/api/admin/ml-ops/experiments", headers=ADMIN).json()
    # Then it carries the same report as the CLI's
    found = [e for e in page["experiments"] if e["experiment"] == name]
    assert found == [experiments_store.report(engine, name)]
    assert [v["name"] for v in found[0]["variants"]] == ["a", "b"]
