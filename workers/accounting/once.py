"""Exactly once: a redelivered job is answered from the outcome stored when it first
finished, so a job re-run after its worker died costs no second provider call and no
second ledger row."""

from __future__ import annotations

import json
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas import decode_outcome, encode_result
from schemas.keys import JOB_DONE
from workers.pipeline.steps import Handler, JobContext, Result, Step

__all__ = ["DONE_TTL_S", "OnceStep"]

log = logging.getLogger(__name__)
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
