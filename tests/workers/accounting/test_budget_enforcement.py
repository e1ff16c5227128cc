"""Beat's budget enforcement against the real Postgres and Redis of the session: alerts
once per level, drift repaired from the ledger, scopes and time zones.

Each test writes rows under its own agent and budget names, in periods of its own
(years no other test uses), and removes them afterwards.
"""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from sqlalchemy import Engine, select

from schemas import FleetConfig, LedgerRow, load_fleet_config, parse_fleet_config
from schemas.keys import LEDGER_SPOOL
from schemas.tables import budget_alerts
from tests.workers.accounting.conftest import add, row
from workers.accounting.alerts import Alert, Alerter
from workers.accounting.budgets import NANO, budget_key, period_of
from workers.accounting.periodic import enforce_budgets
from workers.accounting.reports import budgets_state

UTC = dt.UTC
NY = ZoneInfo("America/New_York")


class Recording(Alerter):
    """Log only, and remember what was delivered."""

    def __init__(self) -> None:
        super().__init__()
        self.delivered: list[Alert] = []
        self._lock = threading.Lock()

    def deliver(self, alert: Alert) -> dict[str, str]:
        with self._lock:
            self.delivered.append(alert)
        return super().deliver(alert)


def fleet_with(*budgets: dict[str, Any], tz: str = "UTC") -> FleetConfig:
    data = load_fleet_config().model_dump()
    data.update(budgets=list(budgets), budget_timezone=tz)
    return parse_fleet_config(data)


def alerts_of(engine: Engine, budget: str) -> list[dict[str, Any]]:
    query = select(budget_alerts).where(budget_alerts.c.budget == budget) \
        .order_by(budget_alerts.c.id)
    with engine.connect() as connection:
        return [dict(r) for r in connection.execute(query).mappings()]


# -- budgets ---------------------------------------------------------------------

def test_an_exceeded_budget_alerts_once_however_often_beat_runs(
        engine: Engine, client: redis.Redis, tag: str) -> None:
    # Given a budget whose agent spent twice its limit
    now = dt.datetime(2031, 2, 3, 12, tzinfo=UTC)
    fleet = fleet_with({"name": tag, "limit_usd": 1.0, "scope": f"agent:{tag}"})
    add(engine, row(tag, now - dt.timedelta(hours=1), 2.0))
    alerter = Recording()
    # When beat enforces budgets twice
    first = enforce_budgets(engine, client, fleet, alerter, now)
    second = enforce_budgets(engine, client, fleet, alerter, now)
    # Then one alert was recorded and delivered, with its deliveries kept
    assert [a["level"] for a in first["alerts"]] == ["exceeded"] and second["alerts"] == []
    assert len(alerter.delivered) == 1 and alerter.delivered[0].spent_usd == 2.0
    (stored,) = alerts_of(engine, tag)
    assert stored["level"] == "exceeded" and stored["spent_usd"] == Decimal("2")
    assert stored["deliveries"] == {"log": "sent", "webhook": "off", "email": "off"}


def test_two_racing_beats_alert_once(engine: Engine, client: redis.Redis, tag: str) -> None:
    now = dt.datetime(2031, 2, 4, 12, tzinfo=UTC)
    fleet = fleet_with({"name": tag, "limit_usd": 1.0, "scope": f"agent:{tag}"})
    add(engine, row(tag, now, 3.0))
    alerter, barrier = Recording(), threading.Barrier(2)

    def beat() -> None:
        barrier.wait()
        enforce_budgets(engine, client, fleet, alerter, now)

    threads = [threading.Thread(target=beat) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(alerter.delivered) == 1 and len(alerts_of(engine, tag)) == 1


def test_the_threshold_alerts_first_then_the_limit(engine: Engine, client: redis.Redis,
                                                   tag: str) -> None:
    now = dt.datetime(2031, 2, 5, 12, tzinfo=UTC)
    fleet = fleet_with({"name": tag, "limit_usd": 10.0, "alert_threshold": 0.5,
                        "scope": f"agent:{tag}"})
    alerter = Recording()
    # Under the threshold: nothing
    add(engine, row(tag, now, 4.0))
    assert enforce_budgets(engine, client, fleet, alerter, now)["alerts"] == []
    # Past the threshold: one threshold alert
    add(engine, row(tag, now, 2.0))
    enforce_budgets(engine, client, fleet, alerter, now)
    # Past the limit: one exceeded alert, and nothing more after
    add(engine, row(tag, now, 5.0))
    enforce_budgets(engine, client, fleet, alerter, now)
    enforce_budgets(engine, client, fleet, alerter, now)
    assert [a.level for a in alerter.delivered] == ["threshold", "exceeded"]
    assert [a["level"] for a in alerts_of(engine, tag)] == ["threshold", "exceeded"]
    assert "threshold of 50%" in alerter.delivered[0].message
    assert [a.spent_usd for a in alerter.delivered] == [6.0, 11.0]


def test_drift_in_the_fast_counter_is_repaired_from_the_ledger(
        engine: Engine, client: redis.Redis, tag: str) -> None:
    # Given a ledger spend of 1.5 and a counter that says 999 nano-USD
    now = dt.datetime(2031, 2, 6, 12, tzinfo=UTC)
    fleet = fleet_with({"name": tag, "limit_usd": 100.0, "scope": f"agent:{tag}"})
    budget = fleet.budgets[0]
    key = budget_key(budget, period_of(budget, now, "UTC"))
    add(engine, row(tag, now, 1.0), row(tag, now, 0.5))
    client.hset(key, mapping={"spent": 999, "r:job-1": "5:99999999999"})
    # When beat enforces budgets
    summary = enforce_budgets(engine, client, fleet, Recording(), now)
    # Then the counter holds the ledger's figure, reservations untouched
    assert summary["repaired"] == [{"budget": tag, "was_usd": 999 / NANO, "now_usd": 1.5}]
    assert client.hget(key, "spent") == b"1500000000"
    assert client.hget(key, "r:job-1") == b"5:99999999999"
    assert client.ttl(key) > 0
    # And a second beat finds nothing to repair
    assert enforce_budgets(engine, client, fleet, Recording(), now)["repaired"] == []


def test_a_missing_counter_is_rebuilt(engine: Engine, client: redis.Redis, tag: str) -> None:
    now = dt.datetime(2031, 2, 7, 12, tzinfo=UTC)
    fleet = fleet_with({"name": tag, "limit_usd": 100.0, "scope": f"agent:{tag}"})
    key = budget_key(fleet.budgets[0], period_of(fleet.budgets[0], now, "UTC"))
    add(engine, row(tag, now, 0.25))
    enforce_budgets(engine, client, fleet, Recording(), now)
    assert client.hget(key, "spent") == b"250000000"
    # And so is one holding garbage; a naive time counts as UTC
    client.hset(key, "spent", "garbage")
    summary = enforce_budgets(engine, client, fleet, Recording(), now.replace(tzinfo=None))
    assert summary["repaired"] == [{"budget": tag, "was_usd": None, "now_usd": 0.25}]
    assert client.hget(key, "spent") == b"250000000"


def test_a_fleet_without_budgets_has_nothing_to_enforce(engine: Engine,
                                                        client: redis.Redis) -> None:
    summary = enforce_budgets(engine, client, fleet_with(), Recording())
    assert (summary["budgets"], summary["repaired"], summary["alerts"]) == (0, [], [])


def test_spooled_rows_count_once(engine: Engine, client: redis.Redis, tag: str) -> None:
    # Given one row only in the spool and one both in the spool and in the ledger
    now = dt.datetime(2031, 2, 8, 12, tzinfo=UTC)
    fleet = fleet_with({"name": tag, "limit_usd": 100.0, "scope": f"agent:{tag}"})
    key = budget_key(fleet.budgets[0], period_of(fleet.budgets[0], now, "UTC"))
    flushed = row(tag, now, 1.0)
    add(engine, flushed)
    raws = [LedgerRow(**{**flushed, "status": "succeeded"}).model_dump_json(),
            LedgerRow(**row(tag, now, 2.0)).model_dump_json(), "{not json"]
    client.rpush(LEDGER_SPOOL, *raws)
    try:
        # When beat enforces budgets
        enforce_budgets(engine, client, fleet, Recording(), now)
    finally:
        for raw in raws:
            client.lrem(LEDGER_SPOOL, 1, raw)
    # Then the counter holds 3, not 4
    assert client.hget(key, "spent") == b"3000000000"


def test_each_scope_counts_its_own_rows(engine: Engine, client: redis.Redis, tag: str) -> None:
    now = dt.datetime(2037, 9, 9, 12, tzinfo=UTC)  # the only test writing in 2037
    add(engine, row(tag, now, 1.0, user_id=f"{tag}-u", tier="complex", model="m-big"),
        row(f"{tag}-other", now, 2.0, user_id=None, tier=None, model=None, status="rejected"),
        row(tag, now, 4.0, user_id=f"{tag}-u", tier="simple", model="m-small"))
    scopes = {"global": 7.0, f"agent:{tag}": 5.0, f"user:{tag}-u": 5.0, "tier:complex": 1.0,
              "model:m-small": 4.0, f"agent:{tag}-none": 0.0}
    fleet = fleet_with(*[{"name": f"{tag}-{i}", "limit_usd": 100.0, "scope": s}
                         for i, s in enumerate(scopes)])
    spent = [s["spent_usd"] for s in budgets_state(engine, client, fleet, now)]
    assert spent == list(scopes.values())


def _spent(engine: Engine, client: redis.Redis, fleet: FleetConfig, at: dt.datetime) -> float:
    (state,) = budgets_state(engine, client, fleet, at)
    enforce_budgets(engine, client, fleet, Recording(), at)
    budget = fleet.budgets[0]
    counter = client.hget(budget_key(budget, period_of(budget, at, fleet.budget_timezone)),
                          "spent")
    assert int(counter or 0) / NANO == state["spent_usd"]
    return float(state["spent_usd"])


@pytest.mark.parametrize(("period", "last", "first"), [
    # A day ends at midnight in the budget's time zone, not in UTC
    ("daily", dt.datetime(2032, 7, 15, 23, 59, 59, tzinfo=NY),
     dt.datetime(2032, 7, 16, 0, 0, 0, tzinfo=NY)),
    # A week starts on Monday (2032-07-19)
    ("weekly", dt.datetime(2032, 7, 18, 23, 59, 59, tzinfo=NY),
     dt.datetime(2032, 7, 19, 0, 0, 0, tzinfo=NY)),
    # A month starts on its first day
    ("monthly", dt.datetime(2032, 7, 31, 23, 59, 59, tzinfo=NY),
     dt.datetime(2032, 8, 1, 0, 0, 0, tzinfo=NY)),
])
def test_period_boundaries_follow_the_budget_time_zone(
        engine: Engine, client: redis.Redis, tag: str, period: str, last: dt.datetime,
        first: dt.datetime) -> None:
    # Given a row in the last second of a period and one in the first of the next
    fleet = fleet_with({"name": tag, "limit_usd": 100.0, "period": period,
                        "scope": f"agent:{tag}"}, tz="America/New_York")
    add(engine, row(tag, last, 1.0), row(tag, first, 2.0))
    # Then each period counts its own row only, at its start and its end alike
    assert _spent(engine, client, fleet, last) == 1.0
    assert _spent(engine, client, fleet, first) == 2.0
    assert _spent(engine, client, fleet, first + dt.timedelta(hours=23)) == 2.0
    (state,) = budgets_state(engine, client, fleet, first)
    assert state["period_start"] == first.isoformat()
    assert first.weekday() == 0 or period != "weekly"


