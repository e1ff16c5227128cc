"""The figures the admin API adds to ``workers.accounting.reports``: filtered metrics with a time
series, the costs page (every grouping, top spenders, a month-end projection), queue
depths and workers. Ledger figures reuse ``reports.ledger_measures`` so that they equal
``llmfleet costs`` and ``llmfleet stats``. Sync: routes run these in a thread."""

from __future__ import annotations

import calendar
import datetime as dt
from typing import Any

from redis import Redis
from sqlalchemy import Connection, Engine, func, select

from schemas import FleetConfig
from schemas.tables import job_ledger, operational_alerts
from tasks.celery_config import fleet_queues
from workers.accounting import reports
from workers.store.figures import with_rates

__all__ = ["TIME_RANGES", "alert_states", "costs_page", "metrics_page",
           "operational_alerts_page", "queue_depths", "start_of_day", "workers_per_queue"]

#: The admin API's time ranges and the bucket of each one's series.
TIME_RANGES: dict[str, tuple[dt.timedelta, str]] = {
    "1h": (dt.timedelta(hours=1), "minute"), "24h": (dt.timedelta(hours=24), "hour"),
    "7d": (dt.timedelta(days=7), "day"), "30d": (dt.timedelta(days=30), "day")}


def start_of_day(now: dt.datetime) -> dt.datetime:
    """Midnight UTC of ``now``'s day, the "today" of the overview."""
    return now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def metrics_page(engine: Engine, time_range: str, *, model: str | None = None,
                 agent: str | None = None, now: dt.datetime | None = None) -> dict[str, Any]:
    """Totals and a per-bucket series over ``time_range``, optionally for one model or
    agent: jobs, errors, cache hits, tokens, cost, latency percentiles."""
    span, bucket = TIME_RANGES[time_range]
    now = reports.utc_now(now)
    since = now - span
    where = [job_ledger.c.created_at >= since]
    if model:
        where.append(job_ledger.c.model == model)
    if agent:
        where.append(job_ledger.c.agent == agent)
    measures = {**reports.ledger_measures(), **reports.ttft_measures()}
    stamp = func.date_trunc(bucket, func.timezone("UTC", job_ledger.c.created_at))
    totals_q = select(*[m.label(n) for n, m in measures.items()]).where(*where)
    series_q = select(stamp.label("bucket"), *[m.label(n) for n, m in measures.items()]) \
        .where(*where).group_by(stamp).order_by(stamp)
    with engine.connect() as connection:
        totals = connection.execute(totals_q).mappings().one()
        series = connection.execute(series_q).mappings().all()

    def figures(row: Any) -> dict[str, Any]:
        return with_rates({n: row[n] for n in measures})

    return {"time_range": time_range, "since": since.isoformat(), "bucket": bucket,
            "filters": {"model": model, "agent": agent}, "totals": figures(totals),
            "series": [{"bucket": r["bucket"].replace(tzinfo=dt.UTC).isoformat(),
                        **figures(r)} for r in series]}


def _projection(engine: Engine, now: dt.datetime) -> dict[str, Any]:
    """Month-to-date spend (UTC month) and its straight-line projection to month end."""
    start = start_of_day(now).replace(day=1)
    days = calendar.monthrange(start.year, start.month)[1]
    query = select(func.coalesce(func.sum(job_ledger.c.cost_usd), 0)) \
        .where(job_ledger.c.created_at >= start)
    with engine.connect() as connection:
        spent = float(connection.execute(query).scalar_one())
    elapsed = max((now - start).total_seconds() / 86400, 1 / 24)
    return {"month_start": start.isoformat(), "month_to_date_usd": spent,
            "days_in_month": days, "projected_month_usd": spent / elapsed * days}


def costs_page(engine: Engine, since: dt.datetime, *, retention_days: int | None,
               top: int = 5, now: dt.datetime | None = None) -> dict[str, Any]:
    """``reports.costs`` for every grouping, the top spending agents and users, and the
    month-end projection."""
    now = reports.utc_now(now)
    by = {g: reports.costs(engine, since, g, retention_days=retention_days, now=now)
          for g in reports.GROUPINGS}
    total = sum(r["cost_usd"] for r in by["day"])
    return {"since": since.isoformat(), "total_cost_usd": total, "by": by,
            "top_spenders": {"agents": by["agent"][:top], "users": by["user"][:top]},
            "projection": _projection(engine, now)}


def queue_depths(redis: Redis, fleet: FleetConfig) -> dict[str, int]:
    """Messages waiting in each tier's queue (LLEN of the Redis list Celery uses)."""
    pipe = redis.pipeline(transaction=False)
    queues = fleet_queues(fleet)
    for queue in queues:
        pipe.llen(queue)
    return {q: int(n) for q, n in zip(queues, pipe.execute(), strict=True)}


def workers_per_queue(control: Any, fleet: FleetConfig,
                      timeout: float = 1.0) -> tuple[list[str], dict[str, int]]:
    """(workers that answered, how many consume each tier's queue), by Celery inspect."""
    answers = control.control.inspect(timeout=timeout).active_queues() or {}
    counts = dict.fromkeys(fleet_queues(fleet), 0)
    for queues in answers.values():
        for queue in queues or []:
            name = queue.get("name") if isinstance(queue, dict) else None
            if name in counts:
                counts[name] += 1
    return sorted(answers), counts


def _when(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def operational_alerts_page(engine: Engine, limit: int = 20) -> dict[str, Any]:
    """Operational alerts (``workers.accounting.monitoring``): how many fire now, and
    the newest ``limit``, those firing first, then by when they last changed."""
    a = operational_alerts.c
    changed = func.coalesce(a.resolved_at, a.fired_at)
    query = select(operational_alerts).order_by(a.resolved_at.is_not(None), changed.desc(),
                                                a.id.desc()).limit(limit)
    count = select(func.count()).where(a.resolved_at.is_(None))
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
        firing = int(connection.execute(count).scalar_one())
    return {"firing": firing, "alerts": [{
        "id": r["id"], "kind": r["kind"], "scope": r["scope"], "target": r["target"],
        "state": "firing" if r["resolved_at"] is None else "resolved",
        "value": r["value"], "threshold": r["threshold"], "resolve_below": r["resolve_below"],
        "jobs": r["jobs"], "window_s": r["window_s"], "message": r["message"],
        "deliveries": dict(r["deliveries"] or {}), "fired_at": _when(r["fired_at"]),
        "resolved_at": _when(r["resolved_at"]), "resolved_value": r["resolved_value"],
        "resolve_message": r["resolve_message"],
        "resolve_deliveries": dict(r["resolve_deliveries"] or {})} for r in rows]}


def alert_states(connection: Connection) -> list[tuple[str, str, str, bool]]:
    """(kind, scope, target, firing now) of every alert that ever fired, for
    ``llmfleet_alert_firing``: a resolved alert stays a series, at 0."""
    a = operational_alerts.c
    query = select(a.kind, a.scope, a.target, func.bool_or(a.resolved_at.is_(None))) \
        .group_by(a.kind, a.scope, a.target).order_by(a.kind, a.scope, a.target)
    return [(str(k), str(s), str(t), bool(f)) for k, s, t, f in connection.execute(query)]
