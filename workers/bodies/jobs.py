"""The task bodies, bound to the names and options declared in ``tasks.names``.

Thin on purpose: parse the payload, run the pipeline, return a JSON envelope. A bad
payload or a failed job becomes an error envelope; nothing a job carries can kill the
worker or lose another job.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import Callable
from typing import Any

from celery import Celery
from pydantic import ValidationError
from sqlalchemy import Engine

from schemas import (
    CompletionJob,
    EmbeddingJob,
    FleetError,
    WorkerError,
    encode_error,
    encode_result,
    validation_error,
)
from schemas.keys import BEAT_LAST_RUN
from tasks.names import (
    AGENT_STATS,
    BEAT_HEARTBEAT,
    COMPLETE,
    COMPLETE_BATCH,
    EMBED,
    ENFORCE_BUDGETS,
    PURGE_EXPIRED,
    ROLLUP_METRICS,
    TASK_OPTIONS,
)
from workers.accounting import periodic, reports
from workers.accounting.alerts import Alerter
from workers.accounting.ledger import rejected_row
from workers.accounting.spool import spool_row
from workers.bodies.experiments import EXPERIMENT_BODIES
from workers.bodies.templates import TEMPLATE_BODIES
from workers.runtime import WorkerRuntime, get_runtime
from workers.store.engines import sync_engine

Job = CompletionJob | EmbeddingJob

__all__ = ["bind_tasks"]

log = logging.getLogger(__name__)


async def _guarded(payload: Any, model: type[Job], runtime: WorkerRuntime) -> dict[str, Any]:
    """Validate, route and run one job; every outcome becomes an envelope, and a job
    refused before the pipeline still leaves its ledger row."""
    try:
        job = model.model_validate(payload)
        ctx = runtime.pipeline.context(job)
    except (ValidationError, FleetError) as exc:
        error = validation_error(exc) if isinstance(exc, ValidationError) else exc
        row = rejected_row(payload, error)
        if row is not None and runtime.settings.enable_cost_tracking:
            await spool_row(runtime.redis, row)
        return encode_error(error)
    try:
        result = await runtime.pipeline.run(ctx)
    except FleetError as exc:
        return encode_error(exc)
    except Exception as exc:  # a bug of ours must not take the worker or the batch down
        log.exception("job %s failed unexpectedly", job.job_id)
        return encode_error(WorkerError(f"unexpected {type(exc).__name__} in the worker"))
    return encode_result(result.labelled(job.metadata))


def complete(payload: Any) -> dict[str, Any]:
    runtime = get_runtime()
    return runtime.run(_guarded(payload, CompletionJob, runtime))


def complete_batch(payloads: Any) -> dict[str, Any]:
    """Many jobs of one tier from one message, run concurrently; results in order."""
    runtime = get_runtime()
    if not isinstance(payloads, list):
        return encode_error(WorkerError("a batch message must carry a list of jobs"))

    async def run_all() -> list[dict[str, Any]]:
        return await asyncio.gather(
            *(_guarded(p, CompletionJob, runtime) for p in payloads))

    return {"ok": True, "batch": runtime.run(run_all())}


def embed(payload: Any) -> dict[str, Any]:
    runtime = get_runtime()
    return runtime.run(_guarded(payload, EmbeddingJob, runtime))


def beat_heartbeat() -> None:
    """Beat's proof of life, read by health reports."""
    import time

    runtime = get_runtime()

    async def stamp() -> None:
        await runtime.redis.set(BEAT_LAST_RUN, f"{time.time():.3f}")

    runtime.run(stamp())


def _with_database(work: Callable[[WorkerRuntime, Engine], dict[str, Any]]) -> dict[str, Any]:
    """Run a housekeeping body against the ledger; skipped without a database."""
    runtime = get_runtime()
    url = runtime.settings.database_url
    if not url or not runtime.settings.enable_cost_tracking:
        return {"skipped": "cost tracking is off or DATABASE_URL is unset"}
    return work(runtime, sync_engine(url))


def enforce_budgets() -> dict[str, Any]:
    def work(runtime: WorkerRuntime, engine: Engine) -> dict[str, Any]:
        return periodic.enforce_budgets(engine, runtime.sync_redis, runtime.fleet,
                                        Alerter.from_env(os.environ))
    return _with_database(work)


def rollup_metrics() -> dict[str, Any]:
    return _with_database(lambda runtime, engine: periodic.rollup_metrics(
        engine, retention_days=runtime.settings.metrics_retention_days))


def purge_expired() -> dict[str, Any]:
    return _with_database(lambda runtime, engine: periodic.purge_expired(
        engine, runtime.settings.metrics_retention_days))


def agent_stats(agent: str, since: str | None = None) -> dict[str, Any]:
    """An agent's figures from the ledger, fleet-wide."""
    start = dt.datetime.fromisoformat(since) if since else None
    return _with_database(lambda runtime, engine: reports.agent_stats(engine, agent, start))


def bind_tasks(app: Celery) -> None:
    """Register the bodies on ``app`` under the declared names and options."""
    bodies: dict[str, Callable[..., Any]] = {
        COMPLETE: complete, COMPLETE_BATCH: complete_batch, EMBED: embed,
        BEAT_HEARTBEAT: beat_heartbeat, ENFORCE_BUDGETS: enforce_budgets,
        ROLLUP_METRICS: rollup_metrics, PURGE_EXPIRED: purge_expired, AGENT_STATS: agent_stats,
        **TEMPLATE_BODIES, **EXPERIMENT_BODIES,
    }
    for name, body in bodies.items():
        app.task(name=name, **TASK_OPTIONS[name])(body)
