"""The result waiter: outcomes on the client's reply channel, kept until asked for; a
lost message found in the job's state key; jobs of other clients by their wake channel;
many waits over few connections; the fleet's own tasks by Celery's results."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
import redis

import tasks._results as results_module
from schemas import JobTimeoutError
from schemas.keys import JOB_STATE, JOB_WAKE
from tasks._results import MAX_CONNECTIONS, META_KEY, ResultWaiter, reply_message


def outcome(text: str) -> str:
    return json.dumps({"ok": True, "result": {"text": text}})


@pytest.fixture()
def waiter(redis_url: str) -> Any:
    made = ResultWaiter(redis_url)
    yield made
    made.close()


@pytest.mark.timeout(60)
def test_many_concurrent_waits_use_few_connections(redis_url: str,
                                                   waiter: ResultWaiter) -> None:
    # Given 150 jobs this client sent and 150 of another client, awaited at once
    ours = [uuid.uuid4().hex for _ in range(150)]
    theirs = [uuid.uuid4().hex for _ in range(150)]
    waiter.expect(ours)

    async def publish_later() -> list[object]:
        waits = asyncio.ensure_future(asyncio.gather(
            *(waiter.await_(i, 10) for i in ours + theirs)))
        await asyncio.sleep(0.5)
        with redis.Redis.from_url(redis_url) as r:
            for job_id in ours:  # as a worker ends a job of this client
                r.publish(waiter.reply_channel, reply_message(job_id, outcome(job_id)))
            for job_id in theirs:  # as it ends a job of another client
                r.set(JOB_STATE.format(job_id=job_id), outcome(job_id))
                r.publish(JOB_WAKE.format(job_id=job_id), "1")
        return list(await waits)

    answers = asyncio.run(publish_later())
    # Then each wait gets its own, over a handful of connections
    assert [a["result"]["text"] for a in answers] == ours + theirs  # type: ignore[index]
    pool = waiter._redis.connection_pool  # type: ignore[union-attr]
    created = len(pool._available_connections) + len(pool._in_use_connections)  # type: ignore[attr-defined]
    assert created <= MAX_CONNECTIONS


def test_an_outcome_that_came_before_the_wait_is_kept(redis_url: str,
                                                      waiter: ResultWaiter) -> None:
    job_id = uuid.uuid4().hex
    waiter.expect([job_id])
    with redis.Redis.from_url(redis_url) as r:
        r.publish(waiter.reply_channel, b"not a reply")  # ignored, not fatal
        r.publish(waiter.reply_channel, reply_message(job_id, outcome("early")))
    # (published, never stored: only the message can answer)
    assert waiter.wait(job_id, 5)["result"]["text"] == "early"


def test_a_lost_message_is_found_in_the_state_key(redis_url: str, waiter: ResultWaiter,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results_module, "_RECHECK_S", 0.2)
    job_id = uuid.uuid4().hex
    waiter.expect([job_id])
    with redis.Redis.from_url(redis_url) as r:
        r.set(JOB_STATE.format(job_id=job_id), outcome("stored"))  # and no message
    assert waiter.wait(job_id, 5)["result"]["text"] == "stored"


def test_a_running_or_cancelled_state_is_not_an_outcome(redis_url: str,
                                                        waiter: ResultWaiter) -> None:
    job_id = uuid.uuid4().hex
    with redis.Redis.from_url(redis_url) as r:
        r.set(JOB_STATE.format(job_id=job_id), "run:0123")
        with pytest.raises(JobTimeoutError):
            waiter.wait(job_id, 0.5)
        r.set(JOB_STATE.format(job_id=job_id), "cancelled")
        with pytest.raises(JobTimeoutError):
            waiter.wait(job_id, 0.5)


def test_a_wait_past_its_timeout_raises_job_timeout(waiter: ResultWaiter) -> None:
    job_id = uuid.uuid4().hex
    waiter.expect([job_id])
    with pytest.raises(JobTimeoutError):
        waiter.wait(job_id, 0.2)
    with pytest.raises(JobTimeoutError):
        waiter.wait(uuid.uuid4().hex, 0.2)


def test_a_task_result_is_taken_from_celerys_message(redis_url: str,
                                                     waiter: ResultWaiter) -> None:
    # Given a housekeeping task whose key nobody writes (only its message comes)
    task_id = uuid.uuid4().hex

    async def wait_and_publish() -> object:
        task = asyncio.ensure_future(asyncio.to_thread(waiter.wait_task, task_id, 3))
        await asyncio.sleep(0.3)
        with redis.Redis.from_url(redis_url) as r:
            r.publish(META_KEY.format(task_id), "not json")  # ignored, not fatal
            r.publish(META_KEY.format(task_id), json.dumps({"status": "SUCCESS",
                                                            "result": "from the message"}))
        return await task

    assert asyncio.run(wait_and_publish()) == "from the message"
