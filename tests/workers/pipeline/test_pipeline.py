"""The pipeline called directly: retries, fallback, Retry-After, breaker, cost.

Providers answer through scripted httpx mock transports; the breaker keeps its state in
real Redis, so two pipelines here stand for two workers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from schemas import (
    AllModelsFailedError,
    CompletionJob,
    EmbeddingJob,
    FleetConfig,
    JobTimeoutError,
    ProviderBadRequestError,
    parse_fleet_config,
)
from workers.pipeline.attempts import AttemptRunner
from workers.pipeline.breaker import Breaker
from workers.pipeline.chain import Pipeline
from workers.pipeline.pricing import estimate_prompt_tokens
from workers.providers import build_providers


@dataclass
class Script:
    """Per provider host, the answers to give in order (the last one repeats)."""

    answers: dict[str, list[httpx.Response]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def handler(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.calls[host] = self.calls.get(host, 0) + 1
        queue = self.answers[host]
        return queue.pop(0) if len(queue) > 1 else queue[0]


def ok_openai(text: str = "fine", usage: bool = True) -> httpx.Response:
    body: dict[str, Any] = {"choices": [{"message": {"content": text}, "finish_reason": "stop"}]}
    if usage:
        body["usage"] = {"prompt_tokens": 1000, "completion_tokens": 500,
                         "prompt_tokens_details": {"cached_tokens": 200}}
    return httpx.Response(200, json=body)


def ok_anthropic() -> httpx.Response:
    return httpx.Response(200, json={"content": [{"type": "text", "text": "from b"}],
                                     "stop_reason": "end_turn",
                                     "usage": {"input_tokens": 10, "output_tokens": 2}})


def status(code: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(code, json={"error": {"message": f"status {code}"}}, headers=headers)


def fleet_config(tag: str) -> FleetConfig:
    return parse_fleet_config({
        "providers": {f"a{tag}": {"kind": "openai", "base_url": "http://a.test/v1"},
                      f"b{tag}": {"kind": "anthropic", "base_url": "http://b.test"}},
        "models": {
            "m1": {"provider": f"a{tag}", "input_per_mtok": 1.0, "output_per_mtok": 4.0,
                   "cached_input_per_mtok": 0.5, "context_window": 4000},
            "m2": {"provider": f"b{tag}", "input_per_mtok": 2.0, "output_per_mtok": 8.0,
                   "context_window": 100000, "wire_name": "m2-wire"},
            "e1": {"provider": f"a{tag}", "input_per_mtok": 0.02, "output_per_mtok": 0,
                   "context_window": 8000},
        },
        "tiers": {"simple": {"models": ["m1", "m2"]}, "embeddings": {"models": ["e1"]}},
        "retry": {"max_retries": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.05,
                  "retry_after_max_s": 5},
        "breaker": {"failure_threshold": 3, "window_s": 30, "cooldown_s": 30},
    })


@dataclass
class Rig:
    pipeline: Pipeline
    script: Script
    sleeps: list[float]
    fleet: FleetConfig
    loop: asyncio.AbstractEventLoop

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def complete(self, **job: Any) -> Any:
        job.setdefault("messages", [{"role": "user", "content": "hello"}])
        return self.run(self.pipeline.complete(CompletionJob.model_validate(job)))

    def use_transport(self, handler: Any) -> None:
        """Point the providers at another scripted transport (same breaker)."""
        async def make() -> None:
            http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
            self.pipeline.providers = build_providers(self.fleet, http, {})
        self.run(make())


@pytest.fixture()
def make_rig(redis_url: str) -> Iterator[Any]:
    tag = uuid.uuid4().hex[:8]  # providers unique to the test: breaker keys do not mix
    loop = asyncio.new_event_loop()
    clients: list[aioredis.Redis] = []

    def build(script: Script) -> Rig:
        fleet = fleet_config(tag)
        sleeps: list[float] = []

        async def fake_sleep(seconds: float) -> None:
            sleeps.append(seconds)

        async def make() -> Pipeline:
            http = httpx.AsyncClient(transport=httpx.MockTransport(script.handler))
            clients.append(aioredis.from_url(redis_url))
            breaker = Breaker(clients[-1], fleet.breaker)
            runner = AttemptRunner(retry=fleet.retry, breaker=breaker, sleep=fake_sleep)
            return Pipeline(fleet, build_providers(fleet, http, {}), breaker, runner)

        return Rig(loop.run_until_complete(make()), script, sleeps, fleet, loop)

    yield build
    for client in clients:
        loop.run_until_complete(client.aclose())
    loop.close()


def test_a_transient_error_is_retried_with_backoff_then_answered(make_rig: Any) -> None:
    rig = make_rig(Script({"a.test": [status(503), status(500), ok_openai()]}))
    result = rig.complete(tier="simple")
    assert (result.model, result.attempts, result.fallback_used) == ("m1", 3, False)
    assert [a.status_code for a in result.attempt_log] == [503, 500, 200]
    assert len(rig.sleeps) == 2 and all(0 <= s <= 0.05 for s in rig.sleeps)



def test_cost_of_the_answering_model(make_rig: Any) -> None:
    rig = make_rig(Script({"a.test": [ok_openai()]}))
    result = rig.complete(tier="simple")
    # 800 fresh input at $1, 200 cached at $0.5, 500 output at $4 per million tokens.
    assert result.cost_usd == pytest.approx((800 * 1 + 200 * 0.5 + 500 * 4) / 1e6)
    assert result.usage.cached_tokens == 200 and not result.usage.estimated


def test_exhausted_retries_fall_back_to_the_next_model(make_rig: Any) -> None:
    rig = make_rig(Script({"a.test": [status(503)], "b.test": [ok_anthropic()]}))
    result = rig.complete(tier="simple")
    assert (result.model, result.provider, result.fallback_used) == ("m2", rig.fleet.models[
        "m2"].provider, True)
    assert rig.script.calls == {"a.test": 3, "b.test": 1}
    assert result.content == "from b"
    assert result.cost_usd == pytest.approx((10 * 2 + 2 * 8) / 1e6)


def test_a_bad_request_is_neither_retried_nor_passed_on(make_rig: Any) -> None:
    rig = make_rig(Script({"a.test": [status(400)], "b.test": [ok_anthropic()]}))
    with pytest.raises(ProviderBadRequestError):
        rig.complete(tier="simple")
    assert rig.script.calls == {"a.test": 1}


def test_model_not_found_moves_on_without_retrying(make_rig: Any) -> None:
    rig = make_rig(Script({"a.test": [status(404)], "b.test": [ok_anthropic()]}))
    result = rig.complete(tier="simple")
    assert result.model == "m2" and rig.script.calls["a.test"] == 1


def test_retry_after_is_honoured(make_rig: Any) -> None:
    rig = make_rig(Script({"a.test": [status(429, {"retry-after": "3"}), ok_openai()]}))
    result = rig.complete(tier="simple")
    assert result.model == "m1" and rig.sleeps == [3.0]


def test_an_overloaded_providers_retry_after_is_honoured_too(make_rig: Any) -> None:
    page = httpx.Response(503, headers={"retry-after": "2"}, content=b"<html>busy</html>")
    rig = make_rig(Script({"a.test": [page, ok_openai()]}))
    result = rig.complete(tier="simple")
    assert result.model == "m1" and rig.sleeps == [2.0]


def test_a_retry_after_past_the_cap_moves_to_the_next_model(make_rig: Any) -> None:
    rig = make_rig(Script({"a.test": [status(429, {"retry-after": "60"})],
                           "b.test": [ok_anthropic()]}))
    result = rig.complete(tier="simple")
    assert result.model == "m2" and rig.sleeps == [] and rig.script.calls["a.test"] == 1


def test_missing_usage_is_counted_and_marked_estimated(make_rig: Any) -> None:
    rig = make_rig(Script({"a.test": [ok_openai("four words right here", usage=False)]}))
    job_messages = [{"role": "user", "content": "count these tokens"}]
    result = rig.complete(tier="simple", messages=job_messages)
    job = CompletionJob.model_validate({"messages": job_messages})
    assert result.usage.estimated
    assert result.usage.prompt_tokens == estimate_prompt_tokens(job.messages)
    assert result.usage.completion_tokens == 4


def test_a_prompt_too_big_for_a_model_skips_it_without_a_call(make_rig: Any) -> None:
    rig = make_rig(Script({"a.test": [ok_openai()], "b.test": [ok_anthropic()]}))
    result = rig.complete(tier="simple", messages=[{"role": "user", "content": "word " * 5000}])
    assert result.model == "m2" and "a.test" not in rig.script.calls


def test_all_models_failing_reports_every_attempt(make_rig: Any) -> None:
    rig = make_rig(Script({"a.test": [status(500)], "b.test": [status(529)]}))
    with pytest.raises(AllModelsFailedError) as info:
        rig.complete(tier="simple")
    attempts = info.value.attempts  # type: ignore[attr-defined]
    assert len(attempts) == 6
    assert {a["model"] for a in attempts} == {"m1", "m2"}


def test_no_fallback_when_the_job_says_so(make_rig: Any) -> None:
    rig = make_rig(Script({"a.test": [status(500)], "b.test": [ok_anthropic()]}))
    with pytest.raises(AllModelsFailedError):
        rig.complete(tier="simple", fallback=False)
    assert "b.test" not in rig.script.calls


def test_a_failing_provider_is_skipped_by_other_workers(make_rig: Any) -> None:
    # Given a provider that fails until the breaker opens (threshold 3) in one worker
    first = make_rig(Script({"a.test": [status(503)], "b.test": [ok_anthropic()]}))
    assert first.complete(tier="simple").model == "m2"
    # When another worker (a new pipeline, same providers, same Redis) runs a job
    second = make_rig(Script({"a.test": [ok_openai()], "b.test": [ok_anthropic()]}))
    # Then it never calls the cooling provider
    assert second.complete(tier="simple").model == "m2"
    script = second.script
    assert "a.test" not in script.calls


def test_a_job_past_its_timeout_is_not_sent(make_rig: Any) -> None:
    rig = make_rig(Script({"a.test": [ok_openai()]}))
    with pytest.raises(JobTimeoutError):
        rig.complete(tier="simple", timeout=1, submitted_at=time.time() - 5)
    assert rig.script.calls == {}


def test_embeddings_are_split_into_provider_batches_in_order(make_rig: Any) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        import json

        texts = json.loads(request.content)["input"]
        return httpx.Response(200, json={
            "data": [{"index": i, "embedding": [float(t.split()[1]), 1.0]}
                     for i, t in reversed(list(enumerate(texts)))],
            "usage": {"prompt_tokens": 2 * len(texts)}})

    rig = make_rig(Script({}))
    tag = next(iter(rig.fleet.providers))
    rig.use_transport(answer)
    rig.pipeline.providers[tag].config = rig.pipeline.providers[tag].config.model_copy(
        update={"max_batch_inputs": 3})
    job = EmbeddingJob.model_validate({"texts": [f"text {i}" for i in range(10)]})
    result = rig.run(rig.pipeline.embed(job))
    assert [v[0] for v in result.vectors] == [float(i) for i in range(10)]
    assert result.attempts == 4 and result.usage.prompt_tokens == 20
    assert result.tier == "embeddings" and result.dimensions == 2
