"""Steps that account for jobs: exactly-once answers, the ledger row, the budgets.

``OnceStep`` answers a redelivered job from the outcome stored when it first finished,
so a job re-run after its worker died costs no second provider call and no second row.
``LedgerStep`` leaves one row per job, succeeded, failed or rejected. ``BudgetStep``
reserves the worst case before the provider is called and settles the actual after.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas import (
    BudgetConfig,
    BudgetExceededError,
    CompletionResult,
    FleetError,
    JobStatus,
    LedgerRow,
    decode_outcome,
    encode_result,
    status_for_error,
)
from schemas.evaluators import auto_outcome
from schemas.keys import JOB_DONE
from workers.accounting.budgets import BudgetLedger, Period, Refusal
from workers.accounting.flusher import spool_row
from workers.pipeline.pricing import worst_case_cost
from workers.pipeline.steps import Handler, JobContext, Result, Step
from workers.providers import redact

__all__ = ["BudgetStep", "LedgerStep", "OnceStep", "rejected_row"]

log = logging.getLogger(__name__)
Budgets = list[tuple[BudgetConfig, Period]]
#: How long a finished job's outcome is kept for redeliveries (Celery's result expiry).
DONE_TTL_S = 24 * 3600


class OnceStep(Step):
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def __call__(self, ctx: JobContext, call_next: Handler) -> Result:
        key = JOB_DONE.format(job_id=ctx.job.job_id)
        try:
            stored = await self._redis.get(key)
        except RedisError:
            stored = None
        if stored is not None:
            log.warning("job %s ran before: answering from its stored outcome", ctx.job.job_id)
            return decode_outcome(json.loads(stored))
        result = await call_next(ctx)
        try:
            await self._redis.set(key, json.dumps(encode_result(result)), ex=DONE_TTL_S)
        except RedisError:
            log.warning("could not store the outcome of job %s", ctx.job.job_id)
        return result


class LedgerStep(Step):
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def __call__(self, ctx: JobContext, call_next: Handler) -> Result:
        try:
            result = await call_next(ctx)
        except FleetError as exc:
            await spool_row(self._redis, _error_row(ctx, exc))
            raise
        await spool_row(self._redis, _result_row(ctx, result))
        return result


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


def _result_row(ctx: JobContext, result: Result) -> LedgerRow:
    usage = result.usage
    return LedgerRow.for_job(
        ctx.job, tier=result.tier, model=result.model, provider=result.provider,
        status=JobStatus.SUCCEEDED, cache_hit=result.cache_hit, attempts=result.attempts,
        fallback_used=result.fallback_used, prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens, cached_tokens=usage.cached_tokens,
        usage_estimated=usage.estimated, cost_usd=result.cost_usd,
        cost_saved_usd=float(ctx.state.get("cost_saved_usd", 0.0)),
        latency_ms=result.latency_ms,
        outcome=(auto_outcome(ctx.job.metadata, result.content)
                 if isinstance(result, CompletionResult) else None))


def _error_row(ctx: JobContext, error: FleetError) -> LedgerRow:
    """A failed or rejected job: no answer, so no tokens billed and no cost."""
    last = ctx.log[-1] if ctx.log else None
    return LedgerRow.for_job(
        ctx.job, tier=ctx.tier, model=last.model if last else None,
        provider=last.provider if last else None, status=status_for_error(error),
        attempts=len(ctx.log), fallback_used=last is not None and last.model != ctx.chain[0],
        error=type(error).__name__, error_message=redact(error.message)[:500])


class BudgetStep(Step):
    def __init__(self, budgets: BudgetLedger) -> None:
        self._budgets = budgets

    def _worst_case(self, ctx: JobContext) -> float:
        return max(worst_case_cost(ctx.fleet.models[m], ctx.prompt_tokens, ctx.max_tokens)
                   for m in ctx.chain)

    async def _reserve(self, ctx: JobContext) -> tuple[Budgets, Refusal | None]:
        budgets = self._budgets.applicable(agent=ctx.job.agent, user=ctx.job.user,
                                           tier=ctx.tier, models=ctx.chain,
                                           now=dt.datetime.now(dt.UTC))
        refusal = await self._budgets.reserve(ctx.job.job_id, self._worst_case(ctx), budgets)
        return budgets, refusal

    async def __call__(self, ctx: JobContext, call_next: Handler) -> Result:
        budgets, refusal = await self._reserve(ctx)
        if refusal is not None and refusal.budget.action == "downgrade" \
                and refusal.budget.downgrade_to and refusal.budget.downgrade_to != ctx.tier:
            log.info("job %s moves to tier %s: budget %s is full", ctx.job.job_id,
                     refusal.budget.downgrade_to, refusal.budget.name)
            ctx.move_to_tier(refusal.budget.downgrade_to)
            budgets, refusal = await self._reserve(ctx)
        if refusal is not None:
            raise BudgetExceededError(
                f"budget {refusal.budget.name!r} ({refusal.budget.period}, "
                f"{refusal.budget.scope}) has ${refusal.spent_usd:.6f} of "
                f"${refusal.limit_usd:.2f} spent or reserved: this job could cost "
                f"${self._worst_case(ctx):.6f}", budget=refusal.budget.name,
                spent_usd=refusal.spent_usd, limit_usd=refusal.limit_usd,
                period=refusal.period.label)
        result: Result | None = None
        try:
            result = await call_next(ctx)
            return result
        finally:
            await self._settle(ctx, budgets, result)

    async def _settle(self, ctx: JobContext, budgets: Budgets,
                      result: Result | None) -> None:
        cost = 0.0 if result is None else result.cost_usd
        model = None if result is None else result.model
        amounts = [cost if not b.scope.startswith("model:") or b.scope == f"model:{model}"
                   else 0.0 for b, _ in budgets]
        try:
            await self._budgets.settle(ctx.job.job_id, budgets, amounts)
        except RedisError:
            log.error("could not settle the budgets of job %s; beat will repair them",
                      ctx.job.job_id)


