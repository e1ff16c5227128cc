"""The job bodies: one completion, a batch of them, one embedding job.

Thin on purpose: parse the payload, run the pipeline, return a JSON envelope. A bad
payload or a failed job becomes an error envelope; nothing a job carries can kill the
worker or lose another job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from celery import current_task
from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from schemas import (
    CompletionJob,
    CompletionResult,
    EmbeddingJob,
    EmbeddingResult,
    FleetError,
    LedgerRow,
    RateLimitedError,
    Ticket,
    WorkerError,
    encode_error,
    encode_result,
    validation_error,
)
from schemas.keys import LEDGER_SPOOL
from tasks.names import (
    COMPLETE,
    COMPLETE_BATCH,
    EMBED,
    queue_for,
)
from workers.accounting.ledger import error_row, rejected_row
from workers.accounting.once import end_job
from workers.admission.gate import Parked
from workers.observability.traces import JobScope, record_outcome
from workers.pipeline.deadline import Deadline
from workers.pipeline.outbox import Outbox
from workers.pipeline.steps import JobContext
from workers.pipeline.streams import StreamSink
from workers.providers import Completion
from workers.runtime import WorkerRuntime, get_runtime

Job = CompletionJob | EmbeddingJob

__all__ = ["JOB_BODIES", "JOB_COROUTINES", "finish_batched"]

log = logging.getLogger(__name__)


async def _observed(payload: Any, model: type[Job], runtime: WorkerRuntime,
                    message_id: str | None = None) -> None:
    """``_guarded`` in the job's context, restored from its payload: its ids on every
    log line it causes and, when the process traces, its spans (``JobScope``)."""
    with JobScope(payload):
        await _guarded(payload, model, runtime, message_id)


async def _guarded(payload: Any, model: type[Job], runtime: WorkerRuntime,
                   message_id: str | None = None) -> None:
    """Validate, route, admit and run one job, then finish it (``_finish``): every
    outcome becomes an envelope, stored and published, and a job refused before the
    pipeline still leaves its ledger row. A job that must wait for a limit or a quota
    is parked: it will be sent again, and that run finishes it."""
    try:
        job = model.model_validate(payload)
        ctx = runtime.pipeline.context(job)
    except (ValidationError, FleetError) as exc:
        error = validation_error(exc) if isinstance(exc, ValidationError) else exc
        row = rejected_row(payload, error)
        await _end_stream(runtime, payload, error)
        if isinstance(payload, dict) and "job_id" not in payload and message_id:
            payload = {**payload, "job_id": message_id}  # answered under its message's id
        return await _finish(runtime, payload, encode_error(error), Outbox(), row)
    ticket = None
    if runtime.admission.applies(ctx):
        try:
            verdict = await runtime.admission.admit(ctx)
        except RateLimitedError as exc:
            await _end_stream(runtime, payload, exc)
            return await _finish(runtime, payload, encode_error(exc), ctx.outbox,
                                 error_row(ctx, exc))
        if isinstance(verdict, Parked):
            await _park(runtime, job, ctx.tier, verdict)
            return
        ticket = verdict.ticket
    if await _deferred(runtime, ctx):
        if ticket is not None:  # it holds nothing while it waits
            await _settle(runtime, ticket, ctx, None)
        return None
    return await _run(runtime, payload, ctx, ticket)


async def _run(runtime: WorkerRuntime, payload: Any, ctx: JobContext,
               ticket: Ticket | None = None) -> None:
    """Run a routed job through the pipeline and finish it."""
    job = ctx.job
    result = None
    try:
        result = await runtime.pipeline.run(ctx)
        envelope = encode_result(result.labelled(job.metadata))
    except FleetError as exc:
        envelope = encode_error(exc)
    except Exception as exc:  # a bug of ours must not take the worker or the batch down
        log.exception("job %s failed unexpectedly", job.job_id)
        envelope = encode_error(WorkerError(f"unexpected {type(exc).__name__} in the worker"))
    finally:
        if ticket is not None:
            await _settle(runtime, ticket, ctx, result)
    return await _finish(runtime, payload, envelope, ctx.outbox)


async def _deferred(runtime: WorkerRuntime, ctx: JobContext) -> bool:
    """Has the job been left to wait for a provider batch (``workers.batching``)? Not
    when it must run now, or the cache has its answer (then it is answered now)."""
    deferral = runtime.deferral
    deadline = deferral.deadline(ctx) if deferral is not None else None
    if deferral is None or deadline is None:
        return False
    try:
        if await runtime.cache_step.has_answer(ctx):
            return False
        return await deferral.defer(ctx, deadline)
    except (SQLAlchemyError, RedisError, OSError) as exc:  # no waiting room: run it now
        log.warning("job %s could not wait for a batch (%s): running it now",
                    ctx.job.job_id, type(exc).__name__)
        return False


async def finish_batched(runtime: WorkerRuntime, payload: dict[str, Any],
                         answer: Completion) -> None:
    """A waiting job its batch answered: the whole pipeline (claim, ledger, cache,
    budget at batch prices), ``answer`` standing in for its provider call, then its end
    as any job's. Whichever runs it first, this or its live run, is charged; the other
    answers from its outcome."""
    try:
        job = CompletionJob.model_validate(payload)
        ctx = runtime.pipeline.context(job)
    except (ValidationError, FleetError) as exc:  # it passed when it was deferred
        log.error("batched job %s no longer validates (%s)", payload.get("job_id"),
                  type(exc).__name__)
        return
    # Its batch's model only, and the fleet's time limit from now: the time the caller
    # waits was checked against its deadline when it was deferred.
    ctx.chain = ctx.chain[:1]
    ctx.deadline = Deadline(at=time.time() + runtime.fleet.job_time_limit_s, job_id=job.job_id)
    ctx.batch_answer = answer
    with JobScope(payload):
        await _run(runtime, payload, ctx)


async def _finish(runtime: WorkerRuntime, payload: Any, envelope: dict[str, Any],
                  outbox: Outbox, row: LedgerRow | None = None) -> None:
    """The end of a job, in one round trip (``end_job``): what its steps left to write
    (its ledger row, its cache entry...), its outcome stored in its state key, published
    to the client that waits for it and on its wake channel (a second delivery,
    identical jobs that followed it, agents waiting for a job they did not send)."""
    data = payload if isinstance(payload, dict) else {}
    job_id, reply_to = data.get("job_id"), data.get("reply_to")
    if not isinstance(job_id, str) or not 8 <= len(job_id) <= 64:
        job_id = None
    record_outcome(envelope)
    writes = []
    if row is not None and runtime.settings.enable_cost_tracking:
        text = row.model_dump_json()
        writes.append(lambda pipe: pipe.rpush(LEDGER_SPOOL, text))
    try:
        await end_job(runtime.redis, job_id, envelope, outbox,
                      reply_to if isinstance(reply_to, str) else None, writes)
    except RedisError as exc:
        log.error("job %s: its outcome and ledger row could not be written (%s)", job_id,
                  type(exc).__name__)


async def _end_stream(runtime: WorkerRuntime, payload: Any, error: FleetError) -> None:
    """A streamed job refused before its pipeline: its readers get the error as the
    stream's last chunk (the pipeline's stream step writes it for every other end)."""
    if isinstance(payload, dict) and payload.get("stream") is True \
            and isinstance(payload.get("job_id"), str) and 8 <= len(payload["job_id"]) <= 64:
        await StreamSink(runtime.redis, payload["job_id"]).finish(encode_error(error), None)


async def _park(runtime: WorkerRuntime, job: Job, tier: str, parked: Parked) -> None:
    task = EMBED if isinstance(job, EmbeddingJob) else COMPLETE
    payload = job.model_copy(update={"ticket": parked.ticket}).model_dump(mode="json")
    await runtime.parking.park(job.job_id, task, [payload], queue_for(tier, job.priority),
                               parked.wait_s)


async def _settle(runtime: WorkerRuntime, ticket: Ticket, ctx: JobContext,
                  result: CompletionResult | EmbeddingResult | None) -> None:
    try:
        await runtime.admission.settle(ticket, ctx, result)
    except RedisError as exc:  # the reservation then runs out on its own
        log.warning("job %s: could not settle its limits (%s)", ctx.job.job_id,
                    type(exc).__name__)


# The bodies return nothing: each job's outcome went to its state key and its client's
# reply channel (Celery stores no result for them: ``tasks.names`` sets ignore_result).
# A worker runs their coroutines on its event loop straight from the consumer
# (``workers.intake``); the synchronous bodies are Celery's way in under another pool.


async def _complete(runtime: WorkerRuntime, payload: Any, message_id: str | None) -> None:
    await _observed(payload, CompletionJob, runtime, message_id)


async def _complete_batch(runtime: WorkerRuntime, payloads: Any, _: str | None) -> None:
    """Many jobs of one tier from one message, run concurrently, each finished on its
    own (a parked job later, when it is sent again)."""
    if not isinstance(payloads, list):
        log.error("a batch message must carry a list of jobs: dropped")
        return
    await asyncio.gather(*(_observed(p, CompletionJob, runtime) for p in payloads))


async def _embed(runtime: WorkerRuntime, payload: Any, message_id: str | None) -> None:
    await _observed(payload, EmbeddingJob, runtime, message_id)


#: A job task's work on the event loop, from its message's one argument and its id.
JobCoroutine = Callable[[WorkerRuntime, Any, "str | None"], Coroutine[Any, Any, None]]
JOB_COROUTINES: dict[str, JobCoroutine] = {
    COMPLETE: _complete, COMPLETE_BATCH: _complete_batch, EMBED: _embed,
}


def _body(name: str) -> Callable[[Any], None]:
    work = JOB_COROUTINES[name]

    def body(payload: Any) -> None:
        runtime = get_runtime()
        runtime.run(work(runtime, payload, _message_id()))

    body.__name__ = body.__qualname__ = name.rsplit(".", 1)[-1]
    return body


def _message_id() -> str | None:
    """The id of the message being run (Celery's task id: a job's own id)."""
    request = getattr(current_task, "request", None)
    task_id = getattr(request, "id", None)
    return task_id if isinstance(task_id, str) else None


#: Bound by ``workers.bodies.bind_tasks``.
JOB_BODIES: dict[str, Callable[..., Any]] = {name: _body(name) for name in JOB_COROUTINES}
