"""The client's cache short-circuit: a repeated question answered before it is queued.

A hit costs one Redis round trip (the lookup script that also marks the entry used)
and one RPUSH of its ledger row, instead of a Celery message, a worker slot and the
result backend. The key comes from ``schemas.cache_key``, exactly as the worker's
``CacheStep`` computes it. Writing is the worker's business: a miss here simply goes to
the queue, where the worker coalesces, calls and stores. Sync redis only: an agent
process loads no worker, HTTP or database code.
"""

from __future__ import annotations

import logging

import redis
from redis.exceptions import RedisError

from schemas import CompletionJob, CompletionResult, FleetConfig, JobStatus, LedgerRow, Settings
from schemas.cache_key import (
    LOOKUP_LUA,
    CachedAnswer,
    cache_enabled,
    cache_key,
    cache_mode,
    effective_max_tokens,
)
from schemas.evaluators import auto_outcome
from schemas.keys import CACHE_ENTRY, CACHE_LRU, LEDGER_SPOOL

__all__ = ["CacheShortCircuit"]

log = logging.getLogger(__name__)


class CacheShortCircuit:
    """Looks a job up in the fleet's response cache before it is sent."""

    def __init__(self, redis_url: str, fleet: FleetConfig, settings: Settings) -> None:
        self._fleet = fleet
        self._enabled = cache_enabled(settings)
        self._redis = redis.Redis.from_url(redis_url)
        self._lookup = self._redis.register_script(LOOKUP_LUA)

    def lookup(self, job: CompletionJob) -> CompletionResult | None:
        """The cached answer as ``job``'s result, its ledger row spooled; None on a miss,
        when the job may not read the cache, or when Redis does not answer."""
        if job.tier is None or cache_mode(job, self._fleet.cache, self._enabled) != "use":
            return None
        model = self._fleet.chain(job.tier, job.model)[0]
        key = cache_key(model, job, effective_max_tokens(self._fleet, job.tier, job))
        try:
            raw = self._lookup(keys=[CACHE_ENTRY.format(key=key), CACHE_LRU])
        except RedisError as exc:
            log.warning("cache lookup failed (%s): the job goes to the queue",
                        type(exc).__name__)
            return None
        if raw is None:
            return None
        try:
            answer = CachedAnswer.model_validate_json(raw)
        except ValueError:
            return None
        result = answer.result_for(job, job.tier).labelled(job.metadata)
        self._spool(job, result, answer.cost_usd)
        return result

    def _spool(self, job: CompletionJob, result: CompletionResult, saved: float) -> None:
        """The hit's ledger row, as a worker's accounting step would write it."""
        usage = result.usage
        row = LedgerRow.for_job(
            job, tier=result.tier, model=result.model, provider=result.provider,
            status=JobStatus.SUCCEEDED, cache_hit=True, prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens, cached_tokens=usage.cached_tokens,
            usage_estimated=usage.estimated, cost_usd=0.0, cost_saved_usd=saved,
            latency_ms=result.latency_ms, outcome=auto_outcome(job.metadata, result.content))
        try:
            self._redis.rpush(LEDGER_SPOOL, row.model_dump_json())
        except RedisError:
            log.error("ledger row of cache hit %s could not be spooled", job.job_id)

    def close(self) -> None:
        self._redis.close()
