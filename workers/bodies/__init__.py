"""Celery task bodies, bound to the names and options that ``tasks.names`` declares.

Thin on purpose: parse the payload, call the pipeline or the store, return JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery

from tasks.names import TASK_OPTIONS
from workers.bodies.experiments import EXPERIMENT_BODIES
from workers.bodies.housekeeping import HOUSEKEEPING_BODIES
from workers.bodies.jobs import JOB_BODIES
from workers.bodies.templates import TEMPLATE_BODIES
from workers.intake import job_strategy

__all__ = ["bind_tasks"]


def bind_tasks(app: Celery) -> None:
    """Register every body on ``app`` under its declared name and options."""
    bodies: dict[str, Callable[..., Any]] = {
        **JOB_BODIES, **HOUSEKEEPING_BODIES, **TEMPLATE_BODIES, **EXPERIMENT_BODIES}
    for name, body in bodies.items():
        options = dict(TASK_OPTIONS[name])
        if name in JOB_BODIES:  # run on the event loop from the consumer (JobPool only)
            options["Strategy"] = f"{job_strategy.__module__}:{job_strategy.__name__}"
        app.task(name=name, **options)(body)
