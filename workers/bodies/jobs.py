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

from pydantic import ValidationError

from schemas import (
    CompletionJob,
    EmbeddingJob,
    FleetError,
    WorkerError,
    encode_batch,
    encode_error,
    encode_result,
    validation_error,
)
from tasks.names import (
    COMPLETE,
    COMPLETE_BATCH,
    EMBED,
)
from workers.accounting.ledger import rejected_row
from workers.accounting.spool import spool_row
from workers.runtime import WorkerRuntime, get_runtime

Job = CompletionJob | EmbeddingJob

__all__ = ["JOB_BODIES"]

log = logging.getLogger(__name__)


async def _guarded(payload: Any, model: type[Job], runtime: WorkerRuntime) -> dict[str, Any]:
    """Validate, route and run one job; every outcome becomes an envelope, and a job
    refused before the pipeline still leaves its ledger row."""
    try:
        job = model.model_validate(payload)
        ctx = runtime.pipeline.context(job)
    except (ValidationError, FleetError) as exc:
        error = validation_error(exc) if isinstance(exc, ValidationError) else exc
        row = rejected_row(payload, error)
        if row is not None and runtime.settings.enable_cost_tracking:
            await spool_row(runtime.redis, row)
        return encode_error(error)
    try:
        result = await runtime.pipeline.run(ctx)
    except FleetError as exc:
        return encode_error(exc)
    except Exception as exc:  # a bug of ours must not take the worker or the batch down
        log.exception("job %s failed unexpectedly", job.job_id)
        return encode_error(WorkerError(f"unexpected {type(exc).__name__} in the worker"))
    return encode_result(result.labelled(job.metadata))


def complete(payload: Any) -> dict[str, Any]:
    runtime = get_runtime()
    return runtime.run(_guarded(payload, CompletionJob, runtime))


def complete_batch(payloads: Any) -> dict[str, Any]:
    """Many jobs of one tier from one message, run concurrently; results in order."""
    runtime = get_runtime()
    if not isinstance(payloads, list):
        return encode_error(WorkerError("a batch message must carry a list of jobs"))

    async def run_all() -> list[dict[str, Any]]:
        return await asyncio.gather(
            *(_guarded(p, CompletionJob, runtime) for p in payloads))

    return encode_batch(runtime.run(run_all()))


def embed(payload: Any) -> dict[str, Any]:
    runtime = get_runtime()
    return runtime.run(_guarded(payload, EmbeddingJob, runtime))


#: Bound by ``workers.bodies.bind_tasks``.
JOB_BODIES: dict[str, Callable[..., Any]] = {
    COMPLETE: complete, COMPLETE_BATCH: complete_batch, EMBED: embed,
}
