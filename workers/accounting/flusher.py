"""The ledger's way to Postgres: the spool in Redis (``workers.accounting.spool``),
drained in batches.

Redis keeps the rows (append-only file) until Postgres is back. One flusher at a time,
fleet-wide (a redis-py ``Lock`` on ``LEDGER_FLUSH_LOCK``), reads a batch from the head,
inserts it with ``ON CONFLICT (job_id) DO NOTHING`` and only then trims it: a flusher
killed between the two re-inserts the batch next time, which changes nothing. So each
job leaves exactly one row, however often it ran or was flushed.

A row Postgres refuses (a value it cannot store: a number out of range, say) must not
stop the others: a batch that fails with a data error is split in halves until the row
is found, that row goes with its reason to ``LEDGER_DEAD_LETTERS`` and the rest lands.
Connection failures are another matter: the batch waits in the spool, whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import uuid
from typing import Any

import psycopg
import redis.asyncio as aioredis
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from redis.exceptions import LockError, RedisError
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas import LedgerRow
from schemas.keys import LEDGER_DEAD_LETTERS, LEDGER_FLUSH_LOCK, LEDGER_SPOOL
from schemas.tables import experiment_outcomes, job_ledger
from workers.accounting import counters
from workers.providers import redact

__all__ = ["BATCH", "LedgerFlusher"]

log = logging.getLogger(__name__)

#: Every ledger column but its serial id, in the table's order.
_COLUMNS = [c.name for c in job_ledger.c if c.name != "id"]
_LIST = ", ".join(f'"{c}"' for c in _COLUMNS)
#: A staging table per database session, emptied at each commit, of the ledger's column
#: types (and none of its constraints: the INSERT below checks them).
_STAGE = (f"CREATE TEMP TABLE IF NOT EXISTS llmfleet_ledger_in ON COMMIT DELETE ROWS AS "
          f"SELECT {_LIST} FROM job_ledger WITH NO DATA")
_COPY = f"COPY llmfleet_ledger_in ({_LIST}) FROM STDIN"
_MOVE = (f"INSERT INTO job_ledger ({_LIST}) SELECT {_LIST} FROM llmfleet_ledger_in "
         f"ON CONFLICT (job_id) DO NOTHING RETURNING "
         + ", ".join(f'"{c.name}"' for c in counters.LEDGER_COLUMNS))

BATCH = 500
#: The flush lock's lease: how long a killed flusher keeps the others waiting.
LOCK_S = 10.0
#: Trim the batch, and set its refused rows aside, only while still holding the lock. A
#: flusher whose lease ran out mid-insert (Postgres slow) must not trim: the next holder
#: read the same head, and a second trim would drop rows that were never written.
#: KEYS: lock, spool, dead letters. ARGV: token, rows to trim, then dead-letter entries.
_SETTLE_IF_HELD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 3, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
redis.call('LTRIM', KEYS[2], ARGV[2], -1)
return 1
"""
Row = tuple[bytes | str, dict[str, Any]]


def _is_row_error(exc: BaseException) -> bool:
    """A value Postgres (or the driver) refuses in this data, not a server that does not
    answer or a schema that is not there: only these rows are set aside."""
    if isinstance(exc, DataError | IntegrityError | psycopg.DataError | psycopg.IntegrityError):
        return True
    # A value the driver could not convert (COPY writes each row through its dumpers).
    if isinstance(exc, ValueError | OverflowError | TypeError):
        return True
    # Raised while the driver converted a value, before anything reached the server.
    return isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)


def _dead_letter(raw: bytes | str, reason: str) -> str:
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    return json.dumps({"row": text, "reason": redact(reason)[:300],
                       "at": dt.datetime.now(dt.UTC).isoformat()})


def _reason(exc: BaseException) -> str:
    origin = getattr(exc, "orig", None) or exc
    first = str(origin).strip().splitlines()[0] if str(origin).strip() else ""
    return f"{type(origin).__name__}: {first}"


class LedgerFlusher:
    """Drains the spool into ``job_ledger``; run by every worker, one at a time."""

    def __init__(self, redis: aioredis.Redis, engine: AsyncEngine,
                 interval_s: float = 0.5, *, count: bool = True) -> None:
        self._redis = redis
        self._engine = engine
        #: Keep Prometheus' counters as rows land (off with ENABLE_MONITORING=false).
        self._count = count
        self._interval = interval_s
        self._lock = redis.lock(LEDGER_FLUSH_LOCK, timeout=LOCK_S, blocking=False,
                                thread_local=False)
        self._settle = redis.register_script(_SETTLE_IF_HELD)
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
            while await self.flush() >= BATCH:  # what this worker spooled last
                pass
        await self._engine.dispose()

    async def _run(self) -> None:
        while True:
            try:
                written = await self.flush()
            except (RedisError, OSError):
                written = 0
            await asyncio.sleep(0 if written >= BATCH else self._interval)

    async def flush(self) -> int:
        """Move one batch from the spool to Postgres; rows settled, written or set aside
        (0 when another worker holds the lock, the spool is empty, or Postgres is down)."""
        token = uuid.uuid4().hex
        if not await self._lock.acquire(token=token):
            return 0
        try:
            raws = await self._redis.lrange(LEDGER_SPOOL, 0, BATCH - 1)
            if not raws:
                return 0
            rows: list[Row] = []
            dead: list[str] = []
            for raw in raws:
                try:
                    rows.append((raw, LedgerRow.model_validate_json(raw).model_dump()))
                except ValueError as exc:
                    dead.append(_dead_letter(raw, f"malformed ledger row: {exc}"))
            refused = await self._write(rows) if rows else []
            if refused is None:
                return 0
            dead += refused
            if not await self._settle(keys=[LEDGER_FLUSH_LOCK, LEDGER_SPOOL, LEDGER_DEAD_LETTERS],
                                      args=[token, len(raws), *dead]):
                log.warning("the flush lock's lease ran out during an insert: the batch is "
                            "left to the next holder (re-inserting it changes nothing)")
                return 0
            if dead:
                log.error("%d ledger row(s) refused by Postgres set aside in %s: see "
                          "`llmfleet ledger dead-letters`", len(dead), LEDGER_DEAD_LETTERS)
            return len(raws)
        finally:
            with contextlib.suppress(LockError, RedisError):
                await self._lock.release()

    async def _write(self, rows: list[Row]) -> list[str] | None:
        """Insert ``rows``; the dead-letter entries of those Postgres refused, or None
        when Postgres cannot be reached (then nothing may be trimmed)."""
        try:
            await self._insert([row for _, row in rows])
        except (SQLAlchemyError, OSError, psycopg.Error, ValueError, OverflowError,
                TypeError) as exc:
            if not _is_row_error(exc):
                self._note_down(exc)
                return None
            if len(rows) == 1:
                return [_dead_letter(rows[0][0], _reason(exc))]
            middle = len(rows) // 2
            first = await self._write(rows[:middle])
            second = await self._write(rows[middle:]) if first is not None else None
            return None if first is None or second is None else first + second
        self._note_up()
        return []

    async def _insert(self, rows: list[dict[str, Any]]) -> None:
        """The rows, their automatic experiment outcomes and the metric counters, in
        one transaction. Rows and outcomes skip what is there already and only the rows
        inserted count (``workers.accounting.counters``): a batch inserted twice changes
        nothing, and an agent's later feedback (an upsert) stays the outcome. The rows
        go in by COPY into a session's staging table, then one INSERT ... SELECT: the
        same two statements whatever the batch, cheap for Postgres and for the worker
        (a multi-row VALUES statement is parsed again for every size of batch)."""
        outcomes = [{"job_id": row["job_id"], "created_at": row["finished_at"], **outcome}
                    for row in rows if (outcome := row.get("outcome"))]
        async with self._engine.begin() as connection:
            raw = (await connection.get_raw_connection()).driver_connection
            assert raw is not None
            async with raw.cursor(row_factory=dict_row) as cursor:
                await cursor.execute(_STAGE)
                async with cursor.copy(_COPY) as copy:
                    for row in rows:
                        await copy.write_row([Jsonb(row[c]) if c == "metadata" else row[c]
                                              for c in _COLUMNS])
                await cursor.execute(_MOVE)
                landed = await cursor.fetchall()
            if self._count:
                await counters.count_landed(connection, landed)
            if outcomes:
                await connection.execute(insert(experiment_outcomes).on_conflict_do_nothing(
                    index_elements=["job_id"]), outcomes)

    def _note_down(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = asyncio.get_running_loop().time()
            log.warning("Postgres unreachable (%s): ledger rows stay spooled in Redis "
                        "until it is back", type(exc).__name__)

    def _note_up(self) -> None:
        if self._down_since is not None:
            log.warning("Postgres is back: writing the spooled ledger rows")
            self._down_since = None
