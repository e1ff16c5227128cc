"""Celery settings shared by the agents' producer and the workers (Celery's own names)."""

from __future__ import annotations

from typing import Any

from schemas import FleetConfig
from tasks.names import EMBEDDINGS_QUEUE, queue_for

__all__ = ["VISIBILITY_TIMEOUT_S", "celery_settings", "fleet_queues"]

#: Seconds before Redis hands an unacknowledged job to another worker. Must exceed
#: the longest job (its timeout, at most 3600 s, is checked by the worker), else a
#: slow job runs twice. Shorter than kombu's one-hour default so that a killed
#: worker's jobs come back within minutes.
VISIBILITY_TIMEOUT_S = 900


def fleet_queues(fleet: FleetConfig) -> list[str]:
    """Every queue the fleet file implies: a queue per tier (embeddings included)."""
    return [EMBEDDINGS_QUEUE if t == "embeddings" else queue_for(t) for t in fleet.tiers]


def celery_settings(broker_url: str, backend_url: str, fleet: FleetConfig) -> dict[str, Any]:
    return {
        "broker_url": broker_url,
        "result_backend": backend_url,
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
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_S},
        "result_backend_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_S},
        "broker_connection_retry_on_startup": True,
        "result_expires": 24 * 3600,
        "task_default_queue": queue_for(fleet.default_tier),
        "task_create_missing_queues": True,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "timezone": "UTC",
        "enable_utc": True,
    }
