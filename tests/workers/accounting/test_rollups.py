"""Beat's roll-ups and purge against the real Postgres of the session: roll-ups equal
the ledger's own figures, late rows re-roll their past buckets, purge keeps roll-ups."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import Engine, func, select, text

from schemas.tables import job_ledger, metrics_rollup
from tests.workers.accounting.conftest import add, row
from workers.accounting.periodic import purge_expired, rollup_metrics

UTC = dt.UTC


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
