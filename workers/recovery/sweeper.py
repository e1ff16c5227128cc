"""A dead worker's jobs back within a minute, a live worker's never.

Redis (kombu) keeps every message a worker took and has not acknowledged in its
``unacked`` hash, and hands it to another worker only after the visibility timeout
(twice the job time limit: minutes). Here every worker process writes a heartbeat
every ``every_s`` into one hash (``WORKERS``): when, and the delivery tags of the
messages it holds (running or waiting for a thread, ``held``). The sweeper, in every
worker process but one at a time fleet-wide (a lock), looks at the messages taken more
than ``min_age_s`` ago: one that no worker with a fresh heartbeat holds, and none of
whose jobs renews its lease (``run:`` in its state key, the job's own heartbeat), goes
back to its queue at once, as kombu itself would put it back. A worker that is merely
slow still beats, so it keeps its messages. A job that finished but whose message was
not acknowledged (its worker died in between) is answered from its stored outcome when
it comes again (exactly-once), and a job whose dead worker's lease has not lapsed yet
waits for it before it runs.

The window: a worker that dies is stale after ``STALE_BEATS`` intervals, found at the
next sweep, so its messages are back within about ``(STALE_BEATS + 1) * every_s``
(and no sooner than ``min_age_s`` after they were taken): 40 s by default.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas.keys import JOB_STATE, RUN_LEASE, SWEEP_LOCK, WORKERS
from tasks._redis import as_text
from tasks.names import COMPLETE, COMPLETE_BATCH, EMBED
from workers.pipeline.background import Background

__all__ = ["Sweeper"]

log = logging.getLogger(__name__)

#: kombu's Redis transport's own keys (its defaults; the fleet sets no prefix).
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"
#: A heartbeat older than this many intervals is a dead worker's.
STALE_BEATS = 2.5
#: A dead worker's heartbeat is dropped from the hash after this long.
FORGET_S = 3600.0

#: The delivery tags of the messages this process holds.
Held = Callable[[], Iterable[str]]

#: Put one taken message back on its queue, unless it was acknowledged (or put back)
#: meanwhile. KEYS: unacked, unacked index, the queue. ARGV: tag, the message as read,
#: the message to push.
_RESTORE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[3])
return 1
"""


class Sweeper:
    """This process's heartbeat and, when it holds the lock, the fleet's sweep."""

    def __init__(self, redis: aioredis.Redis, *, every_s: float = 10.0,
                 min_age_s: float = 30.0, held: Held | None = None, most: int = 500,
                 name: str | None = None) -> None:
        self._redis = redis
        self._every_s, self._min_age_s, self._most = every_s, min_age_s, most
        self._held: Held = held or (lambda: ())
        self._restore = redis.register_script(_RESTORE)
        self._loop = Background(self._run)
        #: This process in the heartbeats: host, pid and a token (pids are reused).
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def start(self) -> None:
        self._loop.start()

    async def _run(self) -> None:
        while True:
            try:
                await self.beat()
                if await self._redis.set(SWEEP_LOCK, self.name, nx=True,
                                         px=int(self._every_s * 1000)):
                    await self.sweep()
            except (RedisError, OSError) as exc:
                log.warning("sweeper: Redis does not answer (%s)", type(exc).__name__)
            await asyncio.sleep(self._every_s)

    async def beat(self) -> None:
        """This process's heartbeat: now, and the messages it holds."""
        tags = sorted(self._held())
        await self._redis.hset(WORKERS, self.name, json.dumps({"at": time.time(),
                                                                "tags": tags}))

    async def _held_by_live_workers(self) -> set[str]:
        """The tags the workers with a fresh heartbeat hold; stale beats long gone
        are dropped."""
        now = time.time()
        fresh_after, forget_before = now - STALE_BEATS * self._every_s, now - FORGET_S
        held: set[str] = set()
        gone: list[Any] = []
        for name, raw in (await self._redis.hgetall(WORKERS)).items():
            try:
                beat = json.loads(raw)
                at, tags = float(beat["at"]), beat["tags"]
            except (ValueError, KeyError, TypeError):
                gone.append(name)
                continue
            if at >= fresh_after:
                held.update(str(tag) for tag in tags)
            elif at < forget_before:
                gone.append(name)
        if gone:
            await self._redis.hdel(WORKERS, *gone)
        return held

    async def sweep(self) -> int:
        """Put back the messages whose jobs nobody runs; how many."""
        ceiling = time.time() - self._min_age_s
        tags: list[Any] = list(await self._redis.zrange(
            UNACKED_INDEX, 0, ceiling, byscore=True, offset=0, num=self._most))
        if not tags:
            return 0
        held = await self._held_by_live_workers()
        tags = [tag for tag in tags if as_text(tag) not in held]
        if not tags:
            return 0
        raws = await self._redis.hmget(UNACKED, tags)
        jobs = [(tag, raw, parsed) for tag, raw in zip(tags, raws, strict=True)
                if raw is not None and (parsed := _parse(raw)) is not None]
        if not jobs:
            return 0
        ids = sorted({job_id for _, _, parsed in jobs for job_id in parsed[2]})
        states = dict(zip(ids, await self._redis.mget(
            [JOB_STATE.format(job_id=i) for i in ids]), strict=True))
        restored = 0
        for tag, raw, (message, queue, job_ids) in jobs:
            if any(_running(states.get(job_id)) for job_id in job_ids):
                continue  # a job of it renews its lease: someone runs it
            _mark_redelivered(message)
            if await self._restore(keys=[UNACKED, UNACKED_INDEX, queue],
                                   args=[tag, raw, json.dumps(message)]):
                restored += 1
                log.warning("sweeper: the message of job(s) %s had no live worker: back on "
                            "%s", ", ".join(job_ids[:3]), queue)
        return restored

    async def close(self) -> None:
        await self._loop.stop()
        # Gone on purpose: its messages are acknowledged or back (warm shutdown).
        with contextlib.suppress(RedisError, OSError):
            await self._redis.hdel(WORKERS, self.name)



def _running(state: bytes | str | None) -> bool:
    return state is not None and as_text(state).startswith(RUN_LEASE)


def _parse(raw: bytes | str | None) -> tuple[dict[str, Any], str, list[str]] | None:
    """(the message, its queue, its jobs' ids) of one of the fleet's job messages; None
    for anything else (the housekeeping tasks: kombu's visibility timeout covers them)."""
    try:
        message, _exchange, queue = json.loads(raw)  # type: ignore[arg-type]
        task = message["headers"]["task"]
        if task in (COMPLETE, EMBED):
            return message, queue, [str(message["headers"]["id"])]
        if task == COMPLETE_BATCH:
            args = json.loads(base64.b64decode(message["body"]))[0]
            return message, queue, [str(job["job_id"]) for job in args[0]]
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    return None


def _mark_redelivered(message: dict[str, Any]) -> None:
    with contextlib.suppress(KeyError, TypeError):
        message["headers"]["redelivered"] = True
        message["properties"]["delivery_info"]["redelivered"] = True
