"""Admission: before a job runs, the fleet's limits and the quota of the model that will
answer it, in one Redis script; after it, what it reserved is settled.

A job that fits runs now. One whose turn is near enough (``[admission] reserve_ahead_s``;
any distance for a high-priority job) reserves that turn and waits parked in Redis until
it comes, holding no worker thread; one further off waits parked unreserved and asks
again at its place in the rate's waiting line (``RateLimiter.line_up``), so that jobs
arriving later at a higher priority are not queued behind it. A job
whose turn would come after its deadline, or that a ``reject`` limit refuses, fails with
RateLimitedError naming the limit. After the job, tokens reserved at their worst case are
given back down to what it used, its places among jobs in flight are left, and a quota
request it never made (a cache hit) is given back.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import redis.asyncio as aioredis

from schemas import (
    CompletionResult,
    EmbeddingResult,
    FleetConfig,
    RateLimitedError,
    Reservation,
    Ticket,
)
from workers.admission.limiter import Decision, Place, Rate, RateLimiter
from workers.admission.plan import job_tokens, limits_of, quota_rates
from workers.pipeline.attempts import QuotaGate, QuotaUse
from workers.pipeline.steps import JobContext

__all__ = ["Admission", "Admitted", "Parked", "Quotas"]

#: A turn this close is waited for in place: parking costs more than it saves.
WAIT_IN_PLACE_S = 0.05
#: How long a place among jobs in flight is held past the job's deadline if its end is
#: never seen (its worker died).
LEASE_MARGIN_S = 30.0


@dataclass(frozen=True, slots=True)
class Admitted:
    """Run the job now; ``ticket`` is what to settle after it (None: nothing held)."""

    ticket: Ticket | None


@dataclass(frozen=True, slots=True)
class Parked:
    """Send the job again in ``wait_s``; ``ticket`` is set when its turn is reserved."""

    wait_s: float
    ticket: Ticket | None


class Admission:
    """The fleet's limits and the providers' quotas, fleet-wide."""

    def __init__(self, redis: aioredis.Redis, fleet: FleetConfig) -> None:
        self._fleet = fleet
        self.limiter = RateLimiter(redis)
        self._rng = random.Random()
        self.has_quotas = any(m.rpm or m.tpm for m in fleet.models.values()) or any(
            p.rpm or p.tpm for p in fleet.providers.values())
        #: Off entirely (no script call) when nothing is limited and no key brings limits.
        self.fleet_limited = bool(fleet.limits) or self.has_quotas

    def applies(self, ctx: JobContext) -> bool:
        return self.fleet_limited or bool(ctx.job.key_limits)

    async def admit(self, ctx: JobContext) -> Admitted | Parked:
        """Admit the job, or say when to send it again; RateLimitedError when it cannot
        run in time or a ``reject`` limit refuses it."""
        job = ctx.job
        if job.ticket is not None and job.ticket.admitted:
            self._prepay(ctx, job.ticket)
            return Admitted(job.ticket)  # its reserved turn has come
        rates, places = limits_of(ctx)
        quotas = quota_rates(self._fleet, ctx.primary_model, job_tokens(ctx)) \
            if self.has_quotas and ctx.chain else []
        if not rates and not places and not quotas:
            return Admitted(None)
        left = ctx.deadline.remaining()
        left = self._fleet.job_time_limit_s if left is None else max(0.0, left)
        ahead = left if job.priority == "high" else min(left, self._fleet.admission.reserve_ahead_s)
        decision = await self.limiter.admit(
            [*rates, *quotas], places, job.job_id, horizon_s=ahead,
            lease_s=left + self._fleet.job_time_limit_s + LEASE_MARGIN_S)
        if decision.status in ("refused", "too_big"):
            raise _refusal(decision, job_tokens(ctx))
        if decision.status == "not_yet":
            if decision.wait_s >= left:
                raise _refusal(decision, job_tokens(ctx), waited=True)
            # Spread the returns: many jobs told the same wait should not all come back
            # at once to ask again. Behind a rate, each takes its place in the rate's
            # line (one job's worth of the rate apart); it asks again no later than its
            # deadline allows, and is refused then if it still cannot run in time.
            if isinstance(decision.deciding, Rate):
                park = await self.limiter.line_up(decision.deciding, decision.wait_s)
                return Parked(min(park, max(decision.wait_s, left * 0.9)), None)
            return Parked(decision.wait_s * self._rng.uniform(1.0, 1.25), None)
        ticket = Ticket(
            admitted=True,
            tokens=[Reservation(key=r.key, per_ms=r.per_ms, amount=r.amount)
                    for r in (*rates, *quotas) if r.kind == "tpm"],
            slots=[p.key for p in places],
            requests=[Reservation(key=r.key, per_ms=r.per_ms, amount=1)
                      for r in quotas if r.kind == "rpm"])
        if decision.status == "later" and decision.wait_s > WAIT_IN_PLACE_S:
            return Parked(decision.wait_s, ticket)
        if decision.status == "later":
            await asyncio.sleep(decision.wait_s)
        self._prepay(ctx, ticket)
        return Admitted(ticket)

    def _prepay(self, ctx: JobContext, ticket: Ticket) -> None:
        if ticket.requests or self.has_quotas:
            ctx.quota = QuotaUse(job_id=ctx.job.job_id, tokens=job_tokens(ctx),
                                 prepaid=ctx.primary_model if ticket.requests else None)

    async def settle(self, ticket: Ticket, ctx: JobContext,
                     result: CompletionResult | EmbeddingResult | None) -> None:
        """Give back what the job did not use; leave its places."""
        called = bool(ctx.log)
        used = 0
        if result is not None and not result.cache_hit:
            used = result.usage.prompt_tokens + result.usage.completion_tokens
        back: list[tuple[str, float, int]] = []
        for reservation in ticket.tokens:
            unused = reservation.amount - used if (result is not None or not called) else 0
            if unused > 0:
                back.append((reservation.key, reservation.per_ms, unused))
        if not called:
            back += [(r.key, r.per_ms, r.amount) for r in ticket.requests]
        if back or ticket.slots:
            await self.limiter.settle(back, ticket.slots, ctx.job.job_id)


def _refusal(decision: Decision, tokens: int, waited: bool = False) -> RateLimitedError:
    deciding = decision.deciding
    name = deciding.name if deciding is not None else "?"
    if isinstance(deciding, Place):
        kind, size = "concurrency", deciding.limit
        what = f"{size} jobs in flight"
    else:
        assert isinstance(deciding, Rate)
        kind, size = ("requests" if deciding.kind == "rpm" else "tokens"), deciding.limit
        what = f"{size} {kind} per minute"
    if decision.status == "too_big":
        return RateLimitedError(
            f"the job's {tokens} tokens (prompt and max_tokens) exceed limit {name!r} "
            f"({what}): it can never fit; lower max_tokens", limit=name, kind=kind,
            retry_after=None, limit_value=size, remaining=0)
    if waited:
        message = (f"limit {name!r} ({what}) would let the job run only after its "
                   f"timeout (in {decision.wait_s:.1f}s)")
    else:
        message = f"limit {name!r} ({what}) is reached; it fits again in " \
                  f"{decision.wait_s:.1f}s"
    return RateLimitedError(message, limit=name, kind=kind,
                            retry_after=round(max(decision.wait_s, 0.001), 3),
                            limit_value=size, remaining=0)


class Quotas(QuotaGate):
    """The quota gate of the provider chain: a call beyond the admitted first (a retry,
    a fallback model) waits for its model's turn, in place; a 429 holds the model's
    quota off for its Retry-After, fleet-wide."""

    def __init__(self, limiter: RateLimiter, fleet: FleetConfig) -> None:
        self._limiter, self._fleet = limiter, fleet

    async def before_call(self, model: str, tokens: int, job_id: str, *,
                          prepaid: bool) -> None:
        rates = quota_rates(self._fleet, model, tokens)
        if prepaid:  # its turn is reserved; a 429 since holds it off all the same
            if rates:
                held = await self._limiter.held_s(sorted({r.name for r in rates}))
                if held > 0:
                    await asyncio.sleep(held)
            return
        while rates:
            decision = await self._limiter.admit(rates, (), job_id, horizon_s=60.0,
                                                 lease_s=1.0)
            if decision.status in ("admitted", "later"):
                await asyncio.sleep(decision.wait_s)
                return
            if decision.status == "too_big":
                return  # a quota smaller than one call: the provider decides
            await asyncio.sleep(min(decision.wait_s, 5.0))

    async def rate_limited(self, model: str, retry_after: float) -> None:
        for rate in quota_rates(self._fleet, model, 0):
            if rate.kind == "rpm":
                await self._limiter.hold_off(rate, retry_after)

