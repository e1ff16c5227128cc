"""The Celery app of the workers: queues per tier, JSON only, the bound task bodies.

``celery --app workers.app:app ...`` (Flower, for one) gets the app configured from
the environment; ``create_app`` builds one for given URLs.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, worker_shutdown
from celery.worker.consumer import Consumer
from kombu.entity import Queue
from kombu.transport import redis as kombu_redis

from schemas import FleetConfig, Settings, load_config
from tasks._redis import is_sentinel, redbeat_settings
from tasks.celery_config import celery_settings, fleet_queues
from tasks.names import (
    ADMIN_QUEUE,
    BATCH_TICK,
    BEAT_HEARTBEAT,
    ENFORCE_BUDGETS,
    EVALUATE_ALERTS,
    PURGE_EXPIRED,
    ROLLUP_METRICS,
)
from workers.admission.cycle import PriorityCycle
from workers.bodies import bind_tasks
from workers.observability.logs import to_json
from workers.observability.traces import setup_tracing
from workers.runtime import close_runtime

__all__ = ["FleetConsumer", "FleetRedisTransport", "FleetSentinelTransport", "beat_settings",
           "create_app", "observe", "use_fleet_transport"]  # and ``app``, built
# on first access


class FleetConsumer(Consumer):  # type: ignore[misc]  # Celery ships no type hints
    """Celery's consumer, made to outlive the loss of its broker connection with jobs in
    flight (a Redis restart, a Sentinel failover).

    kombu's Redis channel, when closed, first reads the reply of its BRPOP in flight; with
    the server gone that read raises, the close stops half way, and Celery's second close
    (after ``collect()`` has dropped the transport) fails with an AttributeError it takes
    as unrecoverable: the worker shuts down (kombu 5.7, Celery 5.7). The server is gone and
    there is no reply to read: the channels forget their BRPOP before Celery closes them,
    and the consumer reconnects as it does after any connection error.
    tests/drills/test_sentinel_failover.py kills Redis under it."""

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        transport = getattr(self.connection, "_transport", None)
        for channel in getattr(transport, "channels", None) or ():
            if getattr(channel, "_in_poll", None) is not None:
                channel._in_poll = None
        super().on_connection_error_after_connected(exc)


class _OneClient:
    """kombu's Redis channel makes a redis-py client object for each synchronous command
    it sends (the unacked index when a job arrives, the ack when it is done): a handle
    on the channel's connection pool that costs about 0.08 ms of CPU to build, twice per
    job. The handle holds no connection and is thread-safe, so the channel keeps one,
    made again if the channel replaces its pool."""

    _one_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        make = super()._create_client  # type: ignore[misc]
        if asynchronous:
            return make(asynchronous=True)
        client = self._one_client
        if client is None or client.connection_pool is not self.pool:  # type: ignore[attr-defined]
            client = self._one_client = make()
        return client


class _Channel(_OneClient, kombu_redis.Channel):
    pass


class _SentinelChannel(_OneClient, kombu_redis.SentinelChannel):
    pass


class FleetRedisTransport(kombu_redis.Transport):
    """kombu's Redis transport, its channels keeping one client (``_OneClient``)."""

    Channel = _Channel


class FleetSentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Sentinel transport, its channels keeping one client (``_OneClient``)."""

    Channel = _SentinelChannel


def use_fleet_transport(app: Celery, redis_url: str) -> None:
    """A worker's broker connections through the fleet's transports (``_OneClient``).
    Workers only: Flower tells brokers apart by their URL's scheme, which this changes
    to the transport's path."""
    transport = FleetSentinelTransport if is_sentinel(redis_url) else FleetRedisTransport
    app.conf.broker_transport = f"{transport.__module__}:{transport.__name__}"


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
    # A broker restart or a failover drops the connection with jobs in flight.
    settings["worker_consumer"] = f"{FleetConsumer.__module__}:{FleetConsumer.__name__}"
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
    if fleet.batch.enabled:
        settings["beat_schedule"]["batch-tick"] = {
            "task": BATCH_TICK, "schedule": fleet.batch.poll_s,
            "options": {"queue": ADMIN_QUEUE, "expires": fleet.batch.poll_s}}
    celery.conf.update(settings)
    bind_tasks(celery)
    return celery


def beat_settings(redis_url: str, fleet: FleetConfig) -> dict[str, Any]:
    """Beat's scheduler: RedBeat's, whose lock lets one beat tick fleet-wide while
    others stand by (two plain beats would both send every task), with the schedule's
    state in Redis rather than a file on one host."""
    lock_s = fleet.beat.lock_timeout_s
    return {
        "beat_scheduler": "redbeat.RedBeatScheduler",
        **redbeat_settings(redis_url),
        "redbeat_key_prefix": "llmfleet:beat",
        "redbeat_lock_timeout": int(lock_s),
        # The active beat renews its lock at each tick: ticks well inside its timeout.
        "beat_max_loop_interval": max(1.0, min(5.0, lock_s / 3)),
    }


def _close_runtime(**_: Any) -> None:
    """After Celery's warm shutdown has let the jobs in flight finish: close this
    process's runtime, whose flusher writes what this worker spooled last."""
    close_runtime()


worker_shutdown.connect(_close_runtime, weak=False, dispatch_uid="llmfleet-close-runtime")


def _json_handlers(logger: Any, **_: Any) -> None:
    to_json(logger)


def observe(settings: Settings, service: str) -> None:
    """Logs and traces of a worker or beat process: with LLMFLEET_LOG_FORMAT=json, the
    handlers Celery sets up write JSON lines (``workers.observability.logs``); with
    OTEL_EXPORTER_OTLP_ENDPOINT, the process traces its jobs."""
    if settings.log_format == "json":
        after_setup_logger.connect(_json_handlers, weak=False, dispatch_uid="llmfleet-json")
        after_setup_task_logger.connect(_json_handlers, weak=False,
                                        dispatch_uid="llmfleet-json-task")
    setup_tracing(settings, service)


def _from_env() -> Celery:
    settings, fleet = load_config()
    observe(settings, "llmfleet-worker")
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
