"""What the accounting tests share: the session's Postgres (migrated) and Redis, a tag
per test whose rows, alerts, roll-ups and budget counters go afterwards, and ledger rows
written straight into ``job_ledger``."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, delete, insert

from schemas.tables import budget_alerts, job_ledger, metrics_rollup
from workers.store.engines import migrate, sync_engine


@pytest.fixture(scope="module")
def engine(services: tuple[str, str | None]) -> Engine:
    database_url = services[1]
    assert database_url is not None
    migrate(database_url)
    return sync_engine(database_url)


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


@pytest.fixture()
def tag(engine: Engine, client: redis.Redis) -> Iterator[str]:
    """A name no other test uses; everything written under it goes afterwards."""
    name = f"ta-{uuid.uuid4().hex[:12]}"
    yield name
    with engine.begin() as connection:
        connection.execute(delete(job_ledger).where(job_ledger.c.agent.startswith(name)))
        connection.execute(delete(budget_alerts).where(budget_alerts.c.budget.startswith(name)))
        connection.execute(delete(metrics_rollup).where(metrics_rollup.c.agent.startswith(name)))
    for key in client.scan_iter(f"llmfleet:budget:{name}*"):
        client.delete(key)


def row(agent: str, at: dt.datetime, cost: float = 0.0, **fields: Any) -> dict[str, Any]:
    """A ledger row of ``agent`` at ``at`` costing ``cost``; ``fields`` override."""
    values: dict[str, Any] = {
        "job_id": uuid.uuid4().hex, "kind": "completion", "agent": agent, "tier": "simple",
        "model": "m-small", "user_id": None, "status": "succeeded", "cache_hit": False,
        "attempts": 1, "fallback_used": False, "prompt_tokens": 10, "completion_tokens": 5,
        "cached_tokens": 0, "usage_estimated": False, "cost_usd": cost, "cost_saved_usd": 0,
        "latency_ms": 100.0, "metadata": {}, "created_at": at, "finished_at": at}
    return {**values, **fields}


def add(engine: Engine, *rows: dict[str, Any]) -> None:
    with engine.begin() as connection:
        connection.execute(insert(job_ledger), list(rows))
