"""Cancellation: an agent that cancels a job (``handle.cancel()``, a stream it closed)
sets its cancel key. A job cancelled before it started is refused without a provider
call (``OnceStep`` reads the key with its claim); one in flight is stopped within a
second: this step looks every half second, and cancels the rest of the job, which closes
its provider call. What a stream wrote until then is billed."""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas import JobCancelledError
from schemas.keys import CANCEL
from workers.pipeline.steps import Handler, JobContext, Result, Step

__all__ = ["CancelStep"]

#: How often a running job looks for its cancel key (after the first look, once this
#: long has passed: a job that ends sooner never looks).
POLL_S = 0.5


class CancelStep(Step):
    def __init__(self, redis: aioredis.Redis, poll_s: float = POLL_S) -> None:
        self._redis, self._poll_s = redis, poll_s

    async def __call__(self, ctx: JobContext, call_next: Handler) -> Result:
        job_id = ctx.job.job_id
        if ctx.cancelled:
            raise JobCancelledError(f"job {job_id} was cancelled before it started",
                                    job_id=job_id)
        work = asyncio.ensure_future(call_next(ctx))
        by_agent = asyncio.Event()
        watcher = asyncio.get_running_loop().create_task(self._watch(job_id, work, by_agent))
        try:
            return await work
        except asyncio.CancelledError:
            if by_agent.is_set():
                raise JobCancelledError(f"job {job_id} was cancelled in flight",
                                        job_id=job_id) from None
            work.cancel()  # this worker is stopping: stop the job too
            raise
        finally:
            watcher.cancel()

    async def _watch(self, job_id: str, work: asyncio.Future[Result],
                     by_agent: asyncio.Event) -> None:
        """Cancel ``work`` (saying so in ``by_agent``) once the job's cancel key is set."""
        key = CANCEL.format(job_id=job_id)
        while not work.done():
            await asyncio.sleep(self._poll_s)
            with contextlib.suppress(RedisError):
                if await self._redis.exists(key):
                    by_agent.set()
                    work.cancel()
                    return
