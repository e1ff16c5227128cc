"""One ledger row per job, succeeded, failed or rejected: the step that leaves it, and
the rows themselves."""

from __future__ import annotations

import datetime as dt
from typing import Any

from schemas import (
    CompletionResult,
    FleetError,
    JobStatus,
    LedgerRow,
    Usage,
    status_for_error,
)
from schemas.evaluators import auto_outcome
from schemas.keys import LEDGER_SPOOL
from workers.pipeline.outbox import Write
from workers.pipeline.pricing import cost_of
from workers.pipeline.steps import Handler, JobContext, Result, Step
from workers.providers import redact

__all__ = ["LedgerStep", "billed", "error_row", "rejected_row", "result_row"]


class LedgerStep(Step):
    """The job's row goes to the spool with the job's other writes at its end
    (``workers.pipeline.outbox``): one RPUSH in the job's last round trip."""

    async def __call__(self, ctx: JobContext, call_next: Handler) -> Result:
        try:
            result = await call_next(ctx)
        except Exception as exc:  # whatever failed, mapped or not: the job leaves its row
            ctx.outbox.add(_spooled(error_row(ctx, exc)))
            raise
        ctx.outbox.add(_spooled(result_row(ctx, result)))
        return result


def _spooled(row: LedgerRow) -> Write:
    text = row.model_dump_json()
    return lambda pipe: pipe.rpush(LEDGER_SPOOL, text)


def rejected_row(payload: Any, error: FleetError) -> LedgerRow | None:
    """The row of a job refused before the pipeline (a bad payload, an unknown tier);
    None when the payload carries no usable job id."""
    data = payload if isinstance(payload, dict) else {}
    job_id = data.get("job_id")
    if not isinstance(job_id, str) or not 8 <= len(job_id) <= 64:
        return None
    now = dt.datetime.now(dt.UTC)
    text = {k: str(data[k])[:200] for k in ("agent", "user", "tier", "model") if data.get(k)}
    return LedgerRow(job_id=job_id, kind=str(data.get("kind", "completion"))[:16],
                     agent=text.get("agent", "unknown"), user_id=text.get("user"),
                     tier=text.get("tier"), requested_model=text.get("model"),
                     status=JobStatus.REJECTED, error=type(error).__name__,
                     error_message=redact(error.message)[:500], created_at=now, finished_at=now)


def _ttft_ms(ctx: JobContext) -> float | None:
    first = ctx.sink.first_at if ctx.sink is not None else None
    return None if first is None else round(max(0.0, first - ctx.job.submitted_at) * 1000, 3)


def result_row(ctx: JobContext, result: Result) -> LedgerRow:
    usage = result.usage
    saved = ctx.cost_saved_usd
    if ctx.batched and not result.cache_hit:  # what the same answer costs live
        saved = max(0.0, round(cost_of(ctx.fleet.models[result.model], usage)
                               - result.cost_usd, 10))
    return LedgerRow.for_job(
        ctx.job, tier=result.tier, model=result.model, provider=result.provider,
        status=JobStatus.SUCCEEDED, cache_hit=result.cache_hit, attempts=result.attempts,
        fallback_used=result.fallback_used, prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens, cached_tokens=usage.cached_tokens,
        usage_estimated=usage.estimated, cost_usd=result.cost_usd,
        cost_saved_usd=saved, batch=ctx.batched and not result.cache_hit,
        latency_ms=result.latency_ms,
        ttft_ms=_ttft_ms(ctx),
        outcome=(auto_outcome(ctx.job.metadata, result.content)
                 if isinstance(result, CompletionResult) else None))


def billed(ctx: JobContext) -> tuple[Usage, float]:
    """What a job that ends without a result was billed all the same: the answers it
    could not use (not the JSON it asked for), a stream stopped part-way."""
    usage, cost = Usage(), 0.0
    for model, spent in ctx.discarded:
        cost += cost_of(ctx.prices(model), spent)
        usage = Usage(prompt_tokens=usage.prompt_tokens + spent.prompt_tokens,
                      completion_tokens=usage.completion_tokens + spent.completion_tokens,
                      cached_tokens=usage.cached_tokens + spent.cached_tokens,
                      estimated=usage.estimated or spent.estimated)
    return usage, round(cost, 10)


def error_row(ctx: JobContext, error: Exception) -> LedgerRow:
    """A failed, rejected or cancelled job: no answer, but what it was billed all the
    same (``billed``). An error outside the fleet's tree (a bug of ours) is ``failed``
    under its own class name, its message left out (it may quote anything)."""
    last = ctx.log[-1] if ctx.log else None
    if isinstance(error, FleetError):
        status, message = status_for_error(error), redact(error.message)
    else:
        status, message = JobStatus.FAILED, "unexpected error in the worker"
    usage, cost = billed(ctx)
    return LedgerRow.for_job(
        ctx.job, tier=ctx.tier, model=last.model if last else None,
        provider=last.provider if last else None, status=status, attempts=len(ctx.log),
        fallback_used=last is not None and last.model != ctx.primary_model,
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens, usage_estimated=usage.estimated, cost_usd=cost,
        ttft_ms=_ttft_ms(ctx), error=type(error).__name__, error_message=message)
