"""The ledger's way to Postgres: the spool in Redis (``workers.accounting.spool``),
drained in batches.

Redis keeps the rows (append-only file) until Postgres is back. One flusher at a time,
fleet-wide (``LEDGER_FLUSH_LOCK``), reads a batch from the head, inserts it with
``ON CONFLICT (job_id) DO NOTHING`` and only then trims it: a flusher killed between
the two re-inserts the batch next time, which changes nothing. So each job leaves
exactly one row, however often it ran or was flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas import LedgerRow
from schemas.keys import LEDGER_FLUSH_LOCK, LEDGER_SPOOL
from schemas.tables import experiment_outcomes, job_ledger

__all__ = ["LedgerFlusher"]

log = logging.getLogger(__name__)

BATCH = 500
#: The flush lock's lease: how long a killed flusher keeps the others waiting.
LOCK_MS = 10_000
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
#: Trim the batch only while still holding the lock. A flusher whose lease ran out
#: mid-insert (Postgres slow) must not trim: the next holder read the same head, and a
#: second trim would drop rows that were never written.
_TRIM_IF_HELD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('LTRIM', KEYS[2], ARGV[2], -1)
  return 1
end
return 0
"""


def _decode(raw: bytes | str) -> dict[str, Any] | None:
    try:
        return LedgerRow.model_validate_json(raw).model_dump()
    except ValueError:
        log.error("dropping a malformed ledger row: %.200s", raw)
        return None


class LedgerFlusher:
    """Drains the spool into ``job_ledger``; run by every worker, one at a time."""

    def __init__(self, redis: aioredis.Redis, engine: AsyncEngine,
                 interval_s: float = 0.5) -> None:
        self._redis = redis
        self._engine = engine
        self._interval = interval_s
        self._token = uuid.uuid4().hex
        self._release = redis.register_script(_RELEASE)
        self._trim = redis.register_script(_TRIM_IF_HELD)
        self._task: asyncio.Task[None] | None = None
        self._down_since: float | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError, SQLAlchemyError, OSError):
            await self.flush()  # what this worker spooled last, if Postgres is up
        await self._engine.dispose()

    async def _run(self) -> None:
        while True:
            try:
                written = await self.flush()
            except (RedisError, OSError):
                written = 0
            await asyncio.sleep(0 if written >= BATCH else self._interval)

    async def flush(self) -> int:
        """Move one batch from the spool to Postgres; rows written (0 when another
        worker holds the lock, the spool is empty, or Postgres is down)."""
        if not await self._redis.set(LEDGER_FLUSH_LOCK, self._token, px=LOCK_MS, nx=True):
            return 0
        try:
            raws = await self._redis.lrange(LEDGER_SPOOL, 0, BATCH - 1)
            if not raws:
                return 0
            rows = [r for r in map(_decode, raws) if r is not None]
            if rows and not await self._insert(rows):
                return 0
            if not await self._trim(keys=[LEDGER_FLUSH_LOCK, LEDGER_SPOOL],
                                    args=[self._token, len(raws)]):
                log.warning("the flush lock's lease ran out during an insert: the batch is "
                            "left to the next holder (re-inserting it changes nothing)")
                return 0
            return len(rows)
        finally:
            await self._release(keys=[LEDGER_FLUSH_LOCK], args=[self._token])

    async def _insert(self, rows: list[dict[str, Any]]) -> bool:
        """The rows and their automatic experiment outcomes, in one transaction. Both
        skip what is there already: a batch inserted twice changes nothing, and an
        agent's later feedback (an upsert) stays the outcome."""
        outcomes = [{"job_id": row["job_id"], "created_at": row["finished_at"], **outcome}
                    for row in rows if (outcome := row.pop("outcome", None))]
        statement = insert(job_ledger).on_conflict_do_nothing(index_elements=["job_id"])
        try:
            async with self._engine.begin() as connection:
                await connection.execute(statement, rows)
                if outcomes:
                    await connection.execute(insert(experiment_outcomes).on_conflict_do_nothing(
                        index_elements=["job_id"]), outcomes)
        except (SQLAlchemyError, OSError) as exc:
            if self._down_since is None:
                self._down_since = asyncio.get_running_loop().time()
                log.warning("Postgres unreachable (%s): ledger rows stay spooled in Redis "
                            "until it is back", type(exc).__name__)
            return False
        if self._down_since is not None:
            log.warning("Postgres is back: writing the spooled ledger rows")
            self._down_since = None
        return True
