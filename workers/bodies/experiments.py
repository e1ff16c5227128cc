"""Task bodies behind ``client.experiments`` and ``client.feedback`` (admin queue).

Envelopes, as for templates, so that an unknown experiment or job reaches the agent as
its typed error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from schemas import ExperimentError
from tasks.names import (
    EXPERIMENTS_CREATE,
    EXPERIMENTS_FEEDBACK,
    EXPERIMENTS_GET,
    EXPERIMENTS_REPORT,
    EXPERIMENTS_STATUS,
)
from workers.bodies.database import database_envelope
from workers.runtime import get_runtime
from workers.store import experiments as store

__all__ = ["EXPERIMENT_BODIES"]


_declared = False
_NO_DATABASE = ExperimentError("experiments need DATABASE_URL; none is set")


def _with_declared(work: Callable[[Engine], Any]) -> dict[str, Any]:
    """``work`` once the fleet file's experiments are in Postgres (written by the first
    call of each worker process that succeeds; later calls skip it)."""
    def run(engine: Engine) -> Any:
        global _declared
        if not _declared:
            store.declare(engine, get_runtime().fleet.experiments)
            _declared = True
        return work(engine)

    return database_envelope(run, missing=_NO_DATABASE)


def experiments_create(name: str, unit: str, primary_metric: str,
                       variants: list[dict[str, Any]], alpha: float = 0.05,
                       evaluator: dict[str, Any] | None = None) -> dict[str, Any]:
    return _with_declared(lambda engine: store.create(
        engine, name, unit, primary_metric, variants, alpha, evaluator))


def experiments_status(name: str, status: str) -> dict[str, Any]:
    return _with_declared(lambda engine: store.set_status(engine, name, status))


def experiments_get(name: str) -> dict[str, Any]:
    return _with_declared(lambda engine: store.get(engine, name))


def experiments_report(name: str) -> dict[str, Any]:
    return _with_declared(lambda engine: store.report(engine, name))


def experiments_feedback(job_id: str, success: bool | None = None,
                         score: float | None = None) -> dict[str, Any]:
    return database_envelope(lambda engine: store.feedback(engine, job_id, success, score),
                             missing=_NO_DATABASE)


#: Bound by ``workers.bodies.bind_tasks``.
EXPERIMENT_BODIES: dict[str, Callable[..., Any]] = {
    EXPERIMENTS_CREATE: experiments_create, EXPERIMENTS_STATUS: experiments_status,
    EXPERIMENTS_GET: experiments_get, EXPERIMENTS_REPORT: experiments_report,
    EXPERIMENTS_FEEDBACK: experiments_feedback,
}
