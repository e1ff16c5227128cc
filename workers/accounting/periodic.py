"""The bodies of beat's periodic tasks, as plain functions of their dependencies.

Each returns a small JSON-able summary (Celery keeps it as the task's result). All the
arithmetic is set-based SQL over ``job_ledger``, the source of truth; Python only
decides what to write back and whom to tell.

Budgets: the Redis fast counters drift (a lost settle, a Redis restart), so every beat
recomputes each budget's spend from the ledger plus the rows still waiting in the
spool, and overwrites ``spent`` when it differs. The overwrite is a compare-and-set
against the value read before the ledger was, so a job settled meanwhile is never
erased; a counter that moved is simply checked again next beat.
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal
from typing import Any, Literal

from pydantic import ValidationError
from redis import Redis
from sqlalchemy import Connection, Engine, String, func, literal, literal_column, select, update
from sqlalchemy.dialects.postgresql import Insert, insert

from schemas import BudgetConfig, FleetConfig, LedgerRow
from schemas.keys import LEDGER_SPOOL
from schemas.tables import budget_alerts, job_ledger, metrics_rollup, rollup_watermark
from tasks._redis import as_text
from workers.accounting.alerts import Alert, Alerter
from workers.accounting.budgets import (
    NANO,
    BudgetState,
    Period,
    budget_key,
    budget_state,
    period_of,
)
from workers.accounting.reports import budget_spend, ledger_measures, utc_now
from workers.store import audit

__all__ = ["enforce_budgets", "purge_expired", "rollup_metrics"]

log = logging.getLogger(__name__)

#: Spooled rows read per beat; past this backlog, repairs wait for the flusher.
SPOOL_SCAN = 10_000
#: A repaired counter lives as long as a reservation would keep it (a day past its end).
_KEY_GRACE_S = 86_400
_PENDING_FIELDS = {"job_id", "agent", "user_id", "tier", "model", "cost_usd", "created_at"}

# KEYS: the budget hash. ARGV: `spent` as read before the ledger was, the ledger's
# figure, the key's expiry (epoch). 1 when written, 0 when `spent` moved meanwhile.
_REPAIR = """
local current = redis.call('HGET', KEYS[1], 'spent') or '0'
if current ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'spent', ARGV[2])
redis.call('EXPIREAT', KEYS[1], ARGV[3])
return 1
"""

Level = Literal["threshold", "exceeded"]
#: The alert a budget's state calls for ("ok" calls for none).
_LEVELS: dict[BudgetState, Level] = {"alert": "threshold", "exceeded": "exceeded"}


def _pending(raws: list[Any]) -> list[dict[str, Any]]:
    """The spooled rows' budget columns (malformed rows skipped, as the flusher does)."""
    rows = []
    for raw in raws:
        try:
            row = LedgerRow.model_validate_json(raw)
        except ValidationError:
            continue
        rows.append(row.model_dump(mode="json", include=_PENDING_FIELDS))
    return rows


def _snapshot(client: Redis, keys: list[str]) -> tuple[list[str], list[Any], bool]:
    """Atomically: each counter's ``spent``, the spooled rows, and whether the spool
    holds more than one beat reads."""
    pipe = client.pipeline(transaction=True)
    for key in keys:
        pipe.hget(key, "spent")
    pipe.lrange(LEDGER_SPOOL, 0, SPOOL_SCAN - 1)
    pipe.llen(LEDGER_SPOOL)
    *counters, raws, backlog = pipe.execute()
    return ["0" if c is None else as_text(c) for c in counters], raws, backlog > SPOOL_SCAN


def _nano(counter: str) -> int | None:
    """A counter's value; None for garbage, which any ledger figure then replaces."""
    return int(counter) if counter.lstrip("-").isdigit() else None


def _message(budget: BudgetConfig, period: Period, level: Level, spent: Decimal) -> str:
    what = "is exceeded" if level == "exceeded" else \
        f"passed its alert threshold of {budget.alert_threshold:.0%}"
    return (f"Budget {budget.name!r} ({budget.period}, {budget.scope}, period from "
            f"{period.start.isoformat()}) {what}: ${float(spent):.2f} of "
            f"${budget.limit_usd:.2f} spent ({float(spent) / budget.limit_usd:.0%}).")


def _alert_once(engine: Engine, alerter: Alerter, budget: BudgetConfig, period: Period,
                level: Level, spent: Decimal, now: dt.datetime) -> dict[str, Any] | None:
    """Record the alert, then deliver it only if this call recorded it: of any number of
    racing beats, exactly one wins the insert. A crash between the two loses the
    delivery rather than repeating it."""
    alert = Alert(budget=budget.name, period_start=period.start, level=level,
                  spent_usd=float(spent), limit_usd=budget.limit_usd,
                  message=_message(budget, period, level, spent))
    record = insert(budget_alerts).values(
        budget=alert.budget, period_start=alert.period_start, level=level, spent_usd=spent,
        limit_usd=Decimal(str(budget.limit_usd)), message=alert.message, deliveries={},
        created_at=now).on_conflict_do_nothing(constraint="uq_budget_alerts_once") \
        .returning(budget_alerts.c.id)
    with engine.begin() as connection:
        alert_id = connection.execute(record).scalar_one_or_none()
    if alert_id is None:
        return None
    deliveries = alerter.deliver(alert)
    with engine.begin() as connection:
        connection.execute(update(budget_alerts).where(budget_alerts.c.id == alert_id)
                           .values(deliveries=deliveries))
    return {"budget": budget.name, "level": level, "deliveries": deliveries}


def enforce_budgets(engine: Engine, redis: Redis, fleet: FleetConfig,
                    alerter: Alerter, now: dt.datetime | None = None) -> dict[str, Any]:
    """Repair each budget's fast counter from the ledger and alert, once per budget,
    period and level, at its threshold and when it is exceeded."""
    now = utc_now(now)
    periods = [(b, period_of(b, now, fleet.budget_timezone)) for b in fleet.budgets]
    keys = [budget_key(b, p) for b, p in periods]
    counters, raws, backlog = _snapshot(redis, keys) if periods else ([], [], False)
    with engine.connect() as connection:
        spends = budget_spend(connection, periods, _pending(raws))
    repair = redis.register_script(_REPAIR)
    repaired: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    for (budget, period), key, counter, spent in zip(periods, keys, counters, spends,
                                                     strict=True):
        nano, was = int(spent.scaleb(9).to_integral_value()), _nano(counter)
        if nano != was and not backlog and repair(
                keys=[key], args=[counter, nano, int(period.end.timestamp()) + _KEY_GRACE_S]):
            log.info("budget %s: fast counter repaired from %r to %d nano-USD", budget.name,
                     counter, nano)
            repaired.append({"budget": budget.name,
                             "was_usd": None if was is None else was / NANO,
                             "now_usd": nano / NANO})
        state = budget_state(budget, nano / NANO)
        level = _LEVELS.get(state)
        if level is not None:
            sent = _alert_once(engine, alerter, budget, period, level, spent, now)
            if sent is not None:
                alerts.append(sent)
    return {"budgets": len(periods), "repaired": repaired, "alerts": alerts,
            "spool_backlog": backlog, "at": now.isoformat()}


# -- roll-ups --------------------------------------------------------------------

def _floor(now: dt.datetime, granularity: str) -> dt.datetime:
    utc = now.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    return utc if granularity == "hour" else utc.replace(hour=0)


def _rollup(granularity: Literal["hour", "day"], now: dt.datetime,
            late: dt.datetime | None = None, not_before: dt.datetime | None = None) -> Insert:
    """One INSERT ... SELECT ... ON CONFLICT DO UPDATE for one granularity: every bucket
    from the previous one (or the last rolled up, if beat missed some; or the oldest
    bucket a late row fell in) to the current. Whole buckets only: a bucket recomputed
    from part of its rows would lose the rest."""
    step = dt.timedelta(hours=1) if granularity == "hour" else dt.timedelta(days=1)
    current = _floor(now, granularity)
    r, c = metrics_rollup.c, job_ledger.c
    last = select(func.max(r.bucket_start)).where(r.granularity == granularity) \
        .scalar_subquery()
    earliest = current - step if late is None else min(current - step, _floor(late, granularity))
    since = func.least(earliest,
                       func.coalesce(last, literal_column("'-infinity'::timestamptz")))
    if not_before is not None:
        since = func.greatest(since, not_before)
    utc_wall = func.timezone(literal_column("'UTC'"), c.created_at)
    bucket = func.timezone(literal_column("'UTC'"),
                           func.date_trunc(literal_column(f"'{granularity}'"), utc_wall))
    keyed = select(bucket.label("bucket_start"), func.coalesce(c.model, "").label("model"),
                   c.agent, func.coalesce(c.tier, "").label("tier"), c.status, c.cache_hit,
                   c.prompt_tokens, c.completion_tokens, c.cost_usd, c.cost_saved_usd,
                   c.latency_ms) \
        .where(c.created_at >= since, c.created_at < current + step).subquery("keyed")
    measures = ledger_measures(keyed)
    rows = select(literal(granularity, String).label("granularity"), keyed.c.bucket_start,
                  keyed.c.model, keyed.c.agent, keyed.c.tier,
                  *[m.label(n) for n, m in measures.items()]) \
        .group_by(keyed.c.bucket_start, keyed.c.model, keyed.c.agent, keyed.c.tier)
    statement = insert(metrics_rollup).from_select(
        ["granularity", "bucket_start", "model", "agent", "tier", *measures], rows)
    return statement.on_conflict_do_update(
        constraint="uq_metrics_rollup_bucket",
        set_={n: statement.excluded[n] for n in measures})


_WATERMARK = "job_ledger"


def _late_rows_since(connection: Connection) -> tuple[dt.datetime | None, int | None]:
    """The oldest ``created_at`` among ledger rows written since the last roll-up (None
    on the first roll-up, which sets the watermark), and the watermark to record. The
    watermark row is locked: two roll-ups at once take turns."""
    w = rollup_watermark.c
    seen = connection.execute(select(w.ledger_id).where(w.name == _WATERMARK)
                              .with_for_update()).scalar()
    top = connection.execute(select(func.max(job_ledger.c.id))).scalar()
    if seen is None:
        return None, top
    late = connection.execute(select(func.min(job_ledger.c.created_at))
                              .where(job_ledger.c.id > seen)).scalar()
    return late, top


def rollup_metrics(engine: Engine, now: dt.datetime | None = None,
                   retention_days: int = 0) -> dict[str, Any]:
    """Recompute the hourly and daily roll-ups (UTC) of the current and previous
    buckets, of any missed since the last roll-up, and of any that rows written since
    then fell in (a Postgres outage delivers old rows late); never a bucket that
    ``purge_expired`` may have emptied in part (older than ``retention_days``, 0 for no
    limit). Idempotent: run it as often as you like."""
    now = utc_now(now)
    not_before = None if retention_days <= 0 else \
        _floor(now - dt.timedelta(days=retention_days), "day") + dt.timedelta(days=1)
    written: dict[str, int] = {}
    with engine.begin() as connection:
        late, top = _late_rows_since(connection)
        for granularity in ("hour", "day"):
            statement = _rollup(granularity, now, late, not_before) \
                .execution_options(preserve_rowcount=True)
            written[granularity] = connection.execute(statement).rowcount
        if top is not None:
            mark = insert(rollup_watermark).values(name=_WATERMARK, ledger_id=top)
            connection.execute(mark.on_conflict_do_update(
                index_elements=["name"],
                set_={"ledger_id": func.greatest(rollup_watermark.c.ledger_id,
                                                 mark.excluded.ledger_id)}))
    return {"hour_rows": written["hour"], "day_rows": written["day"],
            "hour": _floor(now, "hour").isoformat(), "day": _floor(now, "day").isoformat(),
            "late_since": None if late is None else late.isoformat()}


def purge_expired(engine: Engine, retention_days: int, now: dt.datetime | None = None,
                  audit_retention_days: int = 90) -> dict[str, Any]:
    """Delete ledger rows older than ``retention_days`` (0 keeps them forever); the
    roll-ups stay. Roll up first, so the rows' last buckets are complete. Then the audit
    log's rows older than ``audit_retention_days`` (AUDIT_RETENTION_DAYS, 90 unless
    set; 0 keeps them), through the one DELETE its trigger lets through
    (``workers.store.audit.purge``)."""
    now = utc_now(now)
    summary: dict[str, Any] = {"deleted": 0, "before": None}
    if retention_days > 0:
        before = now - dt.timedelta(days=retention_days)
        with engine.begin() as connection:
            deleted = connection.execute(
                job_ledger.delete().where(job_ledger.c.created_at < before)).rowcount
        summary = {"deleted": deleted, "before": before.isoformat()}
    if audit_retention_days > 0:
        audit_before = now - dt.timedelta(days=audit_retention_days)
        summary["audit_deleted"] = audit.purge(engine, audit_before)
        summary["audit_before"] = audit_before.isoformat()
    return summary
