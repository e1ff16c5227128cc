"""The Celery app of the workers: queues per tier, JSON only, the bound task bodies.

``celery --app workers.app:app ...`` (Flower, for one) gets the app configured from
the environment; ``create_app`` builds one for given URLs.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_shutdown
from kombu.entity import Queue

from schemas import FleetConfig, load_config
from tasks.celery_config import celery_settings, fleet_queues
from tasks.names import (
    ADMIN_QUEUE,
    BEAT_HEARTBEAT,
    ENFORCE_BUDGETS,
    EVALUATE_ALERTS,
    PURGE_EXPIRED,
    ROLLUP_METRICS,
)
from workers.admission.cycle import PriorityCycle
from workers.bodies import bind_tasks
from workers.runtime import close_runtime

__all__ = ["create_app"]  # and ``app``, built on first access

def create_app(redis_url: str, fleet: FleetConfig) -> Celery:
    celery = Celery("llmfleet", set_as_current=False)
    settings: dict[str, Any] = celery_settings(redis_url, redis_url, fleet)
    # kombu ships no type hints for Queue.
    queues = [*fleet_queues(fleet), ADMIN_QUEUE]
    settings["task_queues"] = [Queue(name) for name in queues]  # type: ignore[no-untyped-call]
    # High-priority queues first, low ones a share of fetches (workers.admission.cycle).
    PriorityCycle.low_share = fleet.admission.low_share
    settings["broker_transport_options"] = {
        **settings["broker_transport_options"],
        "queue_order_strategy": f"{PriorityCycle.__module__}:{PriorityCycle.__name__}"}
    every = fleet.beat
    settings["beat_schedule"] = {
        name: {"task": task, "schedule": seconds, "options": {"queue": ADMIN_QUEUE}}
        for name, task, seconds in (
            ("heartbeat", BEAT_HEARTBEAT, every.heartbeat_s),
            ("enforce-budgets", ENFORCE_BUDGETS, every.enforce_budgets_s),
            ("rollup-metrics", ROLLUP_METRICS, every.rollup_metrics_s),
            ("purge-expired", PURGE_EXPIRED, every.purge_expired_s),
            ("evaluate-alerts", EVALUATE_ALERTS, fleet.monitoring.interval_s),
        )
    }
    celery.conf.update(settings)
    bind_tasks(celery)
    return celery


def _close_runtime(**_: Any) -> None:
    """After Celery's warm shutdown has let the jobs in flight finish: close this
    process's runtime, whose flusher writes what this worker spooled last."""
    close_runtime()


worker_shutdown.connect(_close_runtime, weak=False, dispatch_uid="llmfleet-close-runtime")


def _from_env() -> Celery:
    settings, fleet = load_config()
    from tasks._discovery import find_redis_url

    return create_app(find_redis_url(settings), fleet)


def __getattr__(name: str) -> Any:
    """``workers.app:app`` is built on first access, so importing this module reads
    no environment and starts nothing."""
    if name == "app":
        built = _from_env()
        globals()["app"] = built
        return built
    raise AttributeError(name)
