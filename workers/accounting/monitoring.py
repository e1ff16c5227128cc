"""Operational alerts: beat judges every tier, model and agent over ``[monitoring]``'s
sliding window of the ledger (error rate, mean and p95 latency, cost per request) and
fires or resolves each alert once, through the channels budget alerts use.

What is judged: the ledger rows created in the window that finished, succeeded or
failed (rejected jobs were refused by policy before any provider, cancelled ones by
their agent: neither says anything about the fleet's health). Cache hits count, as the
answers agents got. A row belongs to its tier, its agent and the model that served it
last: with fallback on, a failing primary shows as fallbacks (``fallback_used``) and
its jobs under the model that answered, so a model's own error rate is judged on jobs
that could not fall back (``fallback=False``, or the chain's last model).

Hysteresis: an alert fires when its figure goes over its threshold and resolves when
the figure is back under ``hysteresis`` times the threshold; in between, and while a
target has fewer than ``min_jobs`` finished jobs in the window, it stays as it was. A
firing alert whose threshold is turned off resolves.

Once, whatever the number of beats: a row of ``operational_alerts`` is the alert's
state. Firing is an insert that a partial unique index (one firing row per kind, scope
and target) lets only one beat make; resolving is an update of the firing row that only
one beat finds still firing. Whoever wrote the row delivers the alert, after writing it:
a crash in between loses a delivery rather than repeating one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection, Engine, Float, cast, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert

from schemas import MonitoringConfig
from schemas.tables import job_ledger, operational_alerts
from workers.accounting.alerts import Alerter
from workers.accounting.reports import utc_now

__all__ = ["KINDS", "SCOPES", "Figures", "OperationalAlert", "evaluate_alerts", "judge",
           "window_figures"]

Kind = Literal["error_rate", "avg_latency_ms", "p95_latency_ms", "cost_per_request"]
Scope = Literal["tier", "model", "agent"]
#: The figures judged, each named as its threshold in ``[monitoring]``.
KINDS: tuple[Kind, ...] = ("error_rate", "avg_latency_ms", "p95_latency_ms",
                           "cost_per_request")
SCOPES: tuple[Scope, ...] = ("tier", "model", "agent")
#: GROUPING(tier, model, agent) of each grouping set: a bit is 1 where a column is not
#: grouped on.
_SCOPE_OF_GROUPING: dict[int, Scope] = {0b011: "tier", 0b101: "model", 0b110: "agent"}
_Key = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Figures:
    """One tier's, model's or agent's figures over the window."""

    scope: Scope
    target: str
    jobs: int
    error_rate: float
    avg_latency_ms: float
    p95_latency_ms: float
    cost_per_request: float

    def value(self, kind: Kind) -> float:
        return float(getattr(self, kind))


@dataclass(frozen=True, slots=True)
class OperationalAlert:
    """An alert firing or resolving: what channels send (``alerts.Notice``)."""

    kind: Kind
    scope: str
    target: str
    state: Literal["firing", "resolved"]
    #: The figure now; None when the alert resolves because its threshold is off.
    value: float | None
    threshold: float
    resolve_below: float
    jobs: int
    window_s: float

    @property
    def key(self) -> _Key:
        return self.kind, self.scope, self.target

    @property
    def subject(self) -> str:
        return f"{self.kind} of {self.scope} {self.target}: {self.state}"

    @property
    def message(self) -> str:
        what = f"{_LABELS[self.kind]} of {self.scope} {self.target!r}"
        window = f"over the last {_duration(self.window_s)}"
        if self.value is None:
            return f"{what} is no longer watched (its threshold is off): resolved."
        if self.state == "firing":
            return (f"{what} is {_shown(self.kind, self.value)} {window} ({self.jobs} "
                    f"finished jobs), over its threshold of "
                    f"{_shown(self.kind, self.threshold)}; it resolves under "
                    f"{_shown(self.kind, self.resolve_below)}.")
        return (f"{what} is back to {_shown(self.kind, self.value)} {window} ({self.jobs} "
                f"finished jobs), under {_shown(self.kind, self.resolve_below)} "
                f"(threshold {_shown(self.kind, self.threshold)}): resolved.")


_LABELS: dict[Kind, str] = {"error_rate": "Error rate", "avg_latency_ms": "Mean latency",
                            "p95_latency_ms": "p95 latency",
                            "cost_per_request": "Cost per request"}


def _shown(kind: Kind, value: float) -> str:
    if kind == "error_rate":
        return f"{value:.1%}"
    if kind == "cost_per_request":
        return f"${value:.4f}"
    return f"{value:,.0f} ms"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def window_figures(connection: Connection, since: dt.datetime,
                   until: dt.datetime) -> list[Figures]:
    """Each tier's, model's and agent's figures over the ledger rows created in
    (``since``, ``until``] that finished: one scan, three grouping sets."""
    c = job_ledger.c
    jobs = func.count()
    query = select(
        func.grouping(c.tier, c.model, c.agent).label("grouping"), c.tier, c.model, c.agent,
        jobs.label("jobs"), jobs.filter(c.status == "failed").label("failed"),
        func.avg(c.latency_ms).label("avg_latency_ms"),
        func.percentile_cont(0.95).within_group(c.latency_ms).label("p95_latency_ms"),
        cast(func.sum(c.cost_usd), Float).label("cost_usd"),
    ).where(c.created_at > since, c.created_at <= until,
            c.status.in_(("succeeded", "failed"))) \
        .group_by(func.grouping_sets(tuple_(c.tier), tuple_(c.model), tuple_(c.agent)))
    out = []
    for row in connection.execute(query).mappings():
        scope = _SCOPE_OF_GROUPING[int(row["grouping"])]
        target, n = row[scope], int(row["jobs"])
        if target is None or not n:
            continue  # rows that never reached a model, say: no model to judge
        out.append(Figures(scope=scope, target=str(target), jobs=n,
                           error_rate=int(row["failed"]) / n,
                           avg_latency_ms=float(row["avg_latency_ms"]),
                           p95_latency_ms=float(row["p95_latency_ms"]),
                           cost_per_request=float(row["cost_usd"] or 0) / n))
    return out


def judge(figures: Iterable[Figures], firing: set[_Key], monitoring: MonitoringConfig
          ) -> tuple[list[OperationalAlert], list[OperationalAlert]]:
    """(alerts to fire, alerts to resolve): pure, from the window's figures and the
    alerts firing now."""
    fire: list[OperationalAlert] = []
    resolve: list[OperationalAlert] = []
    window, judged = monitoring.window_s, [f for f in figures if f.jobs >= monitoring.min_jobs]
    for kind in KINDS:
        threshold: float | None = getattr(monitoring, kind)
        if threshold is None:  # turned off: whatever still fires of it resolves
            resolve += [OperationalAlert(kind, scope, target, "resolved", None, 0.0, 0.0, 0,
                                         window)
                        for k, scope, target in sorted(firing) if k == kind]
            continue
        below = threshold * monitoring.hysteresis
        for f in judged:
            value, on = f.value(kind), (kind, f.scope, f.target) in firing
            if not on and value > threshold:
                fire.append(OperationalAlert(kind, f.scope, f.target, "firing", value,
                                             threshold, below, f.jobs, window))
            elif on and value < below:
                resolve.append(OperationalAlert(kind, f.scope, f.target, "resolved", value,
                                                threshold, below, f.jobs, window))
    return fire, resolve


def _firing(connection: Connection) -> set[_Key]:
    a = operational_alerts.c
    rows = connection.execute(select(a.kind, a.scope, a.target)
                              .where(a.resolved_at.is_(None)))
    return {(str(k), str(s), str(t)) for k, s, t in rows}


def _fire_once(engine: Engine, alerter: Alerter, alert: OperationalAlert,
               now: dt.datetime) -> dict[str, Any] | None:
    """Insert the firing row, then deliver only if this call inserted it."""
    a = operational_alerts.c
    record = insert(operational_alerts).values(
        kind=alert.kind, scope=alert.scope, target=alert.target, threshold=alert.threshold,
        resolve_below=alert.resolve_below, value=alert.value, jobs=alert.jobs,
        window_s=alert.window_s, message=alert.message, deliveries={}, fired_at=now) \
        .on_conflict_do_nothing(index_elements=[a.kind, a.scope, a.target],
                                index_where=a.resolved_at.is_(None)).returning(a.id)
    with engine.begin() as connection:
        alert_id = connection.execute(record).scalar_one_or_none()
    if alert_id is None:
        return None
    deliveries = alerter.deliver(alert)
    with engine.begin() as connection:
        connection.execute(update(operational_alerts).where(a.id == alert_id)
                           .values(deliveries=deliveries))
    return {"kind": alert.kind, "scope": alert.scope, "target": alert.target,
            "value": alert.value, "deliveries": deliveries}


def _resolve_once(engine: Engine, alerter: Alerter, alert: OperationalAlert,
                  now: dt.datetime) -> dict[str, Any] | None:
    """Mark the firing row resolved, then deliver only if this call marked it (a beat
    racing it waits for its row lock, then finds the row resolved)."""
    a = operational_alerts.c
    mark = update(operational_alerts).where(
        a.kind == alert.kind, a.scope == alert.scope, a.target == alert.target,
        a.resolved_at.is_(None)).values(
        resolved_at=now, resolved_value=alert.value,
        resolved_jobs=None if alert.value is None else alert.jobs,
        resolve_message=alert.message, resolve_deliveries={}).returning(a.id)
    with engine.begin() as connection:
        alert_id = connection.execute(mark).scalar_one_or_none()
    if alert_id is None:
        return None
    deliveries = alerter.deliver(alert)
    with engine.begin() as connection:
        connection.execute(update(operational_alerts).where(a.id == alert_id)
                           .values(resolve_deliveries=deliveries))
    return {"kind": alert.kind, "scope": alert.scope, "target": alert.target,
            "value": alert.value, "deliveries": deliveries}


def evaluate_alerts(engine: Engine, monitoring: MonitoringConfig, alerter: Alerter,
                    now: dt.datetime | None = None) -> dict[str, Any]:
    """Judge the window ending at ``now`` and fire or resolve what it calls for, each
    alert once however many beats run this at once. Idempotent."""
    now = utc_now(now)
    since = now - dt.timedelta(seconds=monitoring.window_s)
    with engine.connect() as connection:
        figures = window_figures(connection, since, now)
        firing = _firing(connection)
    fire, resolve = judge(figures, firing, monitoring)
    fired = [s for s in (_fire_once(engine, alerter, x, now) for x in fire) if s]
    resolved = [s for s in (_resolve_once(engine, alerter, x, now) for x in resolve) if s]
    return {"judged": sum(f.jobs >= monitoring.min_jobs for f in figures),
            "fired": fired, "resolved": resolved,
            "firing": len(firing) + len(fired) - len(resolved),
            "since": since.isoformat(), "at": now.isoformat()}
