"""The budget step: reserve the worst case before the provider is called, settle the
actual after (``workers.accounting.budgets`` keeps the counters)."""

from __future__ import annotations

import datetime as dt
import logging

from redis.exceptions import RedisError

from schemas import BudgetConfig, BudgetExceededError, CompletionJob
from workers.accounting.budgets import BudgetLedger, Period, Refusal
from workers.accounting.ledger import billed
from workers.pipeline.pricing import worst_case_cost
from workers.pipeline.steps import Handler, JobContext, Result, Step

__all__ = ["BudgetStep"]

log = logging.getLogger(__name__)
Budgets = list[tuple[BudgetConfig, Period]]


class BudgetStep(Step):
    def __init__(self, budgets: BudgetLedger) -> None:
        self._budgets = budgets

    def _worst_case(self, ctx: JobContext) -> float:
        """The dearest model's cost of a whole call, as many times as a job that wants
        JSON may ask it again (``[retry].invalid_output_retries``)."""
        once = max(worst_case_cost(ctx.prices(m), ctx.prompt_tokens, ctx.max_tokens)
                   for m in ctx.chain)
        job = ctx.job
        asks = 1 if not isinstance(job, CompletionJob) or ctx.batched or (
            job.response_format is None and not job.tools) else \
            1 + ctx.fleet.retry.invalid_output_retries
        return once * asks

    async def _reserve(self, ctx: JobContext, charge: str) -> tuple[Budgets, Refusal | None]:
        budgets = self._budgets.applicable(agent=ctx.job.agent, user=ctx.job.user,
                                           tier=ctx.tier, models=ctx.chain,
                                           now=dt.datetime.now(dt.UTC))
        refusal = await self._budgets.reserve(charge, self._worst_case(ctx), budgets)
        return budgets, refusal

    async def __call__(self, ctx: JobContext, call_next: Handler) -> Result:
        charge = ctx.charge_id
        budgets, refusal = await self._reserve(ctx, charge)
        if refusal is not None and refusal.budget.action == "downgrade" \
                and refusal.budget.downgrade_to and refusal.budget.downgrade_to != ctx.tier:
            log.info("job %s moves to tier %s: budget %s is full", ctx.job.job_id,
                     refusal.budget.downgrade_to, refusal.budget.name)
            ctx.move_to_tier(refusal.budget.downgrade_to)
            budgets, refusal = await self._reserve(ctx, charge)
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
            await self._settle(ctx, charge, budgets, result)

    async def _settle(self, ctx: JobContext, charge: str, budgets: Budgets,
                      result: Result | None) -> None:
        # A job without a result pays what it was billed all the same (a stream stopped
        # part-way, answers it could not use), as its ledger row does.
        cost = billed(ctx)[1] if result is None else result.cost_usd
        model = None if result is None else result.model
        amounts = [cost if not b.scope.startswith("model:") or b.scope == f"model:{model}"
                   else 0.0 for b, _ in budgets]
        try:
            await self._budgets.settle(charge, budgets, amounts)
        except RedisError:
            log.error("could not settle the budgets of %s; beat will repair them", charge)
