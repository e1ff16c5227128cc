"""End to end: the agent client, real worker processes on two tiers, real Redis, and
the provider simulator over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas import (
    AllModelsFailedError,
    CompletionResult,
    EmbeddingResult,
    FleetConfig,
    JobTimeoutError,
    JobValidationError,
    UnknownModelError,
    UnknownTierError,
)
from tasks import FleetClient
from tasks.names import COMPLETE, queue_for
from tests.conftest import start_worker, stop_process


@pytest.fixture(scope="module")
def client(fleet_env: dict[str, str], fleet: FleetConfig, redis_url: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetClient]:
    logs: Path = tmp_path_factory.mktemp("worker-logs")
    workers = [start_worker(fleet_env, "simple,embeddings", "w-simple", logs / "simple.log"),
               start_worker(fleet_env, "medium", "w-medium", logs / "medium.log")]
    client = FleetClient(redis_url=redis_url, fleet=fleet, agent="tester")
    try:
        deadline = 60.0
        import time

        end = time.monotonic() + deadline
        while len(client._app.control.ping(timeout=0.5) or []) < 2:
            assert all(w.poll() is None for w in workers), "a worker died at start"
            assert time.monotonic() < end, "workers did not come up"
        yield client
    finally:
        client.close()
        for worker in workers:
            stop_process(worker)


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_jobs_run_on_their_tiers_with_usage_and_cost(client: FleetClient, sim: Any) -> None:
    simple = client.submit(ask("alpha"), tier="simple", max_tokens=32, user="u1")
    medium = client.submit(ask("beta"), tier="medium", max_tokens=32)
    first, second = simple.get(timeout=30), medium.get(timeout=30)
    assert isinstance(first, CompletionResult)
    assert (first.tier, first.model, first.agent, first.user) == (
        "simple", "openai/gpt-4o-mini", "tester", "u1")
    assert (second.tier, second.model) == ("medium", "openai/gpt-4o")
    assert "alpha" in first.content and first.job_id == simple.job_id
    assert first.usage.prompt_tokens > 0 and first.usage.completion_tokens > 0
    assert not first.usage.estimated and first.cost_usd > 0
    assert first.attempts == 1 and not first.fallback_used and first.latency_ms > 0
    assert sim.stats()["requests"] == 2


def test_a_failing_model_falls_back_along_the_chain(client: FleetClient, sim: Any) -> None:
    sim.configure(fail_models={"openai/gpt-4o-mini": 503})
    result = client.submit(ask("gamma"), tier="simple", max_tokens=16).get(timeout=30)
    assert result.model == "anthropic/claude-3-haiku" and result.provider == "anthropic"
    assert result.fallback_used
    assert [a.model for a in result.attempt_log][-1] == "anthropic/claude-3-haiku"
    assert sum(not a.ok for a in result.attempt_log) == result.attempts - 1


def test_every_model_failing_raises_a_typed_error(client: FleetClient, sim: Any) -> None:
    sim.configure(error_rate=1.0, fail_models={"claude-3-haiku-20240307": 529})
    with pytest.raises(AllModelsFailedError) as info:
        client.submit(ask("delta"), tier="simple", max_tokens=16, fallback=False).get(30)
    assert info.value.tier == "simple"  # type: ignore[attr-defined]


def test_a_bad_payload_is_refused_by_the_worker_which_keeps_serving(
        client: FleetClient, sim: Any) -> None:
    # Given a message that skipped the client's validation
    bad = {"messages": [{"role": "robot", "content": "x"}], "tier": "simple"}
    client._app.send_task(COMPLETE, args=[bad], queue=queue_for("simple"), task_id="bad-job-1")
    from tasks.client import JobHandle

    # Then the worker answers with the field named
    with pytest.raises(JobValidationError) as info:
        JobHandle(client, "bad-job-1").get(timeout=30)
    assert info.value.field == "messages.0.role"  # type: ignore[attr-defined]
    # And the next job still runs
    assert client.submit(ask("after"), tier="simple").get(timeout=30).content


def test_validation_fails_at_submit_before_anything_is_queued(client: FleetClient) -> None:
    with pytest.raises(UnknownTierError):
        client.submit(ask("x"), tier="gigantic")
    with pytest.raises(UnknownModelError):
        client.submit(ask("x"), model="gpt-9")
    with pytest.raises(JobValidationError) as info:
        client.submit([], tier="simple")
    assert info.value.field == "messages"  # type: ignore[attr-defined]
    with pytest.raises(JobValidationError) as info:
        client.submit(ask("x"), tier="simple", temprature=0.5)
    assert info.value.field == "temprature"  # type: ignore[attr-defined]


def test_a_model_name_routes_to_its_tier(client: FleetClient, sim: Any) -> None:
    result = client.submit(ask("by model"), model="anthropic/claude-3-haiku").get(30)
    assert (result.tier, result.model, result.requested_model) == (
        "simple", "anthropic/claude-3-haiku", "anthropic/claude-3-haiku")


def test_a_batch_returns_results_in_order(client: FleetClient, sim: Any) -> None:
    specs = [{"messages": ask(f"item{i}"), "tier": "simple" if i % 2 else "medium",
              "max_tokens": 24} for i in range(40)]
    results = client.submit_many(specs).get(timeout=60)
    assert len(results) == 40
    for i, result in enumerate(results):
        assert f"item{i}" in result.content
        assert result.tier == ("simple" if i % 2 else "medium")
    assert sim.stats()["requests"] == 40


def test_a_batch_reports_each_failure_in_its_place(client: FleetClient, sim: Any) -> None:
    specs = [{"messages": ask("fine"), "tier": "simple"},
             {"messages": ask("fails"), "tier": "simple", "model": "openai/gpt-4o-mini",
              "fallback": False}]
    sim.configure(fail_models={"openai/gpt-4o-mini": 503})
    results = client.submit_many(specs).get(timeout=60, return_exceptions=True)
    assert isinstance(results[0], CompletionResult) and results[0].fallback_used
    assert isinstance(results[1], AllModelsFailedError)
    with pytest.raises(AllModelsFailedError):
        client.submit_many(specs).get(timeout=60)
    sim.configure(fail_models={})
    with pytest.raises(JobValidationError) as info:
        client.submit_many([{"messages": ask("ok")}, {"messages": []}])
    assert info.value.field == "jobs[1].messages"  # type: ignore[attr-defined]


def test_acomplete_awaits_without_a_thread_each(client: FleetClient, sim: Any) -> None:
    async def many() -> list[CompletionResult]:
        return await asyncio.gather(*(client.acomplete(ask(f"async{i}"), tier="simple")
                                      for i in range(20)))

    results = asyncio.run(many())
    assert [f"async{i}" in r.content for i, r in enumerate(results)] == [True] * 20


def test_embeddings_come_back_in_order_with_cost(client: FleetClient, sim: Any) -> None:
    texts = ["routing in the app router", "pricing of tokens", "routing with the app router"]
    result = client.embed(texts, dimensions=64).get(timeout=30)
    assert isinstance(result, EmbeddingResult)
    assert len(result.vectors) == 3 and result.dimensions == 64
    assert result.model == "openai/text-embedding-3-small" and result.cost_usd > 0
    cos = [sum(a * b for a, b in zip(result.vectors[0], v, strict=True)) for v in result.vectors]
    assert cos[2] > cos[1]


def test_waiting_past_the_timeout_raises_job_timeout(client: FleetClient, sim: Any) -> None:
    sim.configure(latency_ms=2000)
    handle = client.submit(ask("slow"), tier="simple")
    with pytest.raises(JobTimeoutError) as info:
        handle.get(timeout=0.2)
    assert info.value.job_id == handle.job_id  # type: ignore[attr-defined]
    assert handle.get(timeout=30).content  # the job itself still finishes
