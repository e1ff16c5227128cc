"""Job messages go from the consumer to the event loop, with no pool thread each.

Celery's default way with a message (its *strategy*) makes a request, hands it to the
pool, and a pool thread runs the task's tracer, whose body then blocks that thread
until its job has ended on the runtime's event loop (``workers.runtime``); the thread
returns and the message is acknowledged. For the job tasks that is two thread
hand-offs, a request and a trace per job, about a third of the worker's CPU per job,
and none of it needed: their bodies return nothing, store no Celery result, have no
retries, ETA or time limits of Celery's, and every outcome goes to the job's state key
and its client (``workers.bodies.jobs``).

So the job tasks (``workers.bodies.jobs.JOB_COROUTINES``) take this module's strategy
(``Task.Strategy``). It decodes the message (JSON only: the consumer's ``accept``
refuses any other content type before it gets here), starts the job's coroutine on the
runtime's loop straight from the consumer thread, and acknowledges the message when
the coroutine ends, through the consumer's own acknowledgement (done on its event
loop, as for any task). Nothing else changes: ``task_acks_late`` still holds (a worker
that dies mid-job leaves the message unacknowledged, so it comes back), and the jobs
in flight still count against the prefetch window, which is ``--concurrency``.

Each job in flight is still in the worker's state (``_Running``): ``celery inspect
active``, Flower's task view and the worker's task counts show it as they would a task
in a pool thread. Celery's ``revoke`` does not apply to jobs: it would drop a job with
no outcome for its agent and no ledger row. An agent cancels its job instead
(``JobHandle.cancel``), and the job ends cancelled, with its row.

The pool (``JobPool``) is Celery's thread pool, still running every other task
(housekeeping, templates, experiments), that also knows the jobs in flight: a warm
shutdown lets them end, and acknowledges them, before the worker exits, as it does
for its threads. Under any other pool (``celery worker -P solo``, say) the job tasks
fall back to Celery's default strategy and their synchronous bodies.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from celery.concurrency.thread import TaskPool
from celery.worker import state as worker_state
from celery.worker.strategy import default as default_strategy

__all__ = ["JobPool", "job_strategy"]

log = logging.getLogger(__name__)

#: The longest a warm shutdown waits for the jobs in flight (a job's own time limit
#: ends it well before: ``[fleet] job_time_limit_s``).
DRAIN_LIMIT_S = 600.0


class JobPool(TaskPool):  # type: ignore[misc]  # Celery ships no type hints
    """Celery's thread pool, plus the jobs running on the event loop (``job_strategy``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._jobs: set[concurrent.futures.Future[Any]] = set()
        self._jobs_lock = threading.Lock()

    def track(self, future: concurrent.futures.Future[Any]) -> None:
        with self._jobs_lock:
            self._jobs.add(future)
        future.add_done_callback(self._untrack)

    def _untrack(self, future: concurrent.futures.Future[Any]) -> None:
        with self._jobs_lock:
            self._jobs.discard(future)

    @property
    def jobs_in_flight(self) -> int:
        with self._jobs_lock:
            return len(self._jobs)

    def on_stop(self) -> None:
        """Warm shutdown: the jobs in flight end (and are acknowledged) first."""
        with self._jobs_lock:
            running = set(self._jobs)
        if running:
            log.info("waiting for %d job(s) in flight to end", len(running))
            concurrent.futures.wait(running, timeout=DRAIN_LIMIT_S)
        super().on_stop()

    def _get_info(self) -> Any:
        info = super()._get_info()
        info["jobs-in-flight"] = self.jobs_in_flight
        return info


class _Running:
    """A job in flight as the worker's state keeps a task's request
    (``celery.worker.state``), so that ``inspect active``, the task counts and the
    sweeper's heartbeat (the delivery tags this worker holds: ``workers.recovery.held``)
    include it. It has what Celery's consumer touches on the requests it keeps: across
    a reconnect (``eventer``), a cold shutdown (``task``, ``acknowledged``, ``cancel``)
    and ``inspect`` (``info``: the keys of Celery's own, the message's summary for
    arguments, ids and never the prompt)."""

    def __init__(self, task: Any, message: Any, hostname: str) -> None:
        self.task, self.name, self.message, self.hostname = task, task.name, message, hostname
        task_id = message.headers.get("id")
        self.id: str = task_id if isinstance(task_id, str) else ""
        self.time_start = time.time()
        self.acknowledged = False
        self.eventer: Any = None

    def info(self, safe: bool = False) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "args": self.message.headers.get("argsrepr"),
                "kwargs": {}, "type": self.name, "hostname": self.hostname,
                "time_start": self.time_start, "acknowledged": self.acknowledged,
                "delivery_info": self.message.delivery_info, "worker_pid": os.getpid()}

    def cancel(self, pool: Any, emit_retry: bool = True) -> None:
        """A cold shutdown cancels the tasks in flight: a job's message is not
        acknowledged, so it comes back, and its claim keeps it from running twice."""

    def terminate(self, pool: Any, signal: Any = None) -> None:
        """``revoke --terminate`` stops a task's process or thread; a job has neither,
        and stopping it midway would lose its ledger row: its agent cancels it."""
        log.warning("job task %s cannot be terminated: cancel the job instead "
                    "(JobHandle.cancel)", self.id)


#: What a strategy returns: Celery calls it with each message of its task.
Handler = Callable[..., None]


def job_strategy(task: Any, app: Any, consumer: Any, **options: Any) -> Handler:
    """The message handler of one job task (Celery calls this once per task, at start)."""
    pool = consumer.pool
    if not isinstance(pool, JobPool):
        return default_strategy(task, app, consumer, **options)  # type: ignore[no-any-return]
    from workers.bodies.jobs import JOB_COROUTINES
    from workers.runtime import get_runtime

    start = JOB_COROUTINES[task.name]
    errors = consumer.connection_errors
    name, hostname = task.name, consumer.hostname
    runtime = get_runtime()  # built before the consumer starts (``warm_up``)

    def handle(message: Any, payload: Any, ack: Any, reject: Any, callbacks: Any) -> None:
        body = message.decode()  # what does not decode (or is not JSON): Celery's business
        try:
            _start(message, body, ack)
        except Exception:  # a bug of ours must not stop the consumer: its client resends
            log.exception("%s: could not start a job message: dropped", name)
            reject(log, errors, requeue=False)

    def _start(message: Any, body: Any, ack: Any) -> None:
        running = _Running(task, message, hostname)
        if not (isinstance(body, list) and len(body) == 3 and isinstance(body[0], list)
                and len(body[0]) == 1 and not body[1]):
            # As a task called with the wrong arguments would: failed, acknowledged.
            log.error("%s[%s]: a job message carries one positional argument: dropped",
                      name, running.id)
            ack(log, errors)
            return
        future = runtime.start(start(runtime, body[0][0], running.id or None))
        worker_state.task_accepted(running)
        pool.track(future)

        def done(ended: concurrent.futures.Future[Any]) -> None:
            worker_state.task_ready(running, successful=not ended.cancelled())
            if ended.cancelled():  # the runtime closed under it: the message comes back
                return
            exc = ended.exception()
            if exc is not None:  # the job bodies catch everything: a bug of ours
                log.error("%s[%s] failed unexpectedly", name, running.id, exc_info=exc)
            running.acknowledged = True
            ack(log, errors)

        future.add_done_callback(done)

    return handle
