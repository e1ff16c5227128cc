"""Exactly once: one provider call per job, however often its message is delivered.

A job claims itself before it runs: a lease in Redis (``JOB_CLAIM``) that the running
worker renews. A second delivery of the same job while the first runs (a broker that
handed it out twice, an operator's re-publish) finds the claim held and waits for the
first's outcome instead of calling the provider again; it takes over only when the lease
lapses, that is when the first worker is gone. A delivery after the job finished (its
worker died before acknowledging it) is answered from the outcome stored then
(``JOB_DONE``), success or failure, so it costs no second call and no second row.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas import FleetError, WorkerError, decode_outcome, encode_error, encode_result
from schemas.keys import CANCEL, JOB_CLAIM, JOB_DONE, JOB_WAKE
from tasks._pubsub import Channels
from workers.pipeline.steps import Handler, JobContext, Result, Step

__all__ = ["DONE_TTL_S", "OnceStep"]

log = logging.getLogger(__name__)
#: How long a finished job's outcome is kept for redeliveries (Celery's result expiry).
DONE_TTL_S = 24 * 3600
#: The claim's lease: how long after its worker's death a duplicate takes over.
LEASE_MS = 15_000

#: The outcome if the job finished; else the claim for the caller unless another holds
#: it (and whether an agent cancelled the job meanwhile: it is then refused, not run).
#: KEYS: done, claim, cancel. ARGV: token, lease ms.
_ENTER = """
local done = redis.call('GET', KEYS[1])
if done then return {'done', done} end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return {'held', holder} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
if redis.call('EXISTS', KEYS[3]) == 1 then return {'cancelled', ARGV[1]} end
return {'mine', ARGV[1]}
"""
#: Renew the lease while its holder is the one asking. KEYS: claim. ARGV: token, ms.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
#: Store the outcome, give the claim up, wake whoever waits.
#: KEYS: done, claim. ARGV: token, outcome, ttl s, channel.
_LEAVE = """
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', ARGV[4], '1')
return 1
"""


class OnceStep(Step):
    def __init__(self, redis: aioredis.Redis, *, lease_ms: int = LEASE_MS,
                 poll_s: float = 0.5) -> None:
        self._lease_ms, self._poll_s = lease_ms, poll_s
        self._enter = redis.register_script(_ENTER)
        self._renew = redis.register_script(_RENEW)
        self._leave = redis.register_script(_LEAVE)
        self._wakeups = Channels(redis)

    async def __call__(self, ctx: JobContext, call_next: Handler) -> Result:
        job_id = ctx.job.job_id
        keys = [JOB_DONE.format(job_id=job_id), JOB_CLAIM.format(job_id=job_id),
                CANCEL.format(job_id=job_id)]
        token = uuid.uuid4().hex
        try:
            kind, value = await self._enter(keys=keys, args=[token, self._lease_ms])
            if kind == b"held":
                log.warning("job %s is running elsewhere: waiting for its outcome", job_id)
                kind, value = await self._follow(job_id, keys, token)
        except RedisError as exc:
            # No claim to be had: run anyway (a duplicate may then call twice), rather
            # than fail a job because Redis blinked.
            log.warning("job %s: its claim is unreadable (%s): running unclaimed", job_id,
                        type(exc).__name__)
            return await call_next(ctx)
        if kind == b"done":
            log.warning("job %s ran before: answering from its stored outcome", job_id)
            return decode_outcome(json.loads(value))
        ctx.cancelled = kind == b"cancelled"  # refused further in, with its ledger row
        return await self._run(ctx, call_next, keys, token)

    async def _follow(self, job_id: str, keys: list[str], token: str) -> tuple[bytes, Any]:
        """Wait, woken by the holder or polling, until the job's outcome is stored or its
        claim lapses (then this delivery holds it)."""
        async with self._wakeups.watch(JOB_WAKE.format(job_id=job_id)) as woken:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), self._poll_s)
                woken.clear()
                kind, value = await self._enter(keys=keys, args=[token, self._lease_ms])
                if kind != b"held":
                    return kind, value

    async def _run(self, ctx: JobContext, call_next: Handler, keys: list[str],
                   token: str) -> Result:
        keeper = asyncio.get_running_loop().create_task(self._keep(keys[1], token))
        outcome: dict[str, Any] | None = None
        try:
            result = await call_next(ctx)
            outcome = encode_result(result)
            return result
        except FleetError as exc:
            outcome = encode_error(exc)
            raise
        except Exception:
            # A bug of ours: the ledger wrote its failed row; a redelivery answers the
            # same rather than run (and charge) again.
            outcome = encode_error(WorkerError("the job failed in the worker"))
            raise
        finally:
            keeper.cancel()
            if outcome is not None:  # not when the worker itself is being stopped
                await self._store(ctx.job.job_id, keys, token, outcome)

    async def _keep(self, claim: str, token: str) -> None:
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            with contextlib.suppress(RedisError):
                await self._renew(keys=[claim], args=[token, self._lease_ms])

    async def _store(self, job_id: str, keys: list[str], token: str,
                     outcome: dict[str, Any]) -> None:
        try:
            await self._leave(keys=keys[:2], args=[token, json.dumps(outcome), DONE_TTL_S,
                                               JOB_WAKE.format(job_id=job_id)])
        except RedisError:
            log.warning("could not store the outcome of job %s", job_id)

    async def close(self) -> None:
        await self._wakeups.close()
