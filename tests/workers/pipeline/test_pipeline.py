"""The pipeline called directly: retries, fallback, Retry-After, breaker, cost.

Providers answer through scripted httpx mock transports; the breaker keeps its state in
real Redis, so two pipelines here stand for two workers.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from schemas import (
    AllModelsFailedError,
    CompletionJob,
    EmbeddingJob,
    JobTimeoutError,
    ProviderBadRequestError,
)
from tests.workers.pipeline.conftest import Script, ok_anthropic, ok_openai, status
from workers.pipeline.pricing import estimate_prompt_tokens


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
