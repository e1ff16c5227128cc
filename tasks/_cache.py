"""The client's cache short-circuit: a repeated question answered before it is queued.

A lookup is one MGET, for one job or many; a hit then costs one more round trip that
marks it used in the LRU index and spools its ledger row, instead of a Celery message, a
worker slot and a result. The key comes from ``schemas.cache_key``, exactly as the
worker's ``CacheStep`` computes it. Writing is the worker's business: a miss here simply goes to
the queue, where the worker coalesces, calls and stores. Sync redis only: an agent
process loads no worker, HTTP or database code.
"""

from __future__ import annotations

import logging
import time

from redis.exceptions import RedisError

from schemas import (
    CompletionJob,
    CompletionResult,
    FleetConfig,
    FleetUnavailableError,
    JobStatus,
    LedgerRow,
    Settings,
)
from schemas.cache_key import (
    CachedAnswer,
    cache_enabled,
    cache_key,
    cache_mode,
    effective_max_tokens,
)
from schemas.evaluators import auto_outcome
from schemas.keys import BATCH_WAITING, CACHE_ENTRY, CACHE_LRU, CANCEL, JOB_STATE, LEDGER_SPOOL
from tasks._redis import sync_client

__all__ = ["CacheShortCircuit"]

log = logging.getLogger(__name__)
#: How long a cancel key stays (longer than any job waits in a queue).
CANCEL_TTL_S = 3600
#: A cancelled job's state: ``cancelled`` unless a delivery runs it or it ended; a job
#: waiting for a provider batch has not started, so its waiting mark gives way too.
#: KEYS: state. ARGV: the waiting mark, seconds.
_CANCEL_STATE = """
local state = redis.call('GET', KEYS[1])
if not state or state == ARGV[1] then
  redis.call('SET', KEYS[1], 'cancelled', 'EX', ARGV[2])
end
return 0
"""


class CacheShortCircuit:
    """Looks a job up in the fleet's response cache before it is sent."""

    def __init__(self, redis_url: str, fleet: FleetConfig, settings: Settings) -> None:
        self._fleet = fleet
        self._enabled = cache_enabled(settings)
        # With cost tracking off no flusher drains the spool: a hit leaves no row.
        self._accounting = settings.enable_cost_tracking
        self._redis = sync_client(redis_url)
        self._cancel_state = self._redis.register_script(_CANCEL_STATE)

    def key_for(self, job: CompletionJob) -> str | None:
        """The job's cache entry key; None when it may not read the cache."""
        if job.tier is None or cache_mode(job, self._fleet.cache, self._enabled) != "use":
            return None
        model = self._fleet.chain(job.tier, job.model)[0]
        return CACHE_ENTRY.format(
            key=cache_key(model, job, effective_max_tokens(self._fleet, job.tier, job)))

    def lookup(self, job: CompletionJob) -> CompletionResult | None:
        """The cached answer as ``job``'s result, its ledger row spooled; None on a miss,
        when the job may not read the cache, or when Redis does not answer."""
        return self.lookup_many([job])[0]

    def lookup_many(self, jobs: list[CompletionJob]) -> list[CompletionResult | None]:
        """``lookup`` for many jobs in one round trip (and one for the hits' rows)."""
        found: list[CompletionResult | None] = [None] * len(jobs)
        keyed = [(i, key) for i, job in enumerate(jobs) if (key := self.key_for(job))]
        if not keyed:
            return found
        try:
            raws = self._redis.mget([key for _, key in keyed])
        except RedisError as exc:
            log.warning("cache lookup failed (%s): the jobs go to the queue",
                        type(exc).__name__)
            return found
        answered = self.answers([(jobs[i], key, raw if isinstance(raw, bytes) else None)
                                 for (i, key), raw in zip(keyed, raws, strict=True)])
        for (index, _), result in zip(keyed, answered, strict=True):
            found[index] = result
        return found

    def answers(self, entries: list[tuple[CompletionJob, str, bytes | None]]
                ) -> list[CompletionResult | None]:
        """Raw cache entries read for jobs (``(job, key, raw)``, raw None on a miss) as
        their results: the hits marked used in the LRU index and their ledger rows
        spooled, in one round trip. None for a miss or an entry that does not parse."""
        results: list[CompletionResult | None] = []
        rows: list[str] = []
        used: dict[str, float] = {}
        for job, key, raw in entries:
            result = None
            if raw is not None:
                try:
                    answer = CachedAnswer.model_validate_json(raw)
                except ValueError:
                    answer = None
                if answer is not None:
                    result = answer.result_for(job, job.tier).labelled(job.metadata)
                    used[key] = time.time() * 1000
                    rows.append(self._row(job, result, answer.cost_usd))
            results.append(result)
        if used:
            try:
                pipe = self._redis.pipeline(transaction=False)
                pipe.zadd(CACHE_LRU, used)  # marked used: the LRU keeps it
                if rows and self._accounting:
                    pipe.rpush(LEDGER_SPOOL, *rows)
                pipe.execute()
            except RedisError:
                log.error("ledger rows of %d cache hits could not be spooled", len(rows))
        return results

    def _row(self, job: CompletionJob, result: CompletionResult, saved: float) -> str:
        """The hit's ledger row, as a worker's accounting step would write it."""
        usage = result.usage
        return LedgerRow.for_job(
            job, tier=result.tier, model=result.model, provider=result.provider,
            status=JobStatus.SUCCEEDED, cache_hit=True, prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens, cached_tokens=usage.cached_tokens,
            usage_estimated=usage.estimated, cost_usd=0.0, cost_saved_usd=saved,
            latency_ms=result.latency_ms,
            outcome=auto_outcome(job.metadata, result.content)).model_dump_json()

    def cancel(self, job_id: str) -> None:
        """Set the job's cancel key (its worker looks for it in flight:
        ``workers.pipeline.cancel``), and its state to cancelled unless a delivery runs
        it or it ended (one that comes later refuses it; a job waiting for a batch is
        refused when its batch answers). Here because this is the client's one
        synchronous Redis connection."""
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.set(CANCEL.format(job_id=job_id), "1", ex=CANCEL_TTL_S)
            self._cancel_state(keys=[JOB_STATE.format(job_id=job_id)],
                               args=[BATCH_WAITING, CANCEL_TTL_S], client=pipe)
            pipe.execute()
        except RedisError as exc:
            raise FleetUnavailableError(f"cannot cancel job {job_id}: Redis does not answer "
                                        f"({type(exc).__name__})") from None

    def close(self) -> None:
        self._redis.close()
