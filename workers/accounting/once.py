"""Exactly once: one provider call per job, however often its message is delivered.

A job claims itself before it runs: its state key (``JOB_STATE``) set to a lease
(``run:<token>``, SET NX) that the running worker renews. A second delivery of the
same job while the first runs (a broker that handed it out twice, an operator's
re-publish) finds the lease and waits for the first's outcome instead of calling the
provider again; it takes over only when the lease lapses, that is when the first worker
is gone. When the job ends, its body stores the outcome in the same key
(``workers.bodies.jobs``), so a delivery after it finished (its worker died before
acknowledging it) is answered from it, success or failure, with no second call and no
second row. A job an agent cancelled before it started finds ``cancelled`` there. A job
waiting for a provider batch finds ``batch:waiting``: whichever comes first, its batch's
answer or its live run, swaps it for its own lease; the other then waits for it or
answers from its outcome, so the job is charged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas import decode_outcome
from schemas.keys import BATCH_WAITING, JOB_STATE, JOB_WAKE, RUN_LEASE
from tasks._pubsub import Channels
from tasks._redis import as_text
from tasks._results import REPLY_CHANNEL, reply_message
from workers.pipeline.outbox import Outbox, Write
from workers.pipeline.steps import Handler, JobContext, Result, Step

__all__ = ["DONE_TTL_S", "OnceStep", "end_job", "write_outcome"]

log = logging.getLogger(__name__)
#: How long a finished job's outcome is kept for redeliveries and late waiters.
DONE_TTL_S = 24 * 3600
#: The claim's lease: how long after its worker's death a duplicate takes over.
LEASE_MS = 15_000

#: Renew the lease while its holder is the one asking. KEYS: state. ARGV: lease, ms.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

#: Take a job waiting for a batch: its state swapped for a lease, if it still waits.
#: KEYS: state. ARGV: the waiting mark, lease, ms.
_TAKE_WAITING = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1
end
return 0
"""


def write_outcome(pipe: Any, job_id: str, outcome: str, reply: tuple[str, str] | None = None
                  ) -> None:
    """Add to ``pipe`` the end of a job: its outcome (JSON) in its state key, published
    to its client (``reply``: the channel and the message) and on its wake channel."""
    pipe.set(JOB_STATE.format(job_id=job_id), outcome, ex=DONE_TTL_S)
    if reply is not None:
        pipe.publish(*reply)
    pipe.publish(JOB_WAKE.format(job_id=job_id), "1")


async def end_job(redis: aioredis.Redis, job_id: str | None, envelope: dict[str, Any],
                  outbox: Outbox | None = None, reply_to: str | None = None,
                  writes: Iterable[Write] = ()) -> None:
    """A job's end in one round trip: what its steps left in ``outbox`` (its ledger row,
    its cache entry...), ``writes``, then its outcome (``write_outcome``; not without a
    job id), published to ``reply_to`` when it is a client's reply channel."""
    outcome = json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))
    reply = None
    if job_id is not None and reply_to is not None and REPLY_CHANNEL.match(reply_to):
        reply = (reply_to, reply_message(job_id, outcome))
    async with redis.pipeline(transaction=False) as pipe:
        if outbox is not None:
            outbox.apply(pipe)
        for write in writes:
            write(pipe)
        if job_id is not None:
            write_outcome(pipe, job_id, outcome, reply)
        await pipe.execute()


class OnceStep(Step):
    def __init__(self, redis: aioredis.Redis, *, lease_ms: int = LEASE_MS,
                 poll_s: float = 0.5) -> None:
        self._redis = redis
        self._lease_ms, self._poll_s = lease_ms, poll_s
        self._renew = redis.register_script(_RENEW)
        self._take_waiting = redis.register_script(_TAKE_WAITING)
        self._wakeups = Channels(redis)

    async def __call__(self, ctx: JobContext, call_next: Handler) -> Result:
        job_id = ctx.job.job_id
        key = JOB_STATE.format(job_id=job_id)
        lease = f"{RUN_LEASE}{uuid.uuid4().hex}"
        try:
            found = await self._claim(key, lease)
            if found is not None and found.startswith(RUN_LEASE):
                log.warning("job %s is running elsewhere: waiting for its outcome", job_id)
                found = await self._follow(job_id, key, lease)
        except RedisError as exc:
            # No claim to be had: run anyway (a duplicate may then call twice), rather
            # than fail a job because Redis blinked.
            log.warning("job %s: its claim is unreadable (%s): running unclaimed", job_id,
                        type(exc).__name__)
            return await call_next(ctx)
        if found is not None and found.startswith("{"):
            log.warning("job %s ran before: answering from its stored outcome", job_id)
            return decode_outcome(json.loads(found))
        ctx.cancelled = found == "cancelled"  # refused further in, with its ledger row
        renewing = _Renewal(self, key, lease)
        try:
            return await call_next(ctx)
        finally:
            renewing.stop()

    async def _claim(self, key: str, lease: str) -> str | None:
        """None when this delivery now holds the job; else what its state says."""
        while True:
            if await self._redis.set(key, lease, nx=True, px=self._lease_ms):
                return None
            raw = await self._redis.get(key)
            if raw is not None:
                found = as_text(raw)
                if found == BATCH_WAITING:
                    if await self._take_waiting(keys=[key],
                                                args=[BATCH_WAITING, lease, self._lease_ms]):
                        return None
                    continue  # taken meanwhile by its other path: look again
                return None if found == lease else found
            # Gone between the two (a lease that lapsed): try again.

    async def _follow(self, job_id: str, key: str, lease: str) -> str | None:
        """Wait, woken when the job ends or polling, until its outcome is stored or its
        lease lapses (then this delivery holds it)."""
        async with self._wakeups.watch(JOB_WAKE.format(job_id=job_id)) as woken:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), self._poll_s)
                woken.clear()
                found = await self._claim(key, lease)
                if found is None or not found.startswith(RUN_LEASE):
                    return found

    async def renew(self, key: str, lease: str) -> None:
        with contextlib.suppress(RedisError):
            await self._renew(keys=[key], args=[lease, self._lease_ms])

    @property
    def renew_every_s(self) -> float:
        return self._lease_ms / 3000

    async def close(self) -> None:
        await self._wakeups.close()


class _Renewal:
    """The lease of a running job renewed every third of it; nothing at all for a job
    that ends sooner (most do), so no task is made for it."""

    def __init__(self, step: OnceStep, key: str, lease: str) -> None:
        self._step, self._key, self._lease = step, key, lease
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(
            step.renew_every_s, self._due)

    def _due(self) -> None:
        self._task = self._loop.create_task(self._step.renew(self._key, self._lease))
        self._timer = self._loop.call_later(self._step.renew_every_s, self._due)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
