"""Beat's periodic bodies and the agents' ledger figures, on the admin queue."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from schemas.keys import BEAT_LAST_RUN
from tasks.names import (
    AGENT_STATS,
    BATCH_TICK,
    BEAT_HEARTBEAT,
    ENFORCE_BUDGETS,
    EVALUATE_ALERTS,
    PURGE_EXPIRED,
    ROLLUP_METRICS,
)
from workers.accounting import monitoring, periodic, reports
from workers.accounting.alerts import Alerter
from workers.bodies.database import with_ledger
from workers.bodies.jobs import finish_batched
from workers.runtime import WorkerRuntime, get_runtime

__all__ = ["HOUSEKEEPING_BODIES"]


def beat_heartbeat() -> None:
    """Beat's proof of life, read by health reports."""
    runtime = get_runtime()

    async def stamp() -> None:
        await runtime.redis.set(BEAT_LAST_RUN, f"{time.time():.3f}")

    runtime.run(stamp())


def enforce_budgets() -> dict[str, Any]:
    def work(runtime: WorkerRuntime, engine: Engine) -> dict[str, Any]:
        return periodic.enforce_budgets(engine, runtime.sync_redis, runtime.fleet,
                                        Alerter.from_env(os.environ))
    return with_ledger(work)


def evaluate_alerts() -> dict[str, Any]:
    """Operational alerts over ``[monitoring]``'s window; nothing at all (not even a
    database connection) with ENABLE_MONITORING=false or ``[monitoring] enabled =
    false``."""
    runtime = get_runtime()
    if not (runtime.settings.enable_monitoring and runtime.fleet.monitoring.enabled):
        return {"skipped": "monitoring is off (ENABLE_MONITORING, [monitoring] enabled)"}

    def work(runtime: WorkerRuntime, engine: Engine) -> dict[str, Any]:
        return monitoring.evaluate_alerts(engine, runtime.fleet.monitoring,
                                          Alerter.from_env(os.environ))
    return with_ledger(work)


def rollup_metrics() -> dict[str, Any]:
    """The metrics' roll-ups; none with ENABLE_MONITORING=false (the dashboard's and
    reports' charts then have nothing past the ledger's retention)."""
    if not get_runtime().settings.enable_monitoring:
        return {"skipped": "monitoring is off (ENABLE_MONITORING)"}
    return with_ledger(lambda runtime, engine: periodic.rollup_metrics(
        engine, retention_days=runtime.settings.metrics_retention_days))


def purge_expired() -> dict[str, Any]:
    return with_ledger(lambda runtime, engine: periodic.purge_expired(
        engine, runtime.settings.metrics_retention_days,
        audit_retention_days=runtime.settings.audit_retention_days))


def batch_tick() -> dict[str, int]:
    """The batcher's round (``workers.batching``); nothing without Postgres or with
    ``[batch] enabled = false``."""
    runtime = get_runtime()
    batcher = runtime.batcher
    if batcher is None:
        return {}

    async def finish(payload: dict[str, Any], answer: Any) -> None:
        await finish_batched(runtime, payload, answer)

    return runtime.run(batcher.tick(finish))


def agent_stats(agent: str, since: str | None = None) -> dict[str, Any]:
    """An agent's figures from the ledger, fleet-wide."""
    start = dt.datetime.fromisoformat(since) if since else None
    return with_ledger(lambda runtime, engine: reports.agent_stats(engine, agent, start))


#: Bound by ``workers.bodies.bind_tasks``.
HOUSEKEEPING_BODIES: dict[str, Callable[..., Any]] = {
    BEAT_HEARTBEAT: beat_heartbeat, ENFORCE_BUDGETS: enforce_budgets,
    EVALUATE_ALERTS: evaluate_alerts,
    ROLLUP_METRICS: rollup_metrics, PURGE_EXPIRED: purge_expired, AGENT_STATS: agent_stats,
    BATCH_TICK: batch_tick,
}
