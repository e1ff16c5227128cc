"""Tries of one model: the one place where retries and their backoff are applied."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from schemas import Attempt, ProviderError, RetryConfig
from workers.observability import traces
from workers.pipeline.breaker import Breaker, route_key
from workers.pipeline.deadline import Deadline
from workers.pipeline.retry import compute_backoff

__all__ = ["AttemptRunner", "QuotaGate", "QuotaUse"]

T = TypeVar("T")


class QuotaGate(Protocol):
    """The providers' quotas, fleet-wide (``workers.admission``): wait for a model's
    turn before a call; hold a model's quota off for a 429's Retry-After."""

    async def before_call(self, model: str, tokens: int, job_id: str, *,
                          prepaid: bool) -> None: ...

    async def rate_limited(self, model: str, retry_after: float) -> None: ...


@dataclass
class QuotaUse:
    """A job's use of quotas: its tokens per call, and the model whose first call
    admission already reserved (taken by that call)."""

    job_id: str
    tokens: int
    prepaid: str | None = None


@dataclass
class AttemptRunner:
    """Calls one model until it answers, its error is not worth retrying, or retries
    run out. Every call is appended to ``log``."""

    retry: RetryConfig
    breaker: Breaker
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    #: Set when the fleet file gives providers quotas.
    quotas: QuotaGate | None = None

    async def run(self, call: Callable[[], Awaitable[T]], *, model: str, provider: str,
                  max_retries: int, deadline: Deadline, log: list[Attempt],
                  quota: QuotaUse | None = None) -> T:
        route = route_key(provider, model)
        for attempt in range(1, max_retries + 2):
            deadline.check()
            if self.quotas is not None and quota is not None:
                prepaid, quota.prepaid = quota.prepaid == model, None
                await self.quotas.before_call(model, quota.tokens, quota.job_id,
                                              prepaid=prepaid)
            started = time.perf_counter()
            try:
                value = await self._traced(call, deadline, model, provider, attempt)
            except ProviderError as exc:
                log.append(Attempt(model=model, provider=provider, ok=False,
                                   latency_ms=_ms_since(started), status_code=exc.status_code,
                                   error=type(exc).__name__))
                if exc.retryable:
                    await self.breaker.record_failure(route)
                if self.quotas is not None and exc.status_code == 429:
                    await self.quotas.rate_limited(model, float(exc.retry_after or 1.0))
                delay = self._delay(exc, attempt, max_retries, deadline)
                if delay is None:
                    raise
                await self.sleep(delay)
                continue
            log.append(Attempt(model=model, provider=provider, ok=True,
                               latency_ms=_ms_since(started), status_code=200))
            await self.breaker.record_success(route)
            return value
        raise AssertionError("unreachable: the last attempt raises or returns")

    async def _traced(self, call: Callable[[], Awaitable[T]], deadline: Deadline, model: str,
                      provider: str, attempt: int) -> T:
        """The call, in a span of its own when the process traces."""
        tracer = traces.tracer()
        if tracer is None:
            return await self._bounded(call, deadline)
        return await traces.attempt(tracer, lambda: self._bounded(call, deadline),
                                    model=model, provider=provider, number=attempt)

    async def _bounded(self, call: Callable[[], Awaitable[T]], deadline: Deadline) -> T:
        left = deadline.remaining()
        if left is None:
            return await call()
        try:
            return await asyncio.wait_for(call(), timeout=max(left, 0.001))
        except TimeoutError:
            deadline.check()
            raise

    def _delay(self, exc: ProviderError, attempt: int, max_retries: int,
               deadline: Deadline) -> float | None:
        """Seconds before the next try, or None to give this model up."""
        if not exc.retryable or attempt > max_retries:
            return None
        delay = compute_backoff(attempt, base=self.retry.backoff_base_s,
                                cap=self.retry.backoff_max_s, rng=self.rng)
        if exc.retry_after is not None:  # the provider said when: a 429 or a 503
            if exc.retry_after > self.retry.retry_after_max_s:
                return None  # the provider asks for longer than we wait: next model
            delay = max(delay, float(exc.retry_after))
        left = deadline.remaining()
        if left is not None and delay >= left:
            return None
        return delay


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
