"""The OpenAI wire format of ``llmfleet api``, through the official ``openai`` SDK."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.workers.api.conftest import BROKE_BUDGET


@pytest.fixture()
def client(api_url: str, key: str) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{api_url}/v1", api_key=key, max_retries=0, timeout=30) as sdk:
        yield sdk


def ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def test_a_chat_completion_runs_as_a_fleet_job(client: OpenAI, sim: Any) -> None:
    word = uuid.uuid4().hex
    raw = client.chat.completions.with_raw_response.create(
        model="simple", messages=ask(f"echo {word}"), max_tokens=32, temperature=0.2)
    completion = raw.parse()
    assert word in (completion.choices[0].message.content or "")
    assert completion.model == "openai/gpt-4o-mini" and completion.object == "chat.completion"
    assert completion.choices[0].finish_reason
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    headers = raw.headers
    assert headers["x-llmfleet-tier"] == "simple"
    assert headers["x-llmfleet-model"] == "openai/gpt-4o-mini"
    assert float(headers["x-llmfleet-cost-usd"]) > 0
    assert headers["x-llmfleet-cache-hit"] == "false" and headers["x-llmfleet-attempts"] == "1"
    assert completion.id == f"chatcmpl-{headers['x-llmfleet-job-id']}"


def test_model_names_a_tier_or_a_model(client: OpenAI, sim: Any) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="tier/medium", messages=ask("which tier"), max_completion_tokens=16)
    assert raw.headers["x-llmfleet-tier"] == "medium"
    raw = client.chat.completions.with_raw_response.create(
        model="anthropic/claude-3-haiku", messages=[
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "by model"}]}],
        stop=["zzz"], seed=7, user="end-user-9", n=1)
    assert raw.headers["x-llmfleet-model"] == "anthropic/claude-3-haiku"
    assert raw.parse().choices[0].message.content


def test_embeddings_in_base64_and_in_floats(client: OpenAI, sim: Any) -> None:
    # Texts of this test only: a cache hit would answer 0 prompt tokens.
    run = uuid.uuid4().hex[:8]
    texts = [f"routing in the app router {run}", f"pricing of tokens {run}"]
    default = client.embeddings.create(model="embeddings", input=texts, dimensions=64)
    floats = client.embeddings.create(model="openai/text-embedding-3-small", input=texts,
                                      dimensions=64, encoding_format="float")
    assert [d.index for d in default.data] == [0, 1]
    assert len(default.data[0].embedding) == 64
    for a, b in zip(default.data, floats.data, strict=True):
        assert a.embedding == pytest.approx(b.embedding, abs=1e-6)
    assert default.model == "openai/text-embedding-3-small"
    assert default.usage.prompt_tokens > 0


def test_models_lists_tiers_and_models(client: OpenAI) -> None:
    ids = {m.id: m.owned_by for m in client.models.list()}
    assert ids["simple"] == "llmfleet-tier" and ids["embeddings"] == "llmfleet-tier"
    assert "openai/gpt-4o-mini" in ids and "anthropic/claude-3-haiku" in ids
    assert client.models.retrieve("tier/complex").id == "complex"


@pytest.mark.parametrize(("extra", "param"), [
    ({"logprobs": True}, "logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]},
     "tools.0.function.name"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"messages": [{"role": "tool", "tool_call_id": "c1", "content": "4"}]},
     "messages.0.tool_call_id"),
    ({"n": 2}, "n"),
    ({"temperature": 3}, "temperature"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
])
def test_an_unsupported_or_bad_parameter_is_refused_naming_it(
        client: OpenAI, sim: Any, extra: dict[str, Any], param: str) -> None:
    body = {"model": "simple", "messages": ask("x"), **extra}
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/chat/completions", body=body, cast_to=object)
    assert info.value.status_code == 400
    assert info.value.param == param and info.value.type == "invalid_request_error"
    assert sim.stats()["requests"] == 0


def test_an_unknown_model_is_404_model_not_found(client: OpenAI, sim: Any) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=ask("x"))
    assert info.value.code == "model_not_found" and info.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="simple", input="x")  # a chat tier embeds nothing


def test_a_budget_is_429_naming_it(api_url: str, engine: Any, sim: Any) -> None:
    from workers.api.keys import create_key

    _, broke = create_key(engine, "broke", "u2")
    with OpenAI(base_url=f"{api_url}/v1", api_key=broke, max_retries=0) as sdk, \
            pytest.raises(openai.RateLimitError) as info:
        sdk.chat.completions.create(model="simple", messages=ask("x"), max_tokens=64)
    assert info.value.type == "budget_exceeded" and BROKE_BUDGET in info.value.message
    assert sim.stats()["requests"] == 0


def test_providers_failing_after_fallback_is_502(client: OpenAI, sim: Any) -> None:
    sim.configure(error_rate=1.0, fail_models={"claude-3-haiku-20240307": 529})
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="simple", messages=ask(uuid.uuid4().hex),
                                       max_tokens=8)
    assert info.value.status_code == 502 and info.value.code == "all_models_failed"


def test_a_job_past_its_timeout_is_504(client: OpenAI, sim: Any) -> None:
    sim.configure(latency_ms=3000)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="simple", messages=ask(uuid.uuid4().hex),
                                       extra_headers={"x-llmfleet-timeout": "0.3"})
    assert info.value.status_code == 504 and info.value.type == "timeout"
