"""The plain-Celery baseline of ``bench/throughput.py``: a no-op task, nothing else.

Same broker and result backend as the fleet (``BENCH_REDIS_URL``), JSON, the threads
pool, and the Celery settings the fleet runs with (late acks, prefetch of one), so that
the fleet's ratio to it measures what the fleet adds to a Celery message (validation,
the pipeline, a provider call, the result waiter) and not a Celery setting.

Run by the benchmark as ``celery -A bench._noop_app worker --pool threads ...``.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

__all__ = ["NOOP", "QUEUE", "make_app"]  # and ``app``, built on first access

#: The no-op task's name and its queue.
NOOP = "bench.noop"
QUEUE = "bench.noop"


def make_app(redis_url: str) -> Celery:
    """A minimal Celery app on ``redis_url`` with the no-op task bound."""
    app = Celery("bench-noop", set_as_current=False)
    app.conf.update(
        broker_url=redis_url,
        result_backend=redis_url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )

    @app.task(name=NOOP, ignore_result=False)
    def noop() -> None:
        return None

    return app


def __getattr__(name: str) -> Any:
    """``celery -A bench._noop_app`` reads ``app``: built from BENCH_REDIS_URL, which
    must be set (no default, so it never lands on someone's own Redis)."""
    if name == "app":
        url = os.environ.get("BENCH_REDIS_URL")
        if not url:
            raise RuntimeError("BENCH_REDIS_URL must name the benchmark's Redis")
        built = make_app(url)
        globals()["app"] = built
        return built
    raise AttributeError(name)
