"""The result waiter: many concurrent waits share one pub/sub connection."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import redis

from schemas import JobTimeoutError
from tasks._results import MAX_CONNECTIONS, META_KEY, ResultWaiter


@pytest.mark.timeout(60)
def test_many_concurrent_waits_use_few_connections(redis_url: str) -> None:
    # Given a fresh waiter and 150 jobs awaited at the same moment
    waiter = ResultWaiter(redis_url)
    ids = [uuid.uuid4().hex for _ in range(150)]

    async def all_of_them() -> list[object]:
        return await asyncio.gather(*(waiter.await_(i, 10) for i in ids))

    try:
        with redis.Redis.from_url(redis_url) as r:
            async def publish_later() -> list[object]:
                task = asyncio.ensure_future(all_of_them())
                await asyncio.sleep(0.5)
                for job_id in ids:  # as Celery's Redis backend stores a result
                    meta = json.dumps({"status": "SUCCESS", "result": job_id})
                    r.set(META_KEY.format(job_id), meta)
                    r.publish(META_KEY.format(job_id), meta)
                return await task

            # When their results arrive
            results = asyncio.run(publish_later())
        # Then each waiter gets its own, over a handful of connections
        assert results == ids
        pool = waiter._redis.connection_pool  # type: ignore[union-attr]
        created = len(pool._available_connections) + len(pool._in_use_connections)  # type: ignore[attr-defined]
        assert created <= MAX_CONNECTIONS
    finally:
        waiter.close()


def test_a_wait_past_its_timeout_raises_job_timeout(redis_url: str) -> None:
    waiter = ResultWaiter(redis_url)
    try:
        with pytest.raises(JobTimeoutError):
            waiter.wait(uuid.uuid4().hex, 0.2)
    finally:
        waiter.close()


def test_a_published_result_is_taken_from_its_message(redis_url: str) -> None:
    # Given a waiter on a job whose key nobody will write (only its message comes)
    waiter = ResultWaiter(redis_url)
    job_id = uuid.uuid4().hex

    async def wait_and_publish() -> object:
        task = asyncio.ensure_future(waiter.await_(job_id, 3))
        await asyncio.sleep(0.3)
        with redis.Redis.from_url(redis_url) as r:
            r.publish(META_KEY.format(job_id), "not json")  # ignored, not fatal
            r.publish(META_KEY.format(job_id), json.dumps({"status": "SUCCESS",
                                                           "result": "from the message"}))
        return await task

    try:
        # Then the wait ends with the message's result, without the key's read
        assert asyncio.run(wait_and_publish()) == "from the message"
    finally:
        waiter.close()
