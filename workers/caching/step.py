"""The response cache as a pipeline step: after accounting, before budgets.

There, a hit still leaves its ledger row (accounting sees the result, and the cost it
saved in ``ctx.cost_saved_usd``), and reserves no budget: it spends nothing.
On a miss the step coalesces identical jobs in flight (one provider call serves them
all; a streamed job reads the call's stream live, ``workers.caching.relay``), calls on,
and stores a whole answer of the chain's first model. The job's
``cache`` field and the fleet's ``[cache]`` section decide what it may read and write
(``schemas.cache_key.cache_mode``).
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from schemas import CompletionJob, CompletionResult, ConfigError, FleetConfig, Settings
from schemas.cache_key import CachedAnswer, cache_enabled, cache_key, cache_mode, is_cacheable
from workers.caching.coalescer import Coalescer
from workers.caching.relay import StreamRelay
from workers.caching.response import ResponseCache
from workers.caching.semantic import Embedder, SemanticCache
from workers.pipeline.steps import Handler, JobContext, Result, Step

__all__ = ["CacheStep"]

log = logging.getLogger(__name__)


class CacheStep(Step):
    """Answer from the cache, or make one call for all identical jobs and keep it.

    ``embed`` (the pipeline's embedding path) is needed only when
    ``[cache].semantic_tiers`` names tiers: the semantic lookup embeds through it.
    """

    def __init__(self, redis: aioredis.Redis, fleet: FleetConfig, settings: Settings,
                 embed: Embedder | None = None) -> None:
        self._fleet, self._redis = fleet, redis
        self._enabled = cache_enabled(settings)
        self._cache = ResponseCache(redis, ttl_s=settings.cache_ttl_seconds,
                                    max_size=settings.cache_max_size)
        self._coalescer = Coalescer(redis)
        self._semantic: SemanticCache | None = None
        if fleet.cache.semantic_tiers and self._enabled:
            if embed is None:
                raise ConfigError("[cache].semantic_tiers needs the pipeline's embedding path",
                                  key="cache.semantic_tiers")
            self._semantic = SemanticCache(redis, fleet, embed, self._cache,
                                           ttl_s=settings.cache_ttl_seconds,
                                           max_size=settings.cache_max_size)

    async def __call__(self, ctx: JobContext, call_next: Handler) -> Result:
        job = ctx.job
        if not isinstance(job, CompletionJob):
            return await call_next(ctx)
        mode = cache_mode(job, self._fleet.cache, self._enabled)
        if mode == "skip":
            return await call_next(ctx)
        key = cache_key(ctx.primary_model, job, ctx.max_tokens)
        if mode == "refresh":
            query = await self._semantic.query(ctx) if self._semantic else None
            return await self._call_and_store(ctx, call_next, key, query)
        # One look finds the answer, or makes this job the one that calls for its key,
        # or has it wait for the identical job that already is.
        relay = StreamRelay(self._redis, ctx.sink) if ctx.sink is not None else None
        try:
            outcome = await self._coalescer.run(
                key, lambda: self._lead(ctx, call_next, key, relay),
                timeout=self._wait_limit(ctx), token=job.job_id,
                watch=relay.follow if relay is not None else None)
            if relay is not None and isinstance(outcome, CachedAnswer):
                outcome = await relay.settle(answered=True) or outcome
        except BaseException:
            ctx.outbox.add(self._coalescer.release(key, job.job_id))
            raise
        finally:
            if relay is not None:
                await relay.close()
        if isinstance(outcome, CachedAnswer):
            return self._hit(ctx, outcome)
        if not is_cacheable(outcome, ctx.primary_model):
            ctx.outbox.add(self._coalescer.release(key, job.job_id))
        return outcome

    async def has_answer(self, ctx: JobContext) -> bool:
        """Does the exact cache hold this job's answer? (A job that could wait for a
        batch is answered now instead, by this step.)"""
        job = ctx.job
        if not isinstance(job, CompletionJob) or cache_mode(job, self._fleet.cache,
                                                            self._enabled) != "use":
            return False
        return await self._cache.get(cache_key(ctx.primary_model, job, ctx.max_tokens)) \
            is not None

    async def _lead(self, ctx: JobContext, call_next: Handler, key: str,
                    relay: StreamRelay | None) -> CompletionResult | CachedAnswer:
        """The job holding the key's lock (or done waiting for it): the answer whose
        stream it already relays, else look by meaning (here, so that a burst of
        identical jobs embeds its question once), else call and store."""
        if relay is not None:
            shared = await relay.settle(answered=False)
            if shared is not None:
                return shared
        query = None
        if self._semantic is not None:
            query = await self._semantic.query(ctx)
            answer = await self._semantic.find(ctx, query)
            if answer is not None:
                return answer
        return await self._call_and_store(ctx, call_next, key, query)

    async def _call_and_store(self, ctx: JobContext, call_next: Handler, key: str,
                              query: bytes | None) -> CompletionResult:
        result = await call_next(ctx)
        assert isinstance(result, CompletionResult)
        if is_cacheable(result, ctx.primary_model):
            ctx.outbox.add(self._cache.write(key, CachedAnswer.of(result)))
            if self._semantic is not None:
                await self._semantic.add(ctx, key, query)
        return result

    def _hit(self, ctx: JobContext, answer: CachedAnswer) -> CompletionResult:
        assert isinstance(ctx.job, CompletionJob)
        ctx.cost_saved_usd = answer.cost_usd
        return answer.result_for(ctx.job, ctx.tier)

    def _wait_limit(self, ctx: JobContext) -> float:
        """Wait for an identical job no longer than the fleet allows, nor past the
        job's own deadline (then the job calls on and its deadline decides)."""
        limit = self._fleet.cache.coalesce_timeout_s
        left = ctx.deadline.remaining()
        return limit if left is None else max(0.0, min(limit, left))

    async def close(self) -> None:
        await self._coalescer.close()
