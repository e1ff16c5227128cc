"""The admin API (behind LLMFLEET_ADMIN_KEY), health, and Prometheus /metrics (behind
its token) equal to the ledger."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest
import redis
from openai import OpenAI
from sqlalchemy import func, select

from schemas import FleetConfig, parse_since
from schemas.tables import job_ledger
from tests.workers.api.conftest import ADMIN_KEY
from workers.accounting import reports
from workers.api.keys import create_key

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


def _sum(text: str, name: str, *labels: str) -> float:
    """The samples of ``name`` whose labels hold every one of ``labels``, added up."""
    return sum(v for found, v in _samples(text, name) if all(x in found for x in labels))


def test_metrics_need_the_token(http: httpx.Client, key: str) -> None:
    # Given /metrics, whose token is the admin key here (no LLMFLEET_METRICS_TOKEN)
    # When it is asked without a token, with a wrong one, a fleet key, or another scheme
    refused = [http.get("/metrics"),
               http.get("/metrics", headers={"authorization": "Bearer not-the-token"}),
               http.get("/metrics", headers={"authorization": f"Bearer {key}"}),
               http.get("/metrics", headers={"authorization": f"Basic {ADMIN_KEY}"})]
    # Then each is a 401 in the API's error shape, and the token opens it
    for response in refused:
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "invalid_metrics_token"
        assert response.headers["www-authenticate"] == "Bearer"
    opened = http.get("/metrics", headers=ADMIN)
    assert opened.status_code == 200 and "llmfleet_up" in opened.text


def test_prometheus_counters_equal_the_ledger(http: httpx.Client, api_url: str,
                                              engine: Any, sim: Any, spool_empty: Any,
                                              redis_url: str, api_fleet: FleetConfig) -> None:
    # Given an agent of its own, and the latency histogram's count before its jobs
    agent = f"prom-{uuid.uuid4().hex[:8]}"
    own_key = create_key(engine, agent, "u1")[1]
    tier = 'tier="simple"'
    spool_empty()
    before = _sum(http.get("/metrics", headers=ADMIN).text,
                  "llmfleet_job_latency_seconds_count", tier)
    # When it runs three jobs, and one whole answer twice (the cache answers it again)
    run_some_jobs(api_url, own_key, 3)
    with OpenAI(base_url=f"{api_url}/v1", api_key=own_key, max_retries=0) as client:
        hit = [client.chat.completions.with_raw_response.create(
            model="simple", max_tokens=512, messages=[
                {"role": "user", "content": f"again {agent}"}]).headers["x-llmfleet-cache-hit"]
            for _ in range(2)]
    spool_empty()
    text = http.get("/metrics", headers=ADMIN).text
    # Then its counters are the ledger's figures, job for job
    c = job_ledger.c
    with engine.connect() as connection:
        jobs, prompt, completion, cost, hits = connection.execute(select(
            func.count(), func.sum(c.prompt_tokens), func.sum(c.completion_tokens),
            func.sum(c.cost_usd), func.count().filter(c.cache_hit))
            .where(c.agent == agent, c.status == "succeeded")).one()
    mine = f'agent="{agent}"'
    assert jobs == 5 and hits == 1 and hit == ["false", "true"]
    assert _sum(text, "llmfleet_jobs_total", mine) == jobs
    assert _sum(text, "llmfleet_jobs_total", mine, 'status="succeeded"') == jobs
    assert _sum(text, "llmfleet_tokens_total", mine, 'kind="prompt"') == prompt
    assert _sum(text, "llmfleet_tokens_total", mine, 'kind="completion"') == completion
    assert _sum(text, "llmfleet_cost_usd_total", mine) == pytest.approx(float(cost))
    assert _sum(text, "llmfleet_cache_hits_total", mine) == hits
    # And the histogram counted its five jobs, the gauges are there, every source is up
    after = _sum(text, "llmfleet_job_latency_seconds_count", tier)
    assert after - before == jobs
    assert _samples(text, "llmfleet_queue_depth")
    assert all(v == 1.0 for _, v in _samples(text, "llmfleet_up"))
    # And each budget's spend (Redis' fast counter) is the ledger's, its limit the file's
    with redis.Redis.from_url(redis_url) as client:
        budgets = {b["name"]: b for b in reports.budgets_state(engine, client, api_fleet)}
    for labels, value in _samples(text, "llmfleet_budget_spend_usd"):
        name = re.findall(r'budget="([^"]+)"', labels)[0]
        assert value == pytest.approx(budgets[name]["spent_usd"])
    limits = {re.findall(r'budget="([^"]+)"', labels)[0]: value
              for labels, value in _samples(text, "llmfleet_budget_limit_usd")}
    assert limits == {name: b["limit_usd"] for name, b in budgets.items()}


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


def test_with_no_token_set_metrics_are_off(api_env: dict[str, str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from schemas import Settings
    from workers.api.app import create_app

    # Given an API with neither LLMFLEET_METRICS_TOKEN nor LLMFLEET_ADMIN_KEY
    monkeypatch.delenv("LLMFLEET_ADMIN_KEY", raising=False)
    monkeypatch.delenv("LLMFLEET_METRICS_TOKEN", raising=False)
    with TestClient(create_app(Settings.from_env(api_env))) as client:
        # When /metrics is asked, with the former admin key or none
        answers = [client.get("/metrics", headers=ADMIN), client.get("/metrics")]
    # Then it is off, and says how to turn it on
    for response in answers:
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["type"] == error["code"] == "metrics_disabled"
        assert "LLMFLEET_METRICS_TOKEN" in error["message"]


def test_a_metrics_token_opens_metrics_and_nothing_else(
        api_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from schemas import Settings
    from workers.api.app import create_app

    # Given a metrics token of its own beside the admin key
    token = {"authorization": "Bearer metrics-token-0123456789"}
    monkeypatch.setenv("LLMFLEET_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("LLMFLEET_METRICS_TOKEN", "metrics-token-0123456789")
    with TestClient(create_app(Settings.from_env(api_env))) as client:
        # When each is presented to /metrics and to the admin API
        metrics = client.get("/metrics", headers=token)
        metrics_with_admin_key = client.get("/metrics", headers=ADMIN)
        admin_with_token = client.get("/api/admin/ml-ops/stats", headers=token)
        admin = client.get("/api/admin/ml-ops/stats", headers=ADMIN)
    # Then the metrics token opens /metrics only, the admin key the admin API only
    assert metrics.status_code == 200 and "llmfleet_jobs_total" in metrics.text
    assert metrics_with_admin_key.status_code == 401
    assert admin_with_token.status_code == 401 and admin.status_code == 200


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
