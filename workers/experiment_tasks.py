"""Task bodies behind ``client.experiments`` and ``client.feedback`` (admin queue).

Envelopes, as for templates, so that an unknown experiment or job reaches the agent as
its typed error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tasks.names import (
    EXPERIMENTS_CREATE,
    EXPERIMENTS_FEEDBACK,
    EXPERIMENTS_GET,
    EXPERIMENTS_REPORT,
    EXPERIMENTS_STATUS,
)
from workers import experiments_store as store
from workers.template_tasks import database_envelope

__all__ = ["EXPERIMENT_BODIES"]


def experiments_create(name: str, unit: str, primary_metric: str,
                       variants: list[dict[str, Any]], alpha: float = 0.05) -> dict[str, Any]:
    return database_envelope(
        lambda engine: store.create(engine, name, unit, primary_metric, variants, alpha))


def experiments_status(name: str, status: str) -> dict[str, Any]:
    return database_envelope(lambda engine: store.set_status(engine, name, status))


def experiments_get(name: str) -> dict[str, Any]:
    return database_envelope(lambda engine: store.get(engine, name))


def experiments_report(name: str) -> dict[str, Any]:
    return database_envelope(lambda engine: store.report(engine, name))


def experiments_feedback(job_id: str, success: bool | None = None,
                         score: float | None = None) -> dict[str, Any]:
    return database_envelope(lambda engine: store.feedback(engine, job_id, success, score))


#: Merged into ``workers.task_bodies.bind_tasks``'s bodies.
EXPERIMENT_BODIES: dict[str, Callable[..., Any]] = {
    EXPERIMENTS_CREATE: experiments_create, EXPERIMENTS_STATUS: experiments_status,
    EXPERIMENTS_GET: experiments_get, EXPERIMENTS_REPORT: experiments_report,
    EXPERIMENTS_FEEDBACK: experiments_feedback,
}
