"""The sweeper against real Redis and kombu's own bookkeeping: a message taken by a
worker that is gone goes back to its queue; one a live worker holds (its heartbeat
names it), or whose job renews its lease, stays. Other tests' workers share this Redis,
so each test looks only at its own queue and tags."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from celery import Celery

from schemas import load_fleet_config
from schemas.keys import JOB_STATE, WORKERS
from tasks.celery_config import celery_settings
from tasks.names import COMPLETE, COMPLETE_BATCH
from workers.recovery.sweeper import UNACKED, UNACKED_INDEX, Sweeper

FLEET = load_fleet_config()


@pytest.fixture()
def app(redis_url: str) -> Iterator[Celery]:
    made = Celery("sweeper-test", set_as_current=False)
    made.conf.update(celery_settings(redis_url, redis_url, FLEET))
    yield made
    made.close()


def take(raw: redis.Redis, queue: str, age_s: float = 1.0) -> str:
    """A message taken from ``queue`` as kombu's Redis transport takes one for a worker
    (BRPOP, then the message in its ``unacked`` hash and index), never acknowledged:
    its worker died. Its delivery tag."""
    message = json.loads(raw.rpop(queue))  # type: ignore[arg-type]
    tag = str(uuid.uuid4())
    raw.hset(UNACKED, tag, json.dumps([message, "", queue]))
    raw.zadd(UNACKED_INDEX, {tag: time.time() - age_s})
    return tag


def sweep(redis_url: str, *, beats: dict[str, list[str]] | None = None,
          min_age_s: float = 0.0) -> None:
    """One sweep, after a heartbeat from each worker in ``beats`` (name: tags held)."""
    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            for name, tags in (beats or {}).items():
                await Sweeper(client, name=name, held=lambda tags=tags: tags).beat()
            await Sweeper(client, min_age_s=min_age_s).sweep()
        finally:
            await client.aclose()
    asyncio.run(run())


def unacked_ids(raw: redis.Redis) -> set[str]:
    return {json.loads(v)[0]["headers"]["id"] for v in raw.hvals(UNACKED)}


def forget(raw: redis.Redis, *tags: str) -> None:
    for tag in tags:
        raw.hdel(UNACKED, tag)
        raw.zrem(UNACKED_INDEX, tag)


def send(app: Celery, name: str, payload: Any, queue: str, task_id: str) -> None:
    app.send_task(name, args=[payload], queue=queue, task_id=task_id)


def test_a_dead_workers_message_goes_back_and_a_live_ones_stay(app: Celery,
                                                               redis_url: str) -> None:
    raw = redis.Redis.from_url(redis_url)
    queue = f"llm.sweep-{uuid.uuid4().hex[:6]}"
    leased, held, dead = (uuid.uuid4().hex for _ in range(3))
    # Given three taken messages: one whose job renews its lease, one waiting for a
    # thread in a worker that beats (no lease yet), one whose worker is gone
    for job_id in (leased, held, dead):
        send(app, COMPLETE, {"job_id": job_id}, queue, job_id)
    tags = {job_id: take(raw, queue) for job_id in (leased, held, dead)}
    raw.set(JOB_STATE.format(job_id=leased), "run:abc", px=15_000)
    beats = {f"test-live-{uuid.uuid4().hex[:6]}": [tags[held]]}
    assert raw.llen(queue) == 0
    # When the sweeper looks
    sweep(redis_url, beats=beats)
    # Then only the dead one is back on its queue, marked redelivered, out of unacked
    back = json.loads(raw.rpop(queue))  # type: ignore[arg-type]
    assert back["headers"]["id"] == dead and back["headers"]["redelivered"] is True
    assert raw.llen(queue) == 0
    left = unacked_ids(raw)
    assert leased in left and held in left and dead not in left
    # And a second look changes nothing
    sweep(redis_url, beats=beats)
    assert raw.llen(queue) == 0 and {leased, held} <= unacked_ids(raw)
    raw.delete(JOB_STATE.format(job_id=leased))
    forget(raw, tags[leased], tags[held])
    raw.close()


def test_a_stale_heartbeat_gives_its_messages_back(app: Celery, redis_url: str) -> None:
    raw = redis.Redis.from_url(redis_url)
    queue = f"llm.sweep-{uuid.uuid4().hex[:6]}"
    job_id = uuid.uuid4().hex
    send(app, COMPLETE, {"job_id": job_id}, queue, job_id)
    tag = take(raw, queue)
    # Given a worker that held it, whose last heartbeat is older than 2.5 intervals
    name = f"test-dead-{uuid.uuid4().hex[:6]}"
    raw.hset(WORKERS, name, json.dumps({"at": time.time() - 26.0, "tags": [tag]}))
    # When the sweeper looks, then the message is back on its queue
    sweep(redis_url)
    assert raw.llen(queue) == 1 and job_id not in unacked_ids(raw)
    raw.delete(queue)
    raw.hdel(WORKERS, name)
    raw.close()


def test_a_batch_stays_while_any_of_its_jobs_runs(app: Celery, redis_url: str) -> None:
    raw = redis.Redis.from_url(redis_url)
    queue = f"llm.sweep-{uuid.uuid4().hex[:6]}"
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    send(app, COMPLETE_BATCH, [{"job_id": first}, {"job_id": second}], queue,
         "batch-" + first)
    take(raw, queue)
    raw.set(JOB_STATE.format(job_id=second), "run:abc", px=15_000)
    sweep(redis_url)
    assert raw.llen(queue) == 0
    # Once neither runs (one finished, one never started), it goes back
    raw.set(JOB_STATE.format(job_id=second), '{"ok": true}')
    sweep(redis_url)
    assert raw.llen(queue) == 1
    raw.delete(queue, JOB_STATE.format(job_id=second))
    raw.close()


def test_young_messages_are_left_alone(app: Celery, redis_url: str) -> None:
    raw = redis.Redis.from_url(redis_url)
    queue = f"llm.sweep-{uuid.uuid4().hex[:6]}"
    job_id = uuid.uuid4().hex
    send(app, COMPLETE, {"job_id": job_id}, queue, job_id)
    tag = take(raw, queue)
    sweep(redis_url, min_age_s=60.0)
    assert raw.llen(queue) == 0 and job_id in unacked_ids(raw)
    forget(raw, tag)
    raw.close()
