"""Sending jobs: one message each, gathered into one message per queue while a send is
on its way (group commit), every caller told of its own job's send."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tasks._publisher import Publisher


class Broker:
    """Records messages; each send takes ``delay`` (a round trip), or fails. ``cache``
    holds entries by key, as the response cache would."""

    def __init__(self, delay: float = 0.0, fail_on: str | None = None) -> None:
        self.delay, self.fail_on = delay, fail_on
        #: Set while a send is on its way; it goes on once ``release`` is set.
        self.sending = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.messages: list[tuple[str, Any, str, str]] = []
        self.cache: dict[str, bytes] = {}
        self.lookups = 0
        self.lock = threading.Lock()

    def send(self, name: str, args: list[Any], queue: str, task_id: str) -> None:
        self.sending.set()
        self.release.wait(10)
        time.sleep(self.delay)
        if self.fail_on is not None and task_id.endswith(self.fail_on):
            raise ConnectionError("broker down")
        with self.lock:
            self.messages.append((name, args[0], queue, task_id))

    def send_unless_cached(self, cache_key: str, name: str, args: list[Any], queue: str,
                           task_id: str) -> bytes | None:
        with self.lock:
            self.lookups += 1
            hit = self.cache.get(cache_key)
        if hit is not None:
            return hit
        self.send(name, args, queue, task_id)
        return None

    def cached(self, keys: list[str]) -> list[bytes | None]:
        with self.lock:
            self.lookups += 1
            return [self.cache.get(key) for key in keys]


def job(n: int) -> dict[str, Any]:
    return {"job_id": f"job-{n:04d}"}


def behind_a_send(broker: Broker, publisher: Publisher, first: threading.Thread,
                  others: list[threading.Thread]) -> None:
    """Start ``first``, hold its send on the way until ``others`` have all gathered
    behind it, then let everything go and wait for every thread."""
    broker.release.clear()
    first.start()
    assert broker.sending.wait(10)
    for thread in others:
        thread.start()
    deadline = time.monotonic() + 10
    while sum(len(g.payloads) for g in list(publisher._waiting.values())) < len(others):
        assert time.monotonic() < deadline, "the others did not gather"
        time.sleep(0.001)
    broker.release.set()
    for thread in [first, *others]:
        thread.join()


def test_a_lone_job_goes_at_once_in_a_message_of_its_own() -> None:
    broker = Broker()
    publisher = Publisher(broker, "one", "many")
    started = time.monotonic()
    publisher.publish(job(1), "llm.simple", "job-0001")
    assert time.monotonic() - started < 0.05
    assert broker.messages == [("one", job(1), "llm.simple", "job-0001")]


def test_jobs_sent_during_a_send_go_together_per_queue() -> None:
    # Given a broker round trip of 50 ms and 41 threads sending at about the same time
    broker = Broker(delay=0.05)
    publisher = Publisher(broker, "one", "many", most=16)
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
    publisher = Publisher(broker, "one", "many")
    errors: dict[int, BaseException | None] = {}

    def send(n: int) -> None:
        try:
            publisher.publish(job(n), "llm.simple", f"job-{n:04d}")
            errors[n] = None
        except ConnectionError as exc:
            errors[n] = exc

    threads = [threading.Thread(target=send, args=(n,)) for n in range(1, 5)]
    # job 1 on its way: 2, 3 and 4 gather behind it, sent as batch-job-0002
    behind_a_send(broker, publisher, threads[0], threads[1:])
    assert errors[1] is None
    assert all(isinstance(errors[n], ConnectionError) for n in (2, 3, 4))
    # And the publisher goes on: the next job is sent
    publisher.publish(job(9), "llm.simple", "job-0009")
    assert broker.messages[-1][3] == "job-0009"


def test_a_cached_job_comes_back_instead_of_going() -> None:
    broker = Broker()
    broker.cache["k1"] = b"answer"
    publisher = Publisher(broker, "one", "many")
    assert publisher.publish(job(1), "llm.simple", "job-0001", "k1") == b"answer"
    assert publisher.publish(job(2), "llm.simple", "job-0002", "k2") is None
    assert [m[3] for m in broker.messages] == ["job-0002"]
    assert broker.lookups == 2


def test_gathered_jobs_are_looked_up_together_and_only_misses_go() -> None:
    # Given a slow broker, cached answers for the odd jobs, and 9 threads sending
    broker = Broker(delay=0.05)
    broker.cache.update({f"key-{n}": f"answer-{n}".encode() for n in range(1, 9, 2)})
    publisher = Publisher(broker, "one", "many")
    got: dict[int, bytes | None] = {}

    def send(n: int) -> None:
        got[n] = publisher.publish(job(n), "llm.simple", f"job-{n:04d}", f"key-{n}")

    threads = [threading.Thread(target=send, args=(n,)) for n in range(9)]
    behind_a_send(broker, publisher, threads[0], threads[1:])  # job 0 on its way
    # Then each caller got its own answer, or None and its job went, once
    assert got == {n: (f"answer-{n}".encode() if n % 2 else None) for n in range(9)}
    sent = [j["job_id"] for name, payload, _, _ in broker.messages
            for j in (payload if name == "many" else [payload])]
    assert sorted(sent) == [f"job-{n:04d}" for n in range(0, 9, 2)]
    assert broker.lookups == 2  # job 0's own, then one for the eight gathered


@pytest.mark.parametrize("failing", ["0001"])
def test_the_first_senders_own_failure_is_its_own(failing: str) -> None:
    broker = Broker(fail_on=failing)
    publisher = Publisher(broker, "one", "many")
    with pytest.raises(ConnectionError):
        publisher.publish(job(1), "llm.simple", "job-0001")
    publisher.publish(job(2), "llm.simple", "job-0002")
    assert [m[3] for m in broker.messages] == ["job-0002"]
