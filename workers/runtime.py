"""One per worker process: an event loop thread and what lives on it.

Jobs run on this loop, started straight from Celery's consumer (``workers.intake``);
the other tasks run in Celery's pool threads, and those that need the loop hand their
work to it and wait. So a worker process keeps as many provider calls in flight as its
prefetch window (``--concurrency``) lets it take jobs, all on one pooled HTTP client
(httpx's API over aiohttp's transport, which stays fast at high concurrency where
httpx's own async transport does not).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

import httpx
import redis.asyncio as aioredis
from httpx_aiohttp import AiohttpTransport
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from schemas import EmbeddingJob, EmbeddingResult, FleetConfig, Settings
from tasks._redis import async_pool, sync_client
from tasks._wire import JobWire
from workers.accounting.budget_step import BudgetStep
from workers.accounting.budgets import BudgetLedger
from workers.accounting.flusher import LedgerFlusher
from workers.accounting.ledger import LedgerStep
from workers.accounting.once import OnceStep
from workers.admission.gate import Admission, Quotas
from workers.admission.parking import Mover, Parking
from workers.batching import Batcher, BatchStore, Deferral
from workers.caching.embeddings import EmbeddingCacheStep
from workers.caching.step import CacheStep
from workers.pipeline.attempts import AttemptRunner
from workers.pipeline.breaker import Breaker
from workers.pipeline.cancel import CancelStep
from workers.pipeline.chain import Pipeline
from workers.pipeline.steps import Step
from workers.pipeline.stream_step import StreamStep
from workers.providers import build_batch_apis, build_providers
from workers.recovery.held import held_tags
from workers.recovery.sweeper import Sweeper
from workers.store.engines import async_engine

__all__ = ["WorkerRuntime", "close_runtime", "get_runtime", "warm_up"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Connections per process to all providers together.
MAX_CONNECTIONS = 512
#: Connections per process to Redis (cache, spool, budgets, breaker).
REDIS_CONNECTIONS = 64
#: Retries of a Redis command that finds no server, about a second apart at most: a
#: job's writes outlive a broker restart of about this many seconds.
REDIS_RETRIES = 45


class WorkerRuntime:
    def __init__(self, fleet: FleetConfig, settings: Settings, redis_url: str,
                 env: Mapping[str, str] | None = None) -> None:
        self.fleet = fleet
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="llmfleet-io")
        self._thread.start()
        self.flusher: LedgerFlusher | None = None
        #: Jobs that can wait for a provider batch, and the batcher (with Postgres only).
        self.deferral: Deferral | None = None
        self.batcher: Batcher | None = None
        #: For housekeeping bodies, which run synchronously in pool threads.
        self.sync_redis = sync_client(redis_url)
        self.pipeline: Pipeline = self.run(self._build(redis_url, dict(env or os.environ)))

    async def _build(self, redis_url: str, env: dict[str, str]) -> Pipeline:
        limits = httpx.Limits(max_connections=MAX_CONNECTIONS,
                              max_keepalive_connections=MAX_CONNECTIONS)
        self.http = httpx.AsyncClient(transport=AiohttpTransport(limits=limits), limits=limits)
        # Jobs of a batch run together and each makes a few Redis calls: they queue for
        # a pooled connection rather than fail when the pool is busy.
        # A broker restart must not lose what a finished job writes (its ledger row, its
        # stored outcome, its budget's settlement): commands retry with backoff for
        # about REDIS_RETRY_S while Redis does not answer. Every write the pipeline makes
        # is idempotent or deduplicated downstream, so a retried one is harmless.
        pool = async_pool(
            redis_url, max_connections=REDIS_CONNECTIONS, timeout=None,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), REDIS_RETRIES),
            retry_on_error=[RedisConnectionError, RedisTimeoutError])
        self.redis = aioredis.Redis(connection_pool=pool)
        breaker = Breaker(self.redis, self.fleet.breaker)
        providers = build_providers(self.fleet, self.http, env)
        if self.settings.enable_cost_tracking and self.settings.database_url:
            self.flusher = LedgerFlusher(self.redis, async_engine(self.settings.database_url),
                                         count=self.settings.enable_monitoring)
            self.flusher.start()
        self.admission = Admission(self.redis, self.fleet)
        self.parking = Parking(self.redis)
        # Parked and batched jobs are sent again on the agents' own wire (``tasks._wire``).
        send = JobWire(self.sync_redis).send
        if self.fleet.batch.enabled and self.settings.database_url:
            apis = build_batch_apis(self.fleet, providers)
            store = self._batch_store = BatchStore(async_engine(self.settings.database_url))
            self.deferral = Deferral(self.redis, store, self.fleet, apis)
            self.batcher = Batcher(self.redis, store, self.fleet, apis, send)
        self._mover = Mover(self.parking, send)
        self._mover.start()
        self._sweeper = Sweeper(self.redis, every_s=self.fleet.sweep_every_s,
                                min_age_s=self.fleet.sweep_min_age_s, held=held_tags)
        self._sweeper.start()
        runner = AttemptRunner(retry=self.fleet.retry, breaker=breaker)
        if self.admission.has_quotas:
            runner.quotas = Quotas(self.admission.limiter, self.fleet)
        return Pipeline(self.fleet, providers, breaker, runner, steps=self._steps(),
                        redis=self.redis)

    async def _embed(self, job: EmbeddingJob) -> EmbeddingResult:
        """The pipeline's embedding path, whole: for the semantic cache's questions."""
        return await self.pipeline.embed(job)

    def _steps(self) -> list[Step]:
        """The pipeline's layers, outermost first: the one place their order is set."""
        steps: list[Step] = [OnceStep(self.redis)]
        if self.settings.enable_cost_tracking:
            steps.append(LedgerStep())
        # A streamed job's last chunk tells its readers how it ended, cancelled included.
        steps.append(StreamStep(self.redis))
        steps.append(CancelStep(self.redis))
        # Caches answer before budgets: a hit spends nothing, so it reserves nothing.
        #: Also asked by a job that could wait for a batch whether it need wait at all.
        self.cache_step = CacheStep(self.redis, self.fleet, self.settings, self._embed)
        steps.append(self.cache_step)
        steps.append(EmbeddingCacheStep(self.redis, self.settings))
        steps.append(BudgetStep(BudgetLedger(self.redis, self.fleet)))
        return steps

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and block this thread until it is done."""
        return self.start(coro).result(timeout)

    def start(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on the loop; its future (``workers.intake`` starts jobs so)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def close(self) -> None:
        async def _close() -> None:
            await self._mover.close()
            await self._sweeper.close()
            await self.pipeline.close()
            if self.batcher is not None:
                await self._batch_store.engine.dispose()
            if self.flusher is not None:
                await self.flusher.stop()
            await self.http.aclose()
            await self.redis.aclose()
            await self.redis.connection_pool.disconnect()

        if self._loop.is_closed():
            return
        self.run(_close(), timeout=10)
        self.sync_redis.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


_lock = threading.Lock()
_runtime: WorkerRuntime | None = None


def get_runtime(settings: Settings | None = None) -> WorkerRuntime:
    """This process's runtime, built on first use from the environment."""
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                from schemas import load_config

                settings, fleet = load_config(settings)
                if not settings.redis_url:
                    raise RuntimeError("the worker's REDIS_URL must be set before jobs run")
                _runtime = WorkerRuntime(fleet, settings, settings.redis_url)
    return _runtime


def close_runtime() -> None:
    """Close this process's runtime, if one was built (at worker shutdown)."""
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.close()
            _runtime = None


def warm_up() -> None:
    """Build this process's runtime and load the tokenizer before the first job."""
    from workers.pipeline.pricing import count_tokens

    get_runtime()
    count_tokens("warm up")
