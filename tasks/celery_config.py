"""Celery settings shared by the agents' producer and the workers (Celery's own names)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from schemas import FleetConfig
from tasks._redis import celery_broker
from tasks.names import priority_queues, queue_for

__all__ = ["celery_settings", "fleet_queues", "visibility_timeout"]

#: Seconds between the broker's sweeps for jobs of dead workers.
RESTORE_SWEEP_S = 5


def visibility_timeout(fleet: FleetConfig) -> int:
    """Seconds before Redis hands an unacknowledged job to another worker: twice the
    longest a job may run (``job_time_limit_s``, enforced by the worker), so a slow job
    never runs twice, yet a killed worker's jobs come back within minutes rather than
    after kombu's default hour."""
    return int(2 * fleet.job_time_limit_s)


def fleet_queues(fleet: FleetConfig, tiers: Iterable[str] | None = None) -> list[str]:
    """The queues of ``tiers`` (default: every tier of the fleet file, embeddings
    included), in the fleet file's order, each tier's highest priority first."""
    chosen = set(fleet.tiers if tiers is None else tiers)
    return [queue for t in fleet.tiers if t in chosen for queue in priority_queues(t)]


def celery_settings(broker_url: str, backend_url: str, fleet: FleetConfig) -> dict[str, Any]:
    """Celery's settings for the fleet's Redis; a Sentinel URL (``sentinel://...``) is
    taken by the broker and the result backend with the master's name in their transport
    options (tasks._redis, docs/sentinel.md)."""
    broker, broker_options = celery_broker(broker_url)
    backend, backend_options = celery_broker(backend_url)
    return {
        "broker_url": broker,
        "result_backend": backend,
        "result_backend_transport_options": backend_options,
        # JSON only: a pickle payload would run code in the worker.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Jobs are long and I/O-bound: each worker reserves only what its pool can
        # run now, so an idle worker on another machine gets the rest.
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {
            "visibility_timeout": visibility_timeout(fleet),
            "unacked_restore_interval": RESTORE_SWEEP_S,
            "unacked_restore_throttle": 1,
            **broker_options,
        },
        "broker_connection_retry_on_startup": True,
        # A publish retries twice, quickly: enough to replace a pooled connection that a
        # broker restart broke, short enough that a broker that is down fails the
        # submit at once (FleetUnavailableError) instead of holding the agent.
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0,
                                      "interval_step": 0.05, "interval_max": 0.1},
        "result_expires": 24 * 3600,
        "task_default_queue": queue_for(fleet.default_tier),
        "task_create_missing_queues": True,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "timezone": "UTC",
        "enable_utc": True,
    }
