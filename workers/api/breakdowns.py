"""The dashboard's figures that the other admin pages lack: spend per time bucket and
model, the top agents and users, both over a range and filters as ``/metrics`` takes
them; recent budget alerts; and the names the dashboard's filters offer. Each figure is
set-based SQL over the ledger or the alert table. Sync: routes run these in a thread.

Like ``queries.metrics_page``, the ranges read the ledger only: the longest (30 days)
is the default retention, and roll-ups know no users.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.sql.elements import ColumnElement

from schemas import FleetConfig
from schemas.tables import budget_alerts, job_ledger
from workers.accounting import reports
from workers.api.queries import TIME_RANGES
from workers.store.figures import money

__all__ = ["filter_options", "recent_alerts", "spend_page"]

_L = job_ledger.c


def _where(since: dt.datetime, model: str | None,
           agent: str | None) -> list[ColumnElement[bool]]:
    where = [_L.created_at >= since]
    if model:
        where.append(_L.model == model)
    if agent:
        where.append(_L.agent == agent)
    return where


def _top(engine: Engine, column: ColumnElement[Any], name: str,
         where: list[ColumnElement[bool]], top: int) -> dict[str, Any]:
    """The ``top`` dearest groups, and what the rest add up to (so a chart of the top
    groups can still say how much it leaves out)."""
    key = func.coalesce(column, "")
    rows_q = select(key.label("key"), func.count().label("jobs"),
                    func.coalesce(func.sum(_L.cost_usd), 0).label("cost_usd"),
                    func.coalesce(func.sum(_L.cost_saved_usd), 0).label("cost_saved_usd")) \
        .where(*where).group_by(key).order_by(func.sum(_L.cost_usd).desc(), key).limit(top)
    all_q = select(func.count(func.distinct(key)), func.count(),
                   func.coalesce(func.sum(_L.cost_usd), 0)).where(*where)
    with engine.connect() as connection:
        rows = connection.execute(rows_q).mappings().all()
        groups, jobs, cost = connection.execute(all_q).one()
    shown = [{name: r["key"], "jobs": int(r["jobs"]), "cost_usd": money(r["cost_usd"]),
              "cost_saved_usd": money(r["cost_saved_usd"])} for r in rows]
    return {"rows": shown, "others": {
        "groups": int(groups) - len(shown), "jobs": int(jobs) - sum(r["jobs"] for r in shown),
        "cost_usd": max(0.0, money(cost) - sum(r["cost_usd"] for r in shown))}}


def spend_page(engine: Engine, time_range: str, *, model: str | None = None,
               agent: str | None = None, top: int = 8,
               now: dt.datetime | None = None) -> dict[str, Any]:
    """Spend per bucket of ``time_range`` (minute, hour or day, as ``/metrics``) and
    model, and the ``top`` agents and users by spend, optionally for one model or agent."""
    span, bucket = TIME_RANGES[time_range]
    now = reports.utc_now(now)
    since = now - span
    where = _where(since, model, agent)
    stamp = func.date_trunc(bucket, func.timezone("UTC", _L.created_at))
    model_key = func.coalesce(_L.model, "")
    series_q = select(stamp.label("bucket"), model_key.label("model"),
                      func.count().label("jobs"),
                      func.coalesce(func.sum(_L.cost_usd), 0).label("cost_usd")) \
        .where(*where).group_by(stamp, model_key).order_by(stamp, model_key)
    with engine.connect() as connection:
        series = connection.execute(series_q).mappings().all()
    per_model: dict[str, float] = {}
    for row in series:
        per_model[row["model"]] = per_model.get(row["model"], 0.0) + money(row["cost_usd"])
    return {
        "time_range": time_range, "since": since.isoformat(), "bucket": bucket,
        "filters": {"model": model, "agent": agent},
        "total_cost_usd": sum(per_model.values()),
        "models": sorted(per_model, key=lambda m: (-per_model[m], m)),
        "by_bucket_model": [{"bucket": r["bucket"].replace(tzinfo=dt.UTC).isoformat(),
                             "model": r["model"], "jobs": int(r["jobs"]),
                             "cost_usd": money(r["cost_usd"])} for r in series],
        "agents": _top(engine, _L.agent, "agent", where, top),
        "users": _top(engine, _L.user_id, "user", where, top),
    }


def recent_alerts(engine: Engine, limit: int = 20) -> list[dict[str, Any]]:
    """The newest budget alerts (``workers.accounting.periodic`` records each one once), with
    what each channel made of it."""
    a = budget_alerts.c
    query = select(a.budget, a.level, a.period_start, a.spent_usd, a.limit_usd, a.message,
                   a.deliveries, a.created_at).order_by(a.created_at.desc(), a.id.desc()) \
        .limit(limit)
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return [{"budget": r["budget"], "level": r["level"],
             "period_start": r["period_start"].isoformat(),
             "spent_usd": money(r["spent_usd"]), "limit_usd": money(r["limit_usd"]),
             "message": r["message"], "deliveries": dict(r["deliveries"] or {}),
             "created_at": r["created_at"].isoformat()} for r in rows]


def filter_options(engine: Engine, fleet: FleetConfig, days: int = 30,
                   now: dt.datetime | None = None) -> dict[str, Any]:
    """What the filters offer: agents seen in the last ``days``, the fleet file's models
    and any other model the ledger names then; and each provider's models."""
    since = reports.utc_now(now) - dt.timedelta(days=days)
    agents_q = select(_L.agent).where(_L.created_at >= since).group_by(_L.agent) \
        .order_by(_L.agent)
    models_q = select(_L.model).where(_L.created_at >= since, _L.model.is_not(None)) \
        .group_by(_L.model)
    with engine.connect() as connection:
        agents = [str(a) for a in connection.execute(agents_q).scalars()]
        seen = {str(m) for m in connection.execute(models_q).scalars()}
    providers = {name: sorted(m for m, spec in fleet.models.items() if spec.provider == name)
                 for name in fleet.providers}
    return {"agents": agents, "models": sorted(set(fleet.models) | seen),
            "providers": [{"name": n, "models": ms} for n, ms in sorted(providers.items())],
            "tiers": {t: list(spec.models) for t, spec in fleet.tiers.items()}}
