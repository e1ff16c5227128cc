"""Beat's task bodies against the real Postgres and Redis of the session.

Each test writes rows under its own agent and budget names, in periods of its own
(years no other test uses), and removes them afterwards.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from sqlalchemy import Engine, delete, func, insert, select, text

from schemas import FleetConfig, LedgerRow, load_fleet_config, parse_fleet_config
from schemas.keys import LEDGER_SPOOL
from schemas.tables import budget_alerts, job_ledger, metrics_rollup
from workers.accounting.alerts import Alert, Alerter
from workers.accounting.budgets import NANO, budget_key, period_of
from workers.accounting.periodic import enforce_budgets, purge_expired, rollup_metrics
from workers.accounting.reports import budgets_state
from workers.store.engines import migrate, sync_engine

UTC = dt.UTC
NY = ZoneInfo("America/New_York")


@pytest.fixture(scope="module")
def engine(services: tuple[str, str | None]) -> Engine:
    database_url = services[1]
    assert database_url is not None
    migrate(database_url)
    return sync_engine(database_url)


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


@pytest.fixture()
def tag(engine: Engine, client: redis.Redis) -> Iterator[str]:
    """A name no other test uses; everything written under it goes afterwards."""
    name = f"tp-{uuid.uuid4().hex[:12]}"
    yield name
    with engine.begin() as connection:
        connection.execute(delete(job_ledger).where(job_ledger.c.agent.startswith(name)))
        connection.execute(delete(budget_alerts).where(budget_alerts.c.budget.startswith(name)))
        connection.execute(delete(metrics_rollup).where(metrics_rollup.c.agent.startswith(name)))
    for key in client.scan_iter(f"llmfleet:budget:{name}*"):
        client.delete(key)


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


def row(agent: str, at: dt.datetime, cost: float = 0.0, **fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "job_id": uuid.uuid4().hex, "kind": "completion", "agent": agent, "tier": "simple",
        "model": "m-small", "status": "succeeded", "cache_hit": False, "attempts": 1,
        "fallback_used": False, "prompt_tokens": 10, "completion_tokens": 5,
        "cached_tokens": 0, "usage_estimated": False, "cost_usd": cost, "cost_saved_usd": 0,
        "latency_ms": 100.0, "metadata": {}, "created_at": at, "finished_at": at}
    return {**values, **fields}


def add(engine: Engine, *rows: dict[str, Any]) -> None:
    with engine.begin() as connection:
        connection.execute(insert(job_ledger), list(rows))


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


# -- roll-ups and purge -------------------------------------------------------------

def _p(values: list[float], q: float) -> float | None:
    """percentile_cont by hand: linear interpolation between the closest ranks."""
    if not values:
        return None
    ordered, rank = sorted(values), q * (len(values) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


_PLAIN = text("""
    SELECT date_trunc(:unit, created_at AT TIME ZONE 'UTC') AS bucket,
           coalesce(model, '') AS model, coalesce(tier, '') AS tier, count(*) AS jobs,
           sum(CASE WHEN status <> 'succeeded' THEN 1 ELSE 0 END) AS errors,
           sum(CASE WHEN cache_hit THEN 1 ELSE 0 END) AS cache_hits,
           sum(cost_usd) AS cost_usd, sum(cost_saved_usd) AS cost_saved_usd,
           sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
           array_agg(latency_ms) FILTER (WHERE status <> 'rejected') AS latencies
    FROM job_ledger WHERE agent = :agent GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""")


def _check_rollups(engine: Engine, agent: str) -> int:
    """Every roll-up row of ``agent`` equals the same figures computed plainly."""
    checked = 0
    with engine.connect() as connection:
        for unit in ("hour", "day"):
            expected = connection.execute(_PLAIN, {"unit": unit, "agent": agent}).mappings()
            rolled = connection.execute(
                select(metrics_rollup).where(metrics_rollup.c.agent == agent,
                                             metrics_rollup.c.granularity == unit)
                .order_by(metrics_rollup.c.bucket_start, metrics_rollup.c.model,
                          metrics_rollup.c.tier)).mappings().all()
            for want, got in zip(expected, rolled, strict=True):
                assert got["bucket_start"] == want["bucket"].replace(tzinfo=UTC)
                for name in ("model", "tier", "jobs", "errors", "cache_hits", "cost_usd",
                             "cost_saved_usd", "prompt_tokens", "completion_tokens"):
                    assert got[name] == want[name], name
                for q in (50, 95, 99):
                    wanted = _p(want["latencies"] or [], q / 100)
                    value = got[f"latency_p{q}_ms"]
                    assert (value is None) == (wanted is None)
                    if value is not None and wanted is not None:
                        assert abs(value - wanted) < 1e-6
                checked += 1
    return checked


def test_rollups_equal_the_ledger_figures(engine: Engine, tag: str) -> None:
    # Given jobs over two hours of one day and the last hour of the previous day
    now = dt.datetime(2033, 4, 5, 1, 30, tzinfo=UTC)
    rows = [row(tag, now - dt.timedelta(minutes=7 * i), cost=0.001 * i,
                latency_ms=10.0 + (i * 37) % 101, model=("m-small", "m-big")[i % 2],
                status=("succeeded", "succeeded", "failed")[i % 3], cache_hit=i % 4 == 0,
                cost_saved_usd=0.002 if i % 4 == 0 else 0, prompt_tokens=i,
                completion_tokens=2 * i) for i in range(1, 24)]
    rows.append(row(tag, now, user_id=None, tier=None, model=None, status="rejected",
                    latency_ms=0.0))
    add(engine, *rows)
    # When the roll-up runs
    summary = rollup_metrics(engine, now)
    # Then each hourly and daily row equals the plain SQL figures
    assert summary["hour"] == "2033-04-05T01:00:00+00:00" and summary["hour_rows"] >= 5
    assert _check_rollups(engine, tag) >= 9
    # And a later job in the current hour updates its bucket in place
    add(engine, row(tag, now + dt.timedelta(minutes=5), 1.0, latency_ms=5000.0))
    rollup_metrics(engine, now + dt.timedelta(minutes=6))
    assert _check_rollups(engine, tag) >= 9
    with engine.connect() as connection:
        rejected = connection.execute(select(metrics_rollup).where(
            metrics_rollup.c.agent == tag, metrics_rollup.c.model == "",
            metrics_rollup.c.granularity == "hour")).mappings().one()
    assert rejected["tier"] == "" and rejected["errors"] == 1
    assert rejected["latency_p95_ms"] is None


def test_rows_written_late_are_rolled_into_their_past_buckets(engine: Engine,
                                                              tag: str) -> None:
    # Given roll-ups done through 12:30, with jobs of 12:00 and of five hours before
    now = dt.datetime(2034, 6, 7, 12, 30, tzinfo=UTC)
    add(engine, row(tag, now - dt.timedelta(minutes=20), 1.0),
        row(tag, now - dt.timedelta(hours=5), 2.0))
    rollup_metrics(engine, now)
    rollup_metrics(engine, now)  # (the first roll-up of a fresh database sets the mark)
    assert _check_rollups(engine, tag) == 3
    # When rows of 07:00 and of the day before arrive late (Postgres was down), and the
    # roll-up runs again within the same hour
    add(engine, row(tag, now - dt.timedelta(hours=5, minutes=10), 4.0),
        row(tag, now - dt.timedelta(days=1, hours=3), 8.0))
    summary = rollup_metrics(engine, now + dt.timedelta(minutes=5))
    # Then their hourly and daily buckets hold them: every bucket equals the ledger
    assert summary["late_since"] is not None
    assert _check_rollups(engine, tag) == 5
    with engine.connect() as connection:
        daily = connection.execute(select(func.sum(metrics_rollup.c.cost_usd)).where(
            metrics_rollup.c.agent == tag, metrics_rollup.c.granularity == "day")).scalar()
    assert daily == Decimal("15")


def test_late_rows_never_recompute_a_partly_purged_bucket(engine: Engine, tag: str) -> None:
    # Given a day rolled up, then partly purged (30 days of retention)
    now = dt.datetime(2035, 3, 31, 12, tzinfo=UTC)
    edge = now - dt.timedelta(days=30)  # 2035-03-01 12:00
    add(engine, row(tag, edge - dt.timedelta(hours=2), 1.0),
        row(tag, edge + dt.timedelta(hours=2), 2.0))
    rollup_metrics(engine, edge + dt.timedelta(hours=3), retention_days=30)
    rollup_metrics(engine, edge + dt.timedelta(hours=3), retention_days=30)
    purge_expired(engine, 30, now)
    # When a late row of that day arrives and the roll-up runs with the retention
    add(engine, row(tag, edge + dt.timedelta(hours=4), 4.0))
    rollup_metrics(engine, now, retention_days=30)
    # Then that day's roll-up keeps the purged row's figures (not recomputed from part)
    with engine.connect() as connection:
        day = connection.execute(select(metrics_rollup.c.cost_usd).where(
            metrics_rollup.c.agent == tag, metrics_rollup.c.granularity == "day")).scalar()
    assert day == Decimal("3")


def test_purge_deletes_old_rows_and_keeps_rollups(engine: Engine, tag: str) -> None:
    # Given rows from 2001, rolled up
    then = dt.datetime(2001, 1, 10, 12, tzinfo=UTC)
    add(engine, row(tag, then, 1.0), row(tag, then - dt.timedelta(hours=1), 2.0),
        row(tag, then + dt.timedelta(days=40), 4.0))
    rollup_metrics(engine, then)
    # When ledger rows older than 30 days are purged, as of 2001-02-20
    summary = purge_expired(engine, 30, dt.datetime(2001, 2, 20, tzinfo=UTC))
    # Then the January rows are gone, the February one stays, and the roll-ups stay
    assert summary["deleted"] >= 2
    with engine.connect() as connection:
        left = connection.execute(select(job_ledger.c.cost_usd)
                                  .where(job_ledger.c.agent == tag)).scalars().all()
        kept = connection.execute(select(metrics_rollup.c.cost_usd).where(
            metrics_rollup.c.agent == tag, metrics_rollup.c.granularity == "day")).scalars()
        assert left == [Decimal("4")] and list(kept) == [Decimal("3")]
    assert purge_expired(engine, 0)["deleted"] == 0
