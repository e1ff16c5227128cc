"""Operational alerts (``workers.accounting.monitoring``) over ledger rows the tests
write, on the session's real Postgres: the window's figures, firing once, holding
between the thresholds, resolving once, min_jobs, racing beats.

Each test's tier, model and agent are named after its tag, and its rows sit in a minute
of a year no other test uses, so other rows never fall in its window.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import Engine, delete, select

from schemas import MonitoringConfig, load_fleet_config, parse_fleet_config
from schemas.tables import operational_alerts
from tasks.names import EVALUATE_ALERTS
from tests.workers.accounting.conftest import add, row
from workers.accounting.alerts import Alerter, Notice
from workers.accounting.monitoring import evaluate_alerts, judge, window_figures

UTC = dt.UTC
CONFIG = MonitoringConfig(window_s=60, min_jobs=10, error_rate=0.1, avg_latency_ms=5000,
                          cost_per_request=0.5, hysteresis=0.5)


class Webhook:
    """A channel that records what it was sent."""

    name = "webhook"

    def __init__(self) -> None:
        self.sent: list[Notice] = []
        self._lock = threading.Lock()

    def send(self, alert: Notice) -> None:
        with self._lock:
            self.sent.append(alert)

    def secrets(self) -> tuple[str, ...]:
        return ()


@pytest.fixture()
def webhook() -> Webhook:
    return Webhook()


@pytest.fixture()
def alerter(webhook: Webhook) -> Alerter:
    return Alerter([webhook])


@pytest.fixture()
def mine(engine: Engine, tag: str) -> Iterator[dict[str, str]]:
    """The test's tier, model and agent; their alerts go afterwards."""
    yield {"tier": tag, "model": f"{tag}/m", "agent": f"{tag}-a"}
    with engine.begin() as connection:
        connection.execute(delete(operational_alerts)
                           .where(operational_alerts.c.target.startswith(tag)))


@pytest.fixture()
def base() -> dt.datetime:
    """A minute of its own, in a year no other test writes."""
    return dt.datetime(2047, 1, 1, tzinfo=UTC) + dt.timedelta(
        minutes=random.randrange(500_000))


def write(engine: Engine, mine: dict[str, str], end: dt.datetime, n: int, failed: int = 0,
          **fields: Any) -> None:
    """``n`` rows of the test's tier, model and agent in the 30 s up to ``end``, the
    first ``failed`` of them failed."""
    rows = [row(mine["agent"], end - dt.timedelta(seconds=30 * i / n), tier=mine["tier"],
                model=mine["model"], status="failed" if i < failed else "succeeded",
                **fields) for i in range(n)]
    add(engine, *rows)


def alerts_of(engine: Engine, tag: str) -> list[dict[str, Any]]:
    a = operational_alerts.c
    query = select(operational_alerts).where(a.target.startswith(tag)) \
        .order_by(a.kind, a.scope, a.id)
    with engine.connect() as connection:
        return [dict(r) for r in connection.execute(query).mappings()]


def keys(summary: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(s["kind"], s["scope"], s["target"]) for s in summary}


def test_the_window_figures_per_tier_model_and_agent(engine: Engine, tag: str,
                                                     mine: dict[str, str],
                                                     base: dt.datetime) -> None:
    # Given 20 finished jobs in the window (5 failed, latencies 100..2000 ms, $0.01
    # each), rejected and cancelled jobs, and a job just outside the window
    at = base + dt.timedelta(seconds=59)
    add(engine, *[row(mine["agent"], at - dt.timedelta(seconds=i), 0.01, tier=mine["tier"],
                      model=mine["model"], status="failed" if i < 5 else "succeeded",
                      latency_ms=100.0 * (i + 1)) for i in range(20)])
    add(engine, row(mine["agent"], at, 0.0, tier=mine["tier"], model=mine["model"],
                    status="rejected", latency_ms=0.0),
        row(mine["agent"], at, 0.0, tier=mine["tier"], model=mine["model"],
            status="cancelled", latency_ms=99_000.0),
        row(mine["agent"], base, 9.0, tier=mine["tier"], model=mine["model"],
            status="failed"))
    # When the window (base, base + 60 s] is read
    with engine.connect() as connection:
        figures = window_figures(connection, base, base + dt.timedelta(seconds=60))
    # Then the tier, the model and the agent each have the 20 finished jobs' figures
    latencies = sorted(100.0 * (i + 1) for i in range(20))
    p95 = latencies[18] + 0.05 * (latencies[19] - latencies[18])  # percentile_cont
    for scope in ("tier", "model", "agent"):
        [f] = [f for f in figures if f.scope == scope and f.target == mine[scope]]
        assert f.jobs == 20 and f.error_rate == pytest.approx(0.25)
        assert f.avg_latency_ms == pytest.approx(1050.0)
        assert f.p95_latency_ms == pytest.approx(p95)
        assert f.cost_per_request == pytest.approx(0.01)


def test_an_alert_fires_once_holds_and_resolves_once(engine: Engine, tag: str,
                                                     mine: dict[str, str],
                                                     alerter: Alerter, webhook: Webhook,
                                                     base: dt.datetime) -> None:
    minute = dt.timedelta(minutes=1)
    # Given a window with 20% of jobs failed (threshold 10%, resolving under 5%)
    write(engine, mine, base + minute, 20, failed=4)
    # When beat evaluates twice
    first = evaluate_alerts(engine, CONFIG, alerter, now=base + minute)
    again = evaluate_alerts(engine, CONFIG, alerter, now=base + minute)
    # Then the error rate of the tier, the model and the agent fired once each
    fired = {("error_rate", s, mine[s]) for s in ("tier", "model", "agent")}
    assert keys(first["fired"]) == fired and first["resolved"] == []
    assert again["fired"] == [] and again["resolved"] == []
    assert len(webhook.sent) == 3 and {a.state for a in webhook.sent} == {"firing"}
    rows = alerts_of(engine, tag)
    assert len(rows) == 3 and all(r["resolved_at"] is None for r in rows)
    model = next(r for r in rows if r["scope"] == "model")
    assert model["value"] == pytest.approx(0.2) and model["jobs"] == 20
    assert model["threshold"] == pytest.approx(0.1)
    assert model["resolve_below"] == pytest.approx(0.05)
    assert model["deliveries"] == {"log": "sent", "webhook": "sent", "email": "off"}
    assert "20.0%" in model["message"] and mine["model"] in model["message"]

    # Given the next window at 5%: under the threshold, not under the resolve threshold
    write(engine, mine, base + 2 * minute, 20, failed=1)
    # When beat evaluates
    held = evaluate_alerts(engine, CONFIG, alerter, now=base + 2 * minute)
    # Then nothing changes
    assert held["fired"] == [] and held["resolved"] == []
    assert all(r["resolved_at"] is None for r in alerts_of(engine, tag))

    # Given the next window with no failure
    write(engine, mine, base + 3 * minute, 20)
    # When beat evaluates twice
    resolved = evaluate_alerts(engine, CONFIG, alerter, now=base + 3 * minute)
    after = evaluate_alerts(engine, CONFIG, alerter, now=base + 3 * minute)
    # Then each alert resolved once, in place
    assert keys(resolved["resolved"]) == fired and resolved["fired"] == []
    assert after["fired"] == [] and after["resolved"] == []
    assert len(webhook.sent) == 6
    rows = alerts_of(engine, tag)
    assert len(rows) == 3 and all(r["resolved_at"] == base + 3 * minute for r in rows)
    model = next(r for r in rows if r["scope"] == "model")
    assert model["resolved_value"] == 0.0 and model["resolved_jobs"] == 20
    assert model["resolve_deliveries"] == {"log": "sent", "webhook": "sent", "email": "off"}
    assert "resolved" in model["resolve_message"]

    # Given failures over the threshold again
    write(engine, mine, base + 4 * minute, 20, failed=10)
    # When beat evaluates
    refired = evaluate_alerts(engine, CONFIG, alerter, now=base + 4 * minute)
    # Then a new alert fires: a second row each, the first ones kept as history
    assert keys(refired["fired"]) == fired
    assert len(alerts_of(engine, tag)) == 6


def test_under_min_jobs_nothing_fires_and_nothing_resolves(engine: Engine, tag: str,
                                                           mine: dict[str, str],
                                                           alerter: Alerter,
                                                           base: dt.datetime) -> None:
    minute = dt.timedelta(minutes=1)
    # Given 9 jobs, all failed (min_jobs 10)
    write(engine, mine, base + minute, 9, failed=9)
    # When beat evaluates
    summary = evaluate_alerts(engine, CONFIG, alerter, now=base + minute)
    # Then nothing fires
    assert summary["fired"] == [] and alerts_of(engine, tag) == []
    # Given a firing alert, then a window with 9 good jobs
    write(engine, mine, base + 2 * minute, 10, failed=10)
    assert len(evaluate_alerts(engine, CONFIG, alerter, now=base + 2 * minute)["fired"]) == 3
    write(engine, mine, base + 3 * minute, 9)
    # When beat evaluates
    summary = evaluate_alerts(engine, CONFIG, alerter, now=base + 3 * minute)
    # Then the alerts hold: too few jobs to judge
    assert summary["resolved"] == []
    assert all(r["resolved_at"] is None for r in alerts_of(engine, tag))


def test_racing_beats_fire_once_and_resolve_once(engine: Engine, tag: str,
                                                 mine: dict[str, str], alerter: Alerter,
                                                 webhook: Webhook, base: dt.datetime) -> None:
    minute = dt.timedelta(minutes=1)
    write(engine, mine, base + minute, 20, failed=20)
    write(engine, mine, base + 3 * minute, 20)
    for at, field in ((base + minute, "fired"), (base + 3 * minute, "resolved")):
        # When eight beats evaluate the same window at once
        with ThreadPoolExecutor(8) as pool:
            summaries = list(pool.map(lambda now: evaluate_alerts(engine, CONFIG, alerter,
                                                                  now=now), [at] * 8))
        # Then each alert changed once, by one of them
        done = [k for s in summaries for k in keys(s[field])]
        assert sorted(done) == sorted({("error_rate", s, mine[s])
                                       for s in ("tier", "model", "agent")})
    assert len(webhook.sent) == 6
    rows = alerts_of(engine, tag)
    assert len(rows) == 3 and all(r["resolved_at"] is not None for r in rows)


def test_latency_and_cost_per_request(engine: Engine, tag: str, mine: dict[str, str],
                                      alerter: Alerter, base: dt.datetime) -> None:
    minute = dt.timedelta(minutes=1)
    # Given slow, dear jobs: 6 s each at $0.60 (thresholds 5 s and $0.50; p95 off)
    add(engine, *[row(mine["agent"], base + minute - dt.timedelta(seconds=i), 0.6,
                      tier=mine["tier"], model=mine["model"], latency_ms=6000.0)
                  for i in range(10)])
    # When beat evaluates
    summary = evaluate_alerts(engine, CONFIG, alerter, now=base + minute)
    # Then mean latency and cost per request fire for the three scopes, p95 does not
    assert {(k, s) for k, s, _ in keys(summary["fired"])} == {
        (k, s) for k in ("avg_latency_ms", "cost_per_request")
        for s in ("tier", "model", "agent")}
    # And with p95 turned on at 5.5 s it fires too
    p95_on = CONFIG.model_copy(update={"p95_latency_ms": 5500.0})
    summary = evaluate_alerts(engine, p95_on, alerter, now=base + minute)
    assert {k for k, _, _ in keys(summary["fired"])} == {"p95_latency_ms"}
    assert "6,000 ms" in alerts_of(engine, tag)[-1]["message"]


def test_a_threshold_turned_off_resolves_what_fires_of_it(engine: Engine, tag: str,
                                                          mine: dict[str, str],
                                                          alerter: Alerter,
                                                          base: dt.datetime) -> None:
    minute = dt.timedelta(minutes=1)
    write(engine, mine, base + minute, 10, latency_ms=9000.0)
    p95_on = CONFIG.model_copy(update={"p95_latency_ms": 8000.0})
    fired = evaluate_alerts(engine, p95_on, alerter, now=base + minute)["fired"]
    assert ("p95_latency_ms", "model", mine["model"]) in keys(fired)
    # When beat evaluates with p95 off (the default) and no job in the window
    summary = evaluate_alerts(engine, CONFIG, alerter, now=base + 5 * minute)
    # Then the p95 alerts resolve; the others hold, unjudged
    assert {k for k, s, t in keys(summary["resolved"]) if t.startswith(tag)} == {
        "p95_latency_ms"}
    rows = alerts_of(engine, tag)
    assert {r["kind"] for r in rows if r["resolved_at"] is None} == {"avg_latency_ms"}
    assert all("no longer watched" in r["resolve_message"] and r["resolved_value"] is None
               for r in rows if r["resolved_at"] is not None)


def test_judge_is_a_pure_function_of_figures_and_state() -> None:
    from workers.accounting.monitoring import Figures

    def fig(rate: float, n: int = 50) -> Figures:
        return Figures("model", "m", n, rate, 10.0, 10.0, 0.0)

    key = ("error_rate", "model", "m")
    assert [a.key for a in judge([fig(0.11)], set(), CONFIG)[0]] == [key]
    assert judge([fig(0.10)], set(), CONFIG) == ([], [])      # at the threshold: not over
    assert judge([fig(0.07)], {key}, CONFIG) == ([], [])      # between: holds
    assert judge([fig(0.05)], {key}, CONFIG) == ([], [])      # at resolve_below: holds
    assert [a.key for a in judge([fig(0.049)], {key}, CONFIG)[1]] == [key]
    assert judge([fig(0.9, n=9)], set(), CONFIG) == ([], [])  # under min_jobs


def test_beat_evaluates_alerts_at_the_monitoring_interval() -> None:
    from workers.app import create_app

    data = load_fleet_config().model_dump()
    fleet = parse_fleet_config({**data, "monitoring": {"interval_s": 15}})
    app = create_app("redis://127.0.0.1:1/0", fleet)
    schedule = app.conf.beat_schedule
    assert EVALUATE_ALERTS in app.tasks
    assert schedule["evaluate-alerts"]["task"] == EVALUATE_ALERTS == "llm.evaluate_alerts"
    assert schedule["evaluate-alerts"]["schedule"] == 15
    assert schedule["evaluate-alerts"]["options"] == {"queue": "llm.admin"}
