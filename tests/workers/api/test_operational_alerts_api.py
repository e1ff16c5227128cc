"""Operational alerts as operators see them: ``/alerts``' ``operational`` part (firing
first) and Prometheus' ``llmfleet_alert_firing`` (the dashboard's panel:
``dashboard/test_operational_alerts_panel.py``); over alert rows written here as beat
writes them."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, delete, insert

from schemas.tables import operational_alerts
from tests.workers.api.conftest import ADMIN_KEY

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def write_alerts(engine: Engine) -> Iterator[dict[str, Any]]:
    """A model's error-rate alert firing now, and an agent's cost alert that fired and
    resolved a minute ago; the rows go afterwards."""
    run = uuid.uuid4().hex[:8]
    model, agent = f"op-{run}/model", f"op-{run}-agent"
    now = dt.datetime.now(dt.UTC)
    firing = {"kind": "error_rate", "scope": "model", "target": model, "threshold": 0.02,
              "resolve_below": 0.016, "value": 0.3, "jobs": 40, "window_s": 300.0,
              "message": f"Error rate of model {model!r} is 30.0% ...",
              "deliveries": {"log": "sent", "webhook": "off", "email": "off"},
              "fired_at": now}
    resolved = {"kind": "cost_per_request", "scope": "agent", "target": agent,
                "threshold": 0.1, "resolve_below": 0.08, "value": 0.2, "jobs": 25,
                "window_s": 300.0, "message": "fired", "deliveries": {"log": "sent"},
                "fired_at": now - dt.timedelta(minutes=5),
                "resolved_at": now - dt.timedelta(minutes=1), "resolved_value": 0.01,
                "resolved_jobs": 30, "resolve_message": "resolved",
                "resolve_deliveries": {"log": "sent", "webhook": "failed: boom"}}
    with engine.begin() as connection:
        for values in (firing, resolved):  # one by one: their columns differ
            connection.execute(insert(operational_alerts).values(**values))
    yield {"model": model, "agent": agent}
    with engine.begin() as connection:
        connection.execute(delete(operational_alerts).where(
            operational_alerts.c.target.in_([model, agent])))


@pytest.fixture(scope="module")
def alerts(engine: Engine) -> Iterator[dict[str, Any]]:
    yield from write_alerts(engine)


def test_alerts_lists_operational_alerts_firing_first(http: httpx.Client,
                                                      alerts: dict[str, Any]) -> None:
    page = http.get("/api/admin/ml-ops/alerts?limit=200", headers=ADMIN).json()
    assert "alerts" in page  # the budget alerts, as before
    operational = page["operational"]
    assert operational["firing"] >= 1
    states = [a["state"] for a in operational["alerts"]]
    assert states == sorted(states, key=lambda s: s != "firing")  # firing first
    mine = {a["target"]: a for a in operational["alerts"]
            if a["target"] in (alerts["model"], alerts["agent"])}
    model, agent = mine[alerts["model"]], mine[alerts["agent"]]
    assert (model["kind"], model["scope"], model["state"], model["value"],
            model["threshold"], model["resolved_at"]) == (
        "error_rate", "model", "firing", 0.3, 0.02, None)
    assert (agent["state"], agent["resolved_value"], agent["resolve_deliveries"]) == (
        "resolved", 0.01, {"log": "sent", "webhook": "failed: boom"})
    assert http.get("/api/admin/ml-ops/alerts").status_code == 401


def test_prometheus_says_which_alerts_fire(http: httpx.Client,
                                           alerts: dict[str, Any]) -> None:
    text = http.get("/metrics", headers=ADMIN).text
    assert (f'llmfleet_alert_firing{{kind="error_rate",scope="model",'
            f'target="{alerts["model"]}"}} 1.0') in text.splitlines()
    assert (f'llmfleet_alert_firing{{kind="cost_per_request",scope="agent",'
            f'target="{alerts["agent"]}"}} 0.0') in text.splitlines()

