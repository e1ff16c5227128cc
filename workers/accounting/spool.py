"""The ledger's spool: a list in Redis where every finished job leaves its row (one
RPUSH, about a tenth of a millisecond), so a job never waits on Postgres and a Postgres
outage loses nothing. ``workers.accounting.flusher`` drains it."""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas import LedgerRow
from schemas.keys import LEDGER_SPOOL

__all__ = ["spool_length", "spool_row"]

log = logging.getLogger(__name__)


async def spool_row(redis: aioredis.Redis, row: LedgerRow) -> None:
    """Append a job's row to the spool; a Redis failure is logged, never raised."""
    try:
        await redis.rpush(LEDGER_SPOOL, row.model_dump_json())
    except RedisError:
        log.error("ledger row of job %s could not be spooled", row.job_id)


def spool_length(sync_redis: Any) -> int:
    """Rows waiting in the spool (for reports and health), with a sync client."""
    return int(sync_redis.llen(LEDGER_SPOOL))
