"""Reports over the ledger, as plain JSON-able dicts for the CLI and the HTTP API.

The ledger is the source of truth; each figure is one set-based statement. Daily
roll-ups stand in only where the ledger no longer reaches: ``costs`` over a window
longer than the ledger's retention reads the purged days from ``metrics_rollup``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal

from redis import Redis
from sqlalchemy import (
    Connection,
    DateTime,
    Engine,
    Numeric,
    String,
    bindparam,
    column,
    exists,
    false,
    func,
    select,
    true,
    union_all,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import NamedFromClause, Select

from schemas import BudgetConfig, FleetConfig
from schemas.tables import job_ledger, metrics_rollup
from workers.accounting.budgets import (
    NANO,
    Period,
    budget_key,
    budget_state,
    counter_figures,
    period_of,
)
from workers.store.figures import plain, rate, with_rates

__all__ = ["GROUPINGS", "Grouping", "agent_stats", "budget_spend",
           "budgets_state", "costs", "ledger_measures", "stats", "ttft_measures", "utc_now"]

Grouping = Literal["day", "agent", "model", "tier", "user"]
#: The ways ``costs`` can group, in the order the CLI offers them.
GROUPINGS: tuple[Grouping, ...] = ("day", "agent", "model", "tier", "user")
_DAY = "YYYY-MM-DD"


def utc_now(now: dt.datetime | None = None) -> dt.datetime:
    """``now``, or the present; a naive time is taken as UTC, never as local time."""
    if now is None:
        return dt.datetime.now(dt.UTC)
    return now if now.tzinfo is not None else now.replace(tzinfo=dt.UTC)


def ledger_measures(rows: NamedFromClause = job_ledger) -> dict[str, ColumnElement[Any]]:
    """The aggregates every report and roll-up shares, over ledger-shaped ``rows``.
    Latency percentiles leave rejected jobs out: they never waited for a provider."""
    c = rows.c
    waited = c.status != "rejected"
    return {
        "jobs": func.count(),
        "errors": func.count().filter(c.status != "succeeded"),
        "cache_hits": func.count().filter(c.cache_hit),
        "prompt_tokens": func.coalesce(func.sum(c.prompt_tokens), 0),
        "completion_tokens": func.coalesce(func.sum(c.completion_tokens), 0),
        "cost_usd": func.coalesce(func.sum(c.cost_usd), 0),
        "cost_saved_usd": func.coalesce(func.sum(c.cost_saved_usd), 0),
        **{f"latency_p{p}_ms": func.percentile_cont(p / 100).within_group(c.latency_ms)
           .filter(waited) for p in (50, 95, 99)},
    }


def ttft_measures(rows: NamedFromClause = job_ledger) -> dict[str, ColumnElement[Any]]:
    """Time-to-first-token percentiles of the streamed jobs among ``rows`` (None when
    none was streamed); apart from ``ledger_measures``, which roll-ups store whole."""
    c = rows.c
    return {f"ttft_p{p}_ms": func.percentile_cont(p / 100).within_group(c.ttft_ms)
            .filter(c.ttft_ms.is_not(None)) for p in (50, 95)}


# -- budgets -----------------------------------------------------------------------

def _scope_filter(scope: str, rows: NamedFromClause) -> ColumnElement[bool]:
    """The ledger's reading of a budget scope: a model budget counts the answering model."""
    if scope == "global":
        return true()
    kind, _, name = scope.partition(":")
    columns = {"agent": rows.c.agent, "user": rows.c.user_id, "tier": rows.c.tier,
               "model": rows.c.model}
    return columns[kind] == name if kind in columns else false()


_SPEND_COLUMNS = ("job_id", "agent", "user_id", "tier", "model", "cost_usd", "created_at")


def _spend_rows(lo: dt.datetime, hi: dt.datetime,
                pending: Sequence[Mapping[str, Any]]) -> NamedFromClause:
    """Ledger rows in [lo, hi), plus spooled rows not yet in the ledger."""
    ledger = select(*[job_ledger.c[n] for n in _SPEND_COLUMNS]).where(
        job_ledger.c.created_at >= lo, job_ledger.c.created_at < hi)
    if not pending:
        return ledger.subquery("spend_rows")
    spooled = func.jsonb_to_recordset(bindparam("pending", list(pending), type_=JSONB)) \
        .table_valued(column("job_id", String), column("agent", String),
                      column("user_id", String), column("tier", String),
                      column("model", String), column("cost_usd", Numeric(20, 9)),
                      column("created_at", DateTime(timezone=True))) \
        .render_derived("spooled", with_types=True)
    unflushed = select(*[spooled.c[n] for n in _SPEND_COLUMNS]).where(
        spooled.c.created_at >= lo, spooled.c.created_at < hi,
        ~exists().where(job_ledger.c.job_id == spooled.c.job_id))
    return union_all(ledger, unflushed).subquery("spend_rows")


def budget_spend(connection: Connection, budgets: Sequence[tuple[BudgetConfig, Period]],
                 pending: Sequence[Mapping[str, Any]] = ()) -> list[Decimal]:
    """Each budget's spend over its period and scope, in one statement (a FILTERed sum
    per budget). ``pending``: spooled ledger rows, counted unless already flushed."""
    if not budgets:
        return []
    lo = min(p.start for _, p in budgets)
    hi = max(p.end for _, p in budgets)
    rows = _spend_rows(lo, hi, pending)
    sums = [func.coalesce(func.sum(rows.c.cost_usd).filter(
        rows.c.created_at >= p.start, rows.c.created_at < p.end,
        _scope_filter(b.scope, rows)), 0) for b, p in budgets]
    figures = connection.execute(select(*sums)).one()
    return [Decimal(v) for v in figures]


def budgets_state(engine: Engine, redis: Redis, fleet: FleetConfig,
                  now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Every budget of the fleet file in its current period: spend from the ledger,
    live reservations from the Redis fast counter."""
    now = utc_now(now)
    periods = [(b, period_of(b, now, fleet.budget_timezone)) for b in fleet.budgets]
    with engine.connect() as connection:
        spends = budget_spend(connection, periods)
    states = []
    for (budget, period), spent in zip(periods, spends, strict=True):
        _, held = counter_figures(redis.hgetall(budget_key(budget, period)), now.timestamp())
        reserved = held / NANO
        states.append({
            "name": budget.name, "period": budget.period, "scope": budget.scope,
            "period_start": period.start.isoformat(), "period_end": period.end.isoformat(),
            "spent_usd": float(spent), "reserved_usd": reserved,
            "limit_usd": budget.limit_usd, "share": float(spent) / budget.limit_usd,
            "alert_threshold": budget.alert_threshold, "action": budget.action,
            "state": budget_state(budget, float(spent))})
    return states


# -- costs and stats ---------------------------------------------------------------

def _cost_part(rows: NamedFromClause, key: ColumnElement[Any], *where: ColumnElement[bool],
               rolled: bool = False) -> Select[Any]:
    """Per group: jobs, money, tokens, cache hits, from the ledger or from roll-ups."""
    c = rows.c
    names = ("cost_usd", "prompt_tokens", "completion_tokens", "cost_saved_usd")
    if rolled:
        figures = [func.sum(c.jobs).label("jobs"), func.sum(c.cache_hits).label("cache_hits"),
                   *[func.sum(c[n]).label(n) for n in names]]
    else:
        measures = ledger_measures(rows)
        figures = [measures[n].label(n) for n in ("jobs", "cache_hits", *names)]
    return select(key.label("key"), *figures).where(*where).group_by(key)


def _key(rows: NamedFromClause, by: Grouping, stamp: str) -> ColumnElement[Any]:
    if by == "day":
        return func.to_char(func.timezone("UTC", rows.c[stamp]), _DAY)
    name = {"agent": "agent", "model": "model", "tier": "tier", "user": "user_id"}[by]
    return func.coalesce(rows.c[name], "")


def costs(engine: Engine, since: dt.datetime, by: Grouping = "day", *,
          retention_days: int | None = None,
          now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Jobs, cost, tokens, cache hits and savings per group since ``since``: days in
    order, other groups dearest first. With ``retention_days``, whole days the ledger
    may have purged come from the daily roll-ups (which know no users)."""
    if by not in GROUPINGS:
        raise ValueError(f"by must be one of {GROUPINGS}, not {by!r}")
    now = utc_now(now)
    horizon = since
    if retention_days and by != "user":
        oldest = (now - dt.timedelta(days=retention_days)).astimezone(dt.UTC)
        horizon = max(since, oldest.replace(hour=0, minute=0, second=0, microsecond=0)
                      + dt.timedelta(days=1))
    parts = [_cost_part(job_ledger, _key(job_ledger, by, "created_at"),
                        job_ledger.c.created_at >= horizon)]
    if horizon > since:
        r = metrics_rollup
        parts.append(_cost_part(r, _key(r, by, "bucket_start"), r.c.granularity == "day",
                                r.c.bucket_start >= since, r.c.bucket_start < horizon,
                                rolled=True))
    both = union_all(*parts).subquery("parts")
    figures = ["jobs", "cost_usd", "prompt_tokens", "completion_tokens", "cache_hits",
               "cost_saved_usd"]
    order = [both.c.key] if by == "day" else [func.sum(both.c.cost_usd).desc(), both.c.key]
    query = select(both.c.key, *[func.sum(both.c[f]).label(f) for f in figures]) \
        .group_by(both.c.key).order_by(*order)
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    counts = ("jobs", "prompt_tokens", "completion_tokens", "cache_hits")
    return [{by: row["key"],
             **{f: int(row[f]) if f in counts else plain(row[f]) for f in figures},
             "tokens": int(row["prompt_tokens"]) + int(row["completion_tokens"])}
            for row in rows]


def _summary(row: Mapping[Any, Any]) -> dict[str, Any]:
    return with_rates({k: v for k, v in row.items() if k not in ("tier", "is_total")})


def stats(engine: Engine, since: dt.datetime) -> dict[str, Any]:
    """Fleet-wide figures since ``since``, with the same figures per tier (rejected
    jobs that never got a tier under "")."""
    rows = select(*[c for c in job_ledger.c if c.name != "tier"],
                  func.coalesce(job_ledger.c.tier, "").label("tier")) \
        .where(job_ledger.c.created_at >= since).subquery("recent")
    measures = {**ledger_measures(rows), **ttft_measures(rows)}
    grouped = select(func.grouping(rows.c.tier).label("is_total"), rows.c.tier,
                     *[m.label(n) for n, m in measures.items()]) \
        .group_by(func.rollup(rows.c.tier)).order_by(rows.c.tier)
    by_status = select(rows.c.status, func.count().label("jobs")).group_by(rows.c.status)
    with engine.connect() as connection:
        results = connection.execute(grouped).mappings().all()
        statuses = {str(k): int(v) for k, v in connection.execute(by_status).all()}
    # ROLLUP's empty grouping set yields the total row even when no job matched.
    summary = _summary(next(r for r in results if r["is_total"]))
    summary["since"] = since.isoformat()
    summary["by_status"] = dict(sorted(statuses.items()))
    summary["per_tier"] = [{"tier": r["tier"], **_summary(r)}
                           for r in results if not r["is_total"]]
    return summary


def agent_stats(engine: Engine, agent: str,
                since: dt.datetime | None = None) -> dict[str, Any]:
    """One agent's jobs, cost, tokens, cache hits, what the cache saved (dollars and
    tokens) and errors (all time by default)."""
    c = job_ledger.c
    measures = {**ledger_measures(), "tokens_saved": func.coalesce(
        func.sum(c.prompt_tokens + c.completion_tokens).filter(c.cache_hit), 0)}
    names = ("jobs", "cost_usd", "cache_hits", "cost_saved_usd", "tokens_saved",
             "prompt_tokens", "completion_tokens", "errors")
    query = select(*[measures[n].label(n) for n in names]).where(c.agent == agent)
    if since is not None:
        query = query.where(job_ledger.c.created_at >= since)
    with engine.connect() as connection:
        row = connection.execute(query).mappings().one()
    out = {n: plain(row[n]) for n in names}
    out["total_cost_usd"] = out.pop("cost_usd")
    out["cache_hit_rate"] = rate(int(row["cache_hits"]), int(row["jobs"]))
    out["agent"] = agent
    return out
