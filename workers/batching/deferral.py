"""Deferral: a job that can wait is recorded in Postgres with its payload and deadline,
its state key marked ``batch:waiting``, and its message acknowledged. It holds no
worker thread and no budget reservation meanwhile: the batcher runs it through the
pipeline when its batch answers, or sends it back live."""

from __future__ import annotations

import datetime as dt
import logging
import time

import redis.asyncio as aioredis

from schemas import CompletionJob, FleetConfig
from schemas.keys import BATCH_WAITING, JOB_STATE
from tasks._redis import as_text
from workers.batching.store import BatchStore, WaitingJob
from workers.pipeline.steps import JobContext
from workers.providers import BatchAPI

__all__ = ["Deferral"]

log = logging.getLogger(__name__)
#: The waiting mark outlives the job's deadline by this much (the batcher sends it
#: live well before; this only bounds a forgotten mark).
_MARK_SLACK_S = 24 * 3600


class Deferral:
    def __init__(self, redis: aioredis.Redis, store: BatchStore, fleet: FleetConfig,
                 apis: dict[str, BatchAPI]) -> None:
        self._redis, self._store, self._fleet, self._apis = redis, store, fleet, apis

    def deadline(self, ctx: JobContext) -> float | None:
        """The epoch second by which the job must be answered, when it may wait for a
        batch; None when it runs now."""
        job, batch = ctx.job, self._fleet.batch
        if not (batch.enabled and isinstance(job, CompletionJob)) or job.stream or job.live \
                or not ctx.chain:
            return None
        wait = self._fleet.wait_s(ctx.tier, job.deadline, job.timeout)
        if wait is None or wait < batch.min_deadline_s:
            return None
        if self._fleet.models[ctx.chain[0]].provider not in self._apis:
            return None
        at = job.submitted_at + wait
        # A job delivered late, with no time left for a batch, runs now.
        return at if at - batch.margin_s > time.time() + batch.poll_s else None

    async def defer(self, ctx: JobContext, deadline: float) -> bool:
        """Record the job as waiting; False when it must run now after all (it ran, runs
        or was cancelled: the pipeline answers it)."""
        key = JOB_STATE.format(job_id=ctx.job.job_id)
        found = await self._redis.get(key)
        if found is not None:
            return as_text(found) == BATCH_WAITING  # a second delivery of a waiting job
        model = ctx.chain[0]
        job = WaitingJob(ctx.job.job_id, ctx.job.model_dump(mode="json"), ctx.tier, model)
        await self._store.add_waiting(job, self._fleet.models[model].provider,
                                      dt.datetime.fromtimestamp(deadline, dt.UTC))
        ttl = int(max(1.0, deadline - time.time()) + _MARK_SLACK_S)
        if await self._redis.set(key, BATCH_WAITING, nx=True, ex=ttl):
            log.info("job %s waits for a %s batch until %.0f", job.job_id, model, deadline)
            return True
        return as_text(await self._redis.get(key) or b"") == BATCH_WAITING
