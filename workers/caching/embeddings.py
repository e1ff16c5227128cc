"""The per-text embedding cache as a pipeline step: after accounting, before budgets.

An embedding depends only on (model, dimensions, text), so each text is cached on its
own: a job that re-embeds known texts (a re-indexed document, a repeated query) pays
only for the texts never seen. One MGET per job finds the hits; only the misses go on
to the budget and the provider (in a narrowed copy of the context), and the
vectors are put back in the order of the job's texts. Usage and cost are the misses'.
"""

from __future__ import annotations

import hashlib
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas import EmbeddingJob, EmbeddingResult, Settings, Usage
from schemas.cache_key import cache_enabled
from schemas.keys import CACHE_EMBEDDING
from workers.caching.float32 import from_float32, to_float32
from workers.pipeline.pricing import cost_of, count_tokens
from workers.pipeline.steps import Handler, JobContext, Result, Step

__all__ = ["EmbeddingCacheStep", "embedding_key"]

log = logging.getLogger(__name__)


def embedding_key(model: str, dimensions: int | None, text: str) -> str:
    """The Redis key of one text's vector: sha256 over the three fields, NUL-separated
    (no field can contain another's separator and shift the boundary)."""
    digest = hashlib.sha256(
        f"{model}\x00{dimensions or ''}\x00{text}".encode()).hexdigest()
    return CACHE_EMBEDDING.format(key=digest)


class EmbeddingCacheStep(Step):
    """Answer known texts from Redis; send only the others on."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._enabled = cache_enabled(settings)
        self._ttl_s = max(1, int(settings.cache_ttl_seconds))

    async def __call__(self, ctx: JobContext, call_next: Handler) -> Result:
        job = ctx.job
        if ctx.is_completion or not self._enabled or not isinstance(job, EmbeddingJob):
            return await call_next(ctx)
        # A vector of another model lives in another space: keys name the primary model.
        model = ctx.primary_model
        keys = [embedding_key(model, job.dimensions, t) for t in job.texts]
        found = await self._lookup(keys)
        missing = [i for i, v in enumerate(found) if v is None]
        hits = len(job.texts) - len(missing)
        ctx.cost_saved_usd = cost_of(ctx.fleet.models[model], Usage(
            prompt_tokens=sum(count_tokens(t) for t, v in zip(job.texts, found, strict=True)
                              if v is not None)))
        if not missing:
            return self._all_hits(ctx, job, model, found)
        inner = ctx
        if hits:
            texts = [job.texts[i] for i in missing]
            inner = ctx.narrowed(job=job.model_copy(update={"texts": texts}),
                                 prompt_tokens=sum(map(count_tokens, texts)))
        result = await call_next(inner)
        assert isinstance(result, EmbeddingResult)
        if result.model != model:
            # A fallback model answered the misses: its vectors cannot sit beside the
            # cached ones, nor be kept under this model's keys.
            return await self._refetch(ctx, call_next, job, result) if hits else result
        await self._store([keys[i] for i in missing], result.vectors)
        for position, vector in zip(missing, result.vectors, strict=True):
            found[position] = vector
        vectors = [v for v in found if v is not None]
        return result.model_copy(update={"job_id": job.job_id, "vectors": vectors})

    async def _lookup(self, keys: list[str]) -> list[list[float] | None]:
        """One MGET for the whole job; Redis being down means every text misses."""
        try:
            values = await self._redis.mget(keys)
        except RedisError:
            log.warning("embedding cache unreachable: every text goes to the provider")
            return [None] * len(keys)
        return [from_float32(v).tolist() if isinstance(v, bytes) and v else None for v in values]

    async def _store(self, keys: list[str], vectors: list[list[float]]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, vector in zip(keys, vectors, strict=True):
                    pipe.set(key, to_float32(vector), ex=self._ttl_s)
                await pipe.execute()
        except RedisError:
            log.warning("could not store %d embeddings in the cache", len(keys))

    def _all_hits(self, ctx: JobContext, job: EmbeddingJob, model: str,
                  found: list[list[float] | None]) -> EmbeddingResult:
        vectors = [v for v in found if v is not None]
        return EmbeddingResult(
            job_id=job.job_id, vectors=vectors, dimensions=len(vectors[0]), model=model,
            provider=ctx.fleet.models[model].provider, tier=ctx.tier,
            requested_model=job.model, agent=job.agent, user=job.user, usage=Usage(),
            cost_usd=0.0, latency_ms=0.0, cache_hit=True)

    async def _refetch(self, ctx: JobContext, call_next: Handler, job: EmbeddingJob,
                       partial: EmbeddingResult) -> Result:
        """The rare path: misses answered by a fallback model. Embed the whole job
        again on the chain (one model answers all) and keep none of it. The second
        round reserves and settles budgets apart (``JobContext.charge_id``)."""
        log.info("job %s: misses answered by %s; re-embedding every text", job.job_id,
                 partial.model)
        ctx.cost_saved_usd = 0.0
        result = await call_next(ctx.narrowed(prompt_tokens=sum(map(count_tokens, job.texts))))
        assert isinstance(result, EmbeddingResult)
        usage = Usage(prompt_tokens=partial.usage.prompt_tokens + result.usage.prompt_tokens)
        return result.model_copy(update={
            "job_id": job.job_id, "usage": usage, "cost_usd": partial.cost_usd + result.cost_usd,
            "attempt_log": list(ctx.log)})
