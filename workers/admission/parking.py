"""Jobs that wait for a limit or a quota wait in Redis, not in a worker thread.

A job parked here is a message to send again (task, queue, arguments) under its job id,
due at a time. A mover in every worker process sends the due ones: it takes each under
a lease (the job's score pushed ahead) before sending, and removes it only if nobody
parked it again meanwhile; a mover that dies mid-way leaves its jobs to the next once
their lease ends. A job sent twice runs once (``OnceStep``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas.keys import PARKED, PARKED_JOBS
from tasks._redis import as_text
from workers.pipeline.background import Background

__all__ = ["Mover", "Parking", "Send"]

log = logging.getLogger(__name__)

#: KEYS: PARKED, PARKED_JOBS. ARGV: most to take, lease ms. Returns id, message, ...
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, id in ipairs(due) do
  local message = redis.call('HGET', KEYS[2], id)
  if message then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
    out[#out + 1] = id
    out[#out + 1] = message
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""
#: Park one job, due ``wait`` ms from now on Redis' clock (every host agrees on it).
#: KEYS: PARKED, PARKED_JOBS. ARGV: id, message, wait ms.
_PARK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return 1
"""
#: Remove a sent job unless it was parked again since. KEYS: PARKED, PARKED_JOBS.
#: ARGV: id, the message as taken.
_SENT = """
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return 1
"""

#: Sends one message: (task name, arguments, queue, task id). Blocking (kombu).
Send = Callable[[str, list[Any], str, str], None]


class Parking:
    """Where jobs wait: park one, take the due ones, mark them sent."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._park = redis.register_script(_PARK)
        self._take = redis.register_script(_TAKE)
        self._sent = redis.register_script(_SENT)

    async def park(self, job_id: str, task: str, args: list[Any], queue: str,
                   wait_s: float) -> None:
        """Hold the message until ``wait_s`` from now."""
        message = json.dumps({"task": task, "args": args, "queue": queue,
                              "nonce": uuid.uuid4().hex}, separators=(",", ":"))
        await self._park(keys=[PARKED, PARKED_JOBS],
                         args=[job_id, message, math.ceil(max(0.0, wait_s) * 1000)])

    async def take(self, most: int, lease_s: float) -> list[tuple[str, str]]:
        raw = await self._take(keys=[PARKED, PARKED_JOBS], args=[most, round(lease_s * 1000)])
        items = [as_text(v) for v in raw]
        return list(zip(items[0::2], items[1::2], strict=True))

    async def sent(self, job_id: str, message: str) -> None:
        await self._sent(keys=[PARKED, PARKED_JOBS], args=[job_id, message])

    async def waiting(self) -> int:
        return int(await self._redis.zcard(PARKED))


class Mover:
    """Sends the due parked jobs to their queues, every ``interval_s``."""

    def __init__(self, parking: Parking, send: Send, *, interval_s: float = 0.05,
                 batch: int = 200, lease_s: float = 30.0) -> None:
        self._parking, self._send = parking, send
        self._interval_s, self._batch, self._lease_s = interval_s, batch, lease_s
        self._loop = Background(self._run)

    def start(self) -> None:
        self._loop.start()

    async def _run(self) -> None:
        while True:
            try:
                moved = await self.move_due()
            except (RedisError, OSError) as exc:
                log.warning("parked jobs: cannot reach Redis (%s); trying again",
                            type(exc).__name__)
                moved = 0
            if moved < self._batch:
                await asyncio.sleep(self._interval_s)

    async def move_due(self) -> int:
        """Send what is due now; the number sent."""
        due = await self._parking.take(self._batch, self._lease_s)
        if not due:
            return 0
        decoded = [(job_id, text, json.loads(text)) for job_id, text in due]

        def send_all() -> list[bool]:
            sent = []
            for job_id, _, message in decoded:
                try:
                    self._send(message["task"], message["args"], message["queue"], job_id)
                    sent.append(True)
                except Exception:  # the broker: its lease ends and another mover tries
                    log.warning("parked job %s: could not send it; it stays parked", job_id)
                    sent.append(False)
            return sent

        results = await asyncio.to_thread(send_all)
        for (job_id, text, _), ok in zip(decoded, results, strict=True):
            if ok:
                await self._parking.sent(job_id, text)
        return sum(results)

    async def close(self) -> None:
        await self._loop.stop()
