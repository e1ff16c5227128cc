"""A job whose message never reached a worker (lost between Redis and a worker whose
host went away, or in a Redis crash between kombu's pop and its record) is sent again
by its client, once nobody took it, its queue is empty and no limit holds it, whether
or not the client waits on it at that moment; a job that waits in its queue, is held
by a limit or runs is never resent."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import tasks._results as results_module
from schemas import FleetConfig, JobTimeoutError
from schemas.keys import JOB_STATE, PARKED
from tasks._results import ResultWaiter
from tasks.names import COMPLETE
from tests.conftest import Sent, client_with_worker, intercept_sends


@pytest.fixture()
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiter that looks at the job's state every 0.1 s (5 s in use)."""
    monkeypatch.setattr(results_module, "_RECHECK_S", 0.1)


@pytest.fixture()
def waiter(redis_url: str, quick: None) -> Iterator[ResultWaiter]:
    made = ResultWaiter(redis_url)
    made.resend_after_s = 0.3
    yield made
    made.close()


def lost_job(waiter: ResultWaiter, queue: str) -> tuple[str, list[tuple[str, Any, str]]]:
    job_id = uuid.uuid4().hex
    sent: list[tuple[str, Any, str]] = []
    waiter.resend = lambda name, payload, queue: sent.append((name, payload, queue))
    waiter.expect([job_id], {job_id: (COMPLETE, {"job_id": job_id}, queue)})
    return job_id, sent


def test_a_job_nobody_took_from_an_empty_queue_is_sent_again(waiter: ResultWaiter) -> None:
    queue = f"llm.lost-{uuid.uuid4().hex[:6]}"
    job_id, sent = lost_job(waiter, queue)
    with pytest.raises(JobTimeoutError):
        waiter.wait(job_id, timeout=1.0)
    # once per resend_after_s, never more
    assert sent[0] == (COMPLETE, {"job_id": job_id}, queue) and 2 <= len(sent) <= 4


def test_a_lost_job_is_sent_again_while_nobody_waits_for_it(waiter: ResultWaiter) -> None:
    # Given a lost job its agent has not come to yet (it waits on others first)
    queue = f"llm.lost-{uuid.uuid4().hex[:6]}"
    job_id, sent = lost_job(waiter, queue)
    # Then it is sent again all the same, once nobody took it in resend_after_s
    deadline = time.monotonic() + 5
    while not sent:
        assert time.monotonic() < deadline, "the lost job was not sent again"
        time.sleep(0.05)
    assert sent[0] == (COMPLETE, {"job_id": job_id}, queue)


@pytest.mark.parametrize("held", ["queued", "parked", "running"])
def test_a_job_waiting_held_or_running_is_not_sent_again(waiter: ResultWaiter,
                                                         redis_url: str, held: str) -> None:
    queue = f"llm.lost-{uuid.uuid4().hex[:6]}"
    job_id, sent = lost_job(waiter, queue)
    with redis.Redis.from_url(redis_url) as client:
        if held == "queued":
            client.rpush(queue, "another job before it")
        elif held == "parked":
            client.zadd(PARKED, {job_id: 1})
        else:
            client.set(JOB_STATE.format(job_id=job_id), "run:abc", px=10_000)
        try:
            with pytest.raises(JobTimeoutError):
                waiter.wait(job_id, timeout=1.0)
        finally:
            client.delete(queue, JOB_STATE.format(job_id=job_id))
            client.zrem(PARKED, job_id)
    assert sent == []


def test_a_lost_message_is_answered_once_through_a_worker(
        fleet_env: dict[str, str], fleet: FleetConfig, sim: Any, quick: None,
        tmp_path: Path) -> None:
    with client_with_worker(fleet_env, fleet, "simple", "w-lost", tmp_path / "w.log",
                            agent="lost") as client:
        client._waiter.resend_after_s = 0.5
        # Given a job whose first message is lost on its way (never reaches Redis)
        dropped: list[str] = []

        def lose_first(message: Sent) -> bool:
            if not dropped:
                dropped.append(message.task_id)
                return False
            return True

        intercept_sends(client, lose_first)
        handle = client.submit(f"lost {uuid.uuid4().hex}", tier="simple", max_tokens=8)
        # When its agent waits, then it is sent again and answered, by one provider call
        assert handle.get(timeout=30).content
        assert dropped == [handle.job_id] and sim.stats()["requests"] == 1

