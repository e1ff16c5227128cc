"""The response cache end to end: the agent client, two real worker processes on one
tier, real Redis and Postgres, and the provider simulator counting provider calls.

Every test asks its own questions (``uid``): the session's Redis is shared.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from schemas import AllModelsFailedError, CompletionResult, FleetConfig, Settings
from schemas.keys import JOB_STATE
from tasks import FleetClient
from tasks.names import queue_for
from tests.conftest import (
    Sent,
    intercept_sends,
    ledger_row,
    start_worker,
    stop_process,
    wait_until,
)


@pytest.fixture(scope="module")
def client(fleet_env: dict[str, str], fleet: FleetConfig, redis_url: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetClient]:
    logs: Path = tmp_path_factory.mktemp("cache-logs")
    workers = [start_worker(fleet_env, "simple", f"cache-{i}", logs / f"w{i}.log")
               for i in range(2)]
    client = FleetClient(redis_url=redis_url, fleet=fleet, agent="cache-tester")
    try:
        wait_until(lambda: len(client._app.control.ping(timeout=0.5) or []) >= 2, timeout=60)
        yield client
    finally:
        client.close()
        for worker in workers:
            stop_process(worker)


@pytest.fixture()
def sends(client: FleetClient, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The job ids the client puts on a queue from here on."""
    sent: list[str] = []

    def counting(message: Sent) -> bool:
        sent.extend(job["job_id"] for job in message.jobs)
        return True

    wire = client._wire
    monkeypatch.setattr(wire, "send", wire.send)  # put back when the test ends
    monkeypatch.setattr(wire, "send_unless_cached", wire.send_unless_cached)
    intercept_sends(client, counting)
    return sent


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def uid() -> str:
    return uuid.uuid4().hex[:12]


def test_eight_identical_jobs_on_two_workers_make_one_provider_call(
        client: FleetClient, sim: Any, sends: list[str]) -> None:
    # Given a provider that takes 500 ms
    sim.configure(latency_ms=500)
    question = ask(f"coalesce {uid()}")
    # When 8 identical jobs are submitted at once
    handles = [client.submit(question, tier="simple", user=f"u{i}") for i in range(8)]
    results = [h.get(timeout=30) for h in handles]
    # Then they all went to the workers, one provider call answered all 8
    assert len(sends) == 8 and sim.stats()["requests"] == 1
    assert len({r.content for r in results}) == 1
    assert sum(r.cache_hit for r in results) == 7
    assert [r.user for r in results] == [f"u{i}" for i in range(8)]


def test_a_repeated_submit_is_answered_at_submit(client: FleetClient, sim: Any,
                                                 sends: list[str], redis_url: str,
                                                 fleet_env: dict[str, str]) -> None:
    question = ask(f"short-circuit {uid()}")
    # Given an answer cached by a worker (200 tokens: the simulator never truncates it)
    first = client.submit(question, tier="simple", max_tokens=200).get(timeout=30)
    assert sim.stats()["requests"] == 1 and len(sends) == 1
    # When the same question is submitted again, by another user
    started = time.perf_counter()
    handle = client.submit(question, tier="simple", max_tokens=200, user="u2")
    hit: CompletionResult = handle.get(timeout=0)
    elapsed_ms = (time.perf_counter() - started) * 1000
    # Then it is answered at once, free, with no message queued and no provider call
    assert hit.cache_hit and hit.cost_usd == 0 and hit.content == first.content
    assert (hit.job_id, hit.tier, hit.agent, hit.user) == (
        handle.job_id, "simple", "cache-tester", "u2")
    assert hit.model == first.model and hit.usage == first.usage and hit.latency_ms >= 0
    assert len(sends) == 1 and sim.stats()["requests"] == 1 and elapsed_ms < 50
    raw = redis.Redis.from_url(redis_url)
    assert raw.llen(queue_for("simple")) == 0
    assert not raw.exists(JOB_STATE.format(job_id=hit.job_id))
    raw.close()
    # And its ledger row says what it saved
    row = ledger_row(fleet_env["DATABASE_URL"], hit.job_id)
    assert row["cache_hit"] and row["cost_usd"] == 0 and row["agent"] == "cache-tester"
    assert first.cost_usd > 0 and float(row["cost_saved_usd"]) == pytest.approx(first.cost_usd)


def test_submit_many_answers_cached_jobs_at_submit_and_queues_the_rest(
        client: FleetClient, sim: Any, sends: list[str], fleet_env: dict[str, str]) -> None:
    # Given two questions answered (and cached) before
    known = [ask(f"batch known {i} {uid()}") for i in range(2)]
    firsts = [client.submit(q, tier="simple", max_tokens=200).get(timeout=30) for q in known]
    sends.clear()
    # When a batch repeats them around a new question
    new = ask(f"batch new {uid()}")
    batch = client.submit_many([{"messages": known[0], "tier": "simple", "max_tokens": 200},
                                {"messages": new, "tier": "simple", "max_tokens": 200},
                                {"messages": known[1], "tier": "simple", "max_tokens": 200}])
    results = batch.get(timeout=30)
    # Then the repeats are answered from the cache, in place, and only the new one queued
    assert [r.cache_hit for r in results] == [True, False, True]
    assert [results[0].content, results[2].content] == [f.content for f in firsts]
    assert new[0]["content"].split()[0] in results[1].content
    assert len(sends) == 1 and sim.stats()["requests"] == 3
    # And each hit leaves its ledger row (ledger_row waits for it)
    for hit in (results[0], results[2]):
        row = ledger_row(fleet_env["DATABASE_URL"], hit.job_id)
        assert row["cache_hit"] and row["cost_usd"] == 0


def test_acomplete_is_short_circuited_too(client: FleetClient, sim: Any,
                                          sends: list[str]) -> None:
    question = ask(f"async {uid()}")
    first = asyncio.run(client.acomplete(question, tier="simple"))
    again = asyncio.run(client.acomplete(question, tier="simple"))
    assert not first.cache_hit and again.cache_hit and again.content == first.content
    assert len(sends) == 1 and sim.stats()["requests"] == 1


def test_with_the_cache_off_at_the_client_jobs_are_queued(
        client: FleetClient, fleet: FleetConfig, redis_url: str, sim: Any) -> None:
    question = ask(f"client off {uid()}")
    client.submit(question, tier="simple").get(timeout=30)
    # Given a client whose settings turn the cache off
    off = FleetClient(redis_url=redis_url, fleet=fleet,
                      settings=Settings(redis_url=redis_url, enable_llm_cache=False))
    try:
        handle = off.submit(question, tier="simple")
        # Then its job goes through a worker (whose own cache still answers it)
        result = handle.get(timeout=30)
        raw = redis.Redis.from_url(redis_url)
        assert raw.exists(JOB_STATE.format(job_id=handle.job_id))
        raw.close()
        assert result.cache_hit and sim.stats()["requests"] == 1
    finally:
        off.close()


@pytest.mark.parametrize(("options", "calls", "second_hit"), [
    ({"cache": "skip"}, 2, False),
    ({"cache": "refresh"}, 2, False),
    ({"temperature": 1.0}, 2, False),
    ({"temperature": 1.0, "cache": "use"}, 1, True),
    ({"max_tokens": 2}, 2, False),  # truncated: finish_reason "length"
])
def test_what_the_job_asks_decides_what_is_cached(
        client: FleetClient, sim: Any, options: dict[str, Any], calls: int,
        second_hit: bool) -> None:
    question = ask(f"policy {uid()} with enough words to be cut short")
    first = client.submit(question, tier="simple", **options).get(timeout=30)
    second = client.submit(question, tier="simple", **options).get(timeout=30)
    assert sim.stats()["requests"] == calls
    assert not first.cache_hit and second.cache_hit is second_hit
    if "max_tokens" in options:
        assert first.finish_reason == "length"


def test_a_refresh_replaces_the_answer_for_later_jobs(client: FleetClient, sim: Any,
                                                      sends: list[str]) -> None:
    question = ask(f"refresh {uid()}")
    client.submit(question, tier="simple").get(timeout=30)
    client.submit(question, tier="simple", cache="refresh").get(timeout=30)
    later = client.submit(question, tier="simple").get(timeout=30)
    assert sim.stats()["requests"] == 2 and later.cache_hit and len(sends) == 2


def test_a_failed_job_leaves_nothing_cached(client: FleetClient, sim: Any) -> None:
    question = ask(f"failing {uid()}")
    sim.configure(error_rate=1.0, fail_models={"claude-3-haiku-20240307": 529})
    with pytest.raises(AllModelsFailedError):
        client.submit(question, tier="simple", fallback=False).get(timeout=30)
    failed_calls = sim.stats()["requests"]
    sim.configure(error_rate=0.0, fail_models={})
    result = client.submit(question, tier="simple").get(timeout=30)
    assert not result.cache_hit and sim.stats()["requests"] == failed_calls + 1
