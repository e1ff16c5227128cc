"""Sending jobs: one message each, gathered into one message per queue while a send is
on its way (group commit), every caller told of its own job's send."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tasks._publisher import Publisher


class Broker:
    """Records messages; each send takes ``delay`` (a round trip), or fails."""

    def __init__(self, delay: float = 0.0, fail_on: str | None = None) -> None:
        self.delay, self.fail_on = delay, fail_on
        self.messages: list[tuple[str, Any, str, str]] = []
        self.lock = threading.Lock()

    def send(self, name: str, args: list[Any], queue: str, task_id: str) -> None:
        time.sleep(self.delay)
        if self.fail_on is not None and task_id.endswith(self.fail_on):
            raise ConnectionError("broker down")
        with self.lock:
            self.messages.append((name, args[0], queue, task_id))


def job(n: int) -> dict[str, Any]:
    return {"job_id": f"job-{n:04d}"}


def test_a_lone_job_goes_at_once_in_a_message_of_its_own() -> None:
    broker = Broker()
    publisher = Publisher(broker.send, "one", "many")
    started = time.monotonic()
    publisher.publish(job(1), "llm.simple", "job-0001")
    assert time.monotonic() - started < 0.05
    assert broker.messages == [("one", job(1), "llm.simple", "job-0001")]


def test_jobs_sent_during_a_send_go_together_per_queue() -> None:
    # Given a broker round trip of 50 ms and 41 threads sending at about the same time
    broker = Broker(delay=0.05)
    publisher = Publisher(broker.send, "one", "many", most=16)
    queues = ["llm.simple", "llm.simple.high"]

    def send(n: int) -> None:
        publisher.publish(job(n), queues[n % 2], f"job-{n:04d}")

    threads = [threading.Thread(target=send, args=(n,)) for n in range(41)]
    for thread in threads:
        thread.start()
        time.sleep(0.001)
    for thread in threads:
        thread.join()
    # Then every job went exactly once, in a few messages, none over the limit, each
    # message holding jobs of one queue
    sent = [j for name, payload, _, _ in broker.messages
            for j in (payload if name == "many" else [payload])]
    assert sorted(j["job_id"] for j in sent) == sorted(job(n)["job_id"] for n in range(41))
    assert len(broker.messages) < 10
    for name, payload, queue, task_id in broker.messages:
        jobs = payload if name == "many" else [payload]
        assert len(jobs) <= 16
        assert {queues[int(j["job_id"][-4:]) % 2] for j in jobs} == {queue}
        assert task_id == (f"batch-{jobs[0]['job_id']}" if name == "many" else jobs[0]["job_id"])


def test_each_caller_of_a_failed_message_gets_its_error() -> None:
    broker = Broker(delay=0.05, fail_on="0002")
    publisher = Publisher(broker.send, "one", "many")
    errors: dict[int, BaseException | None] = {}

    def send(n: int) -> None:
        try:
            publisher.publish(job(n), "llm.simple", f"job-{n:04d}")
            errors[n] = None
        except ConnectionError as exc:
            errors[n] = exc

    threads = [threading.Thread(target=send, args=(n,)) for n in range(1, 5)]
    threads[0].start()
    time.sleep(0.01)  # job 1 on its way: 2, 3 and 4 gather behind it, sent as batch-job-0002
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors[1] is None
    assert all(isinstance(errors[n], ConnectionError) for n in (2, 3, 4))
    # And the publisher goes on: the next job is sent
    publisher.publish(job(9), "llm.simple", "job-0009")
    assert broker.messages[-1][3] == "job-0009"


@pytest.mark.parametrize("failing", ["0001"])
def test_the_first_senders_own_failure_is_its_own(failing: str) -> None:
    broker = Broker(fail_on=failing)
    publisher = Publisher(broker.send, "one", "many")
    with pytest.raises(ConnectionError):
        publisher.publish(job(1), "llm.simple", "job-0001")
    publisher.publish(job(2), "llm.simple", "job-0002")
    assert [m[3] for m in broker.messages] == ["job-0002"]
