"""The job bodies: one completion, a batch of them, one embedding job.

Thin on purpose: parse the payload, run the pipeline, return a JSON envelope. A bad
payload or a failed job becomes an error envelope; nothing a job carries can kill the
worker or lose another job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from celery.exceptions import Ignore
from pydantic import ValidationError
from redis.exceptions import RedisError

from schemas import (
    CompletionJob,
    CompletionResult,
    EmbeddingJob,
    EmbeddingResult,
    FleetError,
    RateLimitedError,
    Ticket,
    WorkerError,
    encode_batch,
    encode_error,
    encode_parked,
    encode_result,
    is_parked,
    validation_error,
)
from tasks.names import (
    COMPLETE,
    COMPLETE_BATCH,
    EMBED,
    queue_for,
)
from workers.accounting.ledger import error_row, rejected_row
from workers.accounting.spool import spool_row
from workers.admission.gate import Parked
from workers.pipeline.steps import JobContext
from workers.pipeline.streams import StreamSink
from workers.runtime import WorkerRuntime, get_runtime

Job = CompletionJob | EmbeddingJob

__all__ = ["JOB_BODIES"]

log = logging.getLogger(__name__)


async def _guarded(payload: Any, model: type[Job], runtime: WorkerRuntime) -> dict[str, Any]:
    """Validate, route, admit and run one job; every outcome becomes an envelope, and a
    job refused before the pipeline still leaves its ledger row. A job that must wait
    for a limit or a quota is parked (``encode_parked``): it will be sent again."""
    try:
        job = model.model_validate(payload)
        ctx = runtime.pipeline.context(job)
    except (ValidationError, FleetError) as exc:
        error = validation_error(exc) if isinstance(exc, ValidationError) else exc
        row = rejected_row(payload, error)
        if row is not None and runtime.settings.enable_cost_tracking:
            await spool_row(runtime.redis, row)
        await _end_stream(runtime, payload, error)
        return encode_error(error)
    ticket = None
    if runtime.admission.applies(ctx):
        try:
            verdict = await runtime.admission.admit(ctx)
        except RateLimitedError as exc:
            if runtime.settings.enable_cost_tracking:
                await spool_row(runtime.redis, error_row(ctx, exc))
            await _end_stream(runtime, payload, exc)
            return encode_error(exc)
        if isinstance(verdict, Parked):
            await _park(runtime, job, ctx.tier, verdict)
            return encode_parked(job.job_id)
        ticket = verdict.ticket
    result = None
    try:
        result = await runtime.pipeline.run(ctx)
    except FleetError as exc:
        return encode_error(exc)
    except Exception as exc:  # a bug of ours must not take the worker or the batch down
        log.exception("job %s failed unexpectedly", job.job_id)
        return encode_error(WorkerError(f"unexpected {type(exc).__name__} in the worker"))
    finally:
        if ticket is not None:
            await _settle(runtime, ticket, ctx, result)
    return encode_result(result.labelled(job.metadata))


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


def _single(envelope: dict[str, Any]) -> dict[str, Any]:
    """A one-job message's envelope; a parked job leaves no result (it is sent again
    under the same id, and that run answers)."""
    if is_parked(envelope):
        raise Ignore()
    return envelope


def complete(payload: Any) -> dict[str, Any]:
    runtime = get_runtime()
    return _single(runtime.run(_guarded(payload, CompletionJob, runtime)))


def complete_batch(payloads: Any) -> dict[str, Any]:
    """Many jobs of one tier from one message, run concurrently; results in order (a
    parked job's place says so: the client waits for that job on its own)."""
    runtime = get_runtime()
    if not isinstance(payloads, list):
        return encode_error(WorkerError("a batch message must carry a list of jobs"))

    async def run_all() -> list[dict[str, Any]]:
        return await asyncio.gather(
            *(_guarded(p, CompletionJob, runtime) for p in payloads))

    return encode_batch(runtime.run(run_all()))


def embed(payload: Any) -> dict[str, Any]:
    runtime = get_runtime()
    return _single(runtime.run(_guarded(payload, EmbeddingJob, runtime)))


#: Bound by ``workers.bodies.bind_tasks``.
JOB_BODIES: dict[str, Callable[..., Any]] = {
    COMPLETE: complete, COMPLETE_BATCH: complete_batch, EMBED: embed,
}
