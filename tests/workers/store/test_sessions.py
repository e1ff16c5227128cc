"""Every session of the fleet asks Postgres to end it once its client goes quiet in a
transaction: a worker cut off mid-flush must not hold the ledger's row locks for hours
(infra/drills/multihost.py)."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from workers.store.engines import async_engine, sync_engine


def test_sync_and_async_sessions_carry_the_timeouts(database_url: str) -> None:
    with sync_engine(database_url).connect() as connection:
        idle = connection.execute(text("SHOW idle_in_transaction_session_timeout")).scalar()
        keepalive = connection.execute(text("SHOW tcp_keepalives_idle")).scalar()
    assert idle == "20s"
    # (a unix-socket session has no TCP keepalive to set: Postgres shows 0 then)
    assert keepalive in ("10", "10s", "0")

    async def read() -> str:
        engine = async_engine(database_url)
        try:
            async with engine.connect() as connection:
                return str((await connection.execute(
                    text("SHOW idle_in_transaction_session_timeout"))).scalar())
        finally:
            await engine.dispose()

    assert asyncio.run(read()) == "20s"
