"""Cancellation: an agent that cancels a job (``handle.cancel()``, a stream it closed)
sets its cancel key. A job cancelled before it started is refused without a provider
call (``OnceStep`` reads the key with its claim); one in flight is stopped within a
second: this step looks every half second, and cancels the rest of the job (the task it
runs in, from this step in), which closes its provider call. What a stream wrote until
then is billed."""

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
        watch = _Watch(self._redis, CANCEL.format(job_id=job_id), self._poll_s)
        try:
            return await call_next(ctx)
        except asyncio.CancelledError:
            if not watch.by_agent:
                raise  # this worker is stopping: the job stops too
            watch.task.uncancel()
            raise JobCancelledError(f"job {job_id} was cancelled in flight",
                                    job_id=job_id) from None
        finally:
            watch.stop()


class _Watch:
    """Looks for a running job's cancel key every ``poll_s``, and cancels the job's task
    (the rest of its pipeline, from this step in) when it finds it. A timer until a look
    is due: a job that ends sooner (most do) makes no task and sends no command."""

    def __init__(self, redis: aioredis.Redis, key: str, poll_s: float) -> None:
        self._redis, self._key, self._poll_s = redis, key, poll_s
        task = asyncio.current_task()
        assert task is not None, "a job runs in a task"
        self.task = task
        #: The agent cancelled the job: the task's CancelledError is this watch's.
        self.by_agent = False
        self._running = True
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(poll_s, self._due)
        self._look: asyncio.Task[None] | None = None

    def _due(self) -> None:
        self._look = self._loop.create_task(self._check())

    async def _check(self) -> None:
        found = False
        with contextlib.suppress(RedisError):
            found = bool(await self._redis.exists(self._key))
        if not self._running:  # the job ended while the look was on its way
            return
        if found:
            self.by_agent = True
            self.task.cancel()
        else:
            self._timer = self._loop.call_later(self._poll_s, self._due)

    def stop(self) -> None:
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
        if self._look is not None and not self._look.done():
            self._look.cancel()
