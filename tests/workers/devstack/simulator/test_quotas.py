"""The simulator's provider quotas over real HTTP: requests and tokens per minute per
model, over a sliding window, refused as OpenAI and Anthropic refuse them."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.workers.devstack.simulator.conftest import (
    CHAT,
    EMBEDDINGS,
    MESSAGES,
    anthropic,
    anthropic_error,
    chat,
    openai_error,
)
from workers.devstack.simulator import SimulatorThread


def test_requests_past_the_window_get_openai_429s(sim: SimulatorThread,
                                                   client: httpx.Client) -> None:
    # Given 120 requests per minute on one model, over a 1 s window: 2 per window
    sim.configure(quota_rpm={"m1": 120}, quota_window_s=1.0)
    # When three requests come at once, and one for another model
    answers = [client.post(CHAT, json=chat("m1")) for _ in range(3)]
    other = client.post(CHAT, json=chat("m2"))
    # Then two pass and the third is refused in OpenAI's shape, with its headers
    assert [a.status_code for a in answers[:2]] == [200, 200]
    refused = answers[2]
    error = openai_error(refused, 429, "rate_limit_error")
    assert error["code"] == "rate_limit_exceeded"
    assert "Limit 120" in error["message"] and "requests per min (RPM)" in error["message"]
    assert refused.headers["Retry-After"] == "1"
    assert refused.headers["x-ratelimit-limit-requests"] == "120"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"].endswith("ms")
    assert "x-ratelimit-limit-tokens" not in refused.headers
    # And the other model has no quota
    assert other.status_code == 200
    # And the refusal is counted by model, beside the usual counts
    stats = sim.stats()
    assert stats["quota_rejected"] == {"m1": 1}
    assert stats["by_status"] == {"200": 3, "429": 1}


def test_the_window_slides(sim: SimulatorThread, client: httpx.Client) -> None:
    # Given one request per 0.5 s window
    sim.configure(quota_rpm={"m1": 120}, quota_window_s=0.5)
    first = time.monotonic()
    assert client.post(CHAT, json=chat("m1")).status_code == 200
    # When another comes at once, and one more once the first has aged out
    at_once = client.post(CHAT, json=chat("m1"))
    time.sleep(max(0.0, first + 0.55 - time.monotonic()))
    later = client.post(CHAT, json=chat("m1"))
    # Then the first is refused (with what is left of the window) and the second passes
    assert at_once.status_code == 429
    assert int(at_once.headers["x-ratelimit-reset-requests"].removesuffix("ms")) <= 500
    assert later.status_code == 200


def test_anthropic_429_in_its_own_shape(sim: SimulatorThread, client: httpx.Client) -> None:
    # Given one request per second for a Claude model
    sim.configure(quota_rpm={"claude-3-5-haiku": 60}, quota_window_s=1.0)
    # When two come at once
    ok = client.post(MESSAGES, json=anthropic())
    refused = client.post(MESSAGES, json=anthropic())
    # Then the second is Anthropic's rate_limit_error with its headers
    assert ok.status_code == 200
    assert "60 requests per minute" in anthropic_error(refused, 429, "rate_limit_error")
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["anthropic-ratelimit-requests-limit"] == "60"
    assert refused.headers["anthropic-ratelimit-requests-remaining"] == "0"
    reset = datetime.fromisoformat(refused.headers["anthropic-ratelimit-requests-reset"])
    assert abs((reset - datetime.now(UTC)).total_seconds()) <= 2
    assert sim.stats()["quota_rejected"] == {"claude-3-5-haiku": 1}


def test_tokens_count_the_prompt_and_max_tokens(sim: SimulatorThread,
                                                client: httpx.Client) -> None:
    # Given 6,000 tokens per minute over a 1 s window: 100 tokens per window
    prompt = client.post(CHAT, json=chat("m1")).json()["usage"]["prompt_tokens"]
    sim.configure(quota_tpm={"m1": 6000}, quota_window_s=1.0)
    # When a request asks for 40 tokens more than its prompt, a second exactly fills the
    # window, and a third asks for one token
    first = client.post(CHAT, json=chat("m1", max_tokens=40))
    second = client.post(CHAT, json=chat("m1", max_completion_tokens=100 - 2 * prompt - 40))
    third = client.post(CHAT, json=chat("m1", max_tokens=1))
    # Then the third is refused on tokens, whatever the first two answered
    assert first.status_code == second.status_code == 200
    error = openai_error(third, 429, "rate_limit_error")
    assert "tokens per min (TPM)" in error["message"]
    assert f"Requested {prompt + 1}" in error["message"]
    assert third.headers["x-ratelimit-limit-tokens"] == "6000"
    assert third.headers["x-ratelimit-remaining-tokens"] == "0"
    assert third.headers["Retry-After"] == "1"


def test_a_request_larger_than_the_window_never_fits(sim: SimulatorThread,
                                                     client: httpx.Client) -> None:
    # Given 100 tokens per window; When a request asks for more than that
    sim.configure(quota_tpm={"m1": 6000}, quota_window_s=1.0)
    refused = client.post(CHAT, json=chat("m1", max_tokens=200))
    # Then it is refused without a Retry-After (waiting would not help)
    assert "Request too large" in openai_error(refused, 429, "rate_limit_error")["message"]
    assert "Retry-After" not in refused.headers
    # And it took nothing from the window
    assert client.post(CHAT, json=chat("m1", max_tokens=50)).status_code == 200


def test_embeddings_count_every_input(sim: SimulatorThread, client: httpx.Client) -> None:
    # Given 10 tokens per window on an embeddings model
    sim.configure(quota_tpm={"e1": 600}, quota_window_s=1.0)
    # When one request carries 3 texts of 3 tokens, then another 2 texts
    first = client.post(EMBEDDINGS, json={"model": "e1", "input": ["one two three"] * 3})
    second = client.post(EMBEDDINGS, json={"model": "e1", "input": ["one two three"] * 2})
    # Then the first's 9 tokens fit and the second's 6 do not
    assert first.json()["usage"]["prompt_tokens"] == 9
    assert second.status_code == 429


def test_streams_are_refused_before_they_start(sim: SimulatorThread,
                                               client: httpx.Client) -> None:
    # Given one request per window
    sim.configure(quota_rpm={"m1": 60}, quota_window_s=1.0)
    assert client.post(CHAT, json=chat("m1")).status_code == 200
    # When a stream asks next; Then it is a plain 429, no event stream
    refused = client.post(CHAT, json=chat("m1", stream=True))
    assert refused.headers["content-type"].startswith("application/json")
    openai_error(refused, 429, "rate_limit_error")


def test_the_openai_sdk_reads_the_429(sim: SimulatorThread, oai: openai.OpenAI) -> None:
    # Given one request per window
    sim.configure(quota_rpm={"gpt-4o-mini": 60}, quota_window_s=1.0)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    oai.chat.completions.create(model="gpt-4o-mini", messages=messages)
    # When a second comes at once; Then the SDK raises its RateLimitError, headers intact
    with pytest.raises(openai.RateLimitError) as raised:
        oai.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert raised.value.code == "rate_limit_exceeded"
    assert raised.value.response.headers["x-ratelimit-limit-requests"] == "60"


def test_reset_empties_the_windows_and_the_counts(sim: SimulatorThread,
                                                  client: httpx.Client) -> None:
    # Given a model refused once (one request per minute, the default window)
    sim.configure(quota_rpm={"m1": 1})
    client.post(CHAT, json=chat("m1"))
    assert client.post(CHAT, json=chat("m1")).status_code == 429
    # When the stats are reset over HTTP
    assert client.post("/_sim/reset").json()["quota_rejected"] == {}
    # Then a fresh window admits the model again
    assert client.post(CHAT, json=chat("m1")).status_code == 200
    assert sim.stats()["quota_rejected"] == {}


@pytest.mark.parametrize("change", [
    {"quota_rpm": {"m1": 0}},
    {"quota_tpm": {"m1": "many"}},
    {"quota_rpm": ["m1"]},
    {"quota_window_s": 0},
    {"quota_window_s": "60"},
])
def test_bad_quota_settings_are_refused(sim: SimulatorThread, client: httpx.Client,
                                        change: dict[str, object]) -> None:
    # When a bad quota setting is posted, or configured from the thread
    answer = client.post("/_sim/config", json=change)
    # Then it is a 400 naming the field, and nothing changed
    assert answer.status_code == 400
    assert next(iter(change)) in answer.json()["error"]
    with pytest.raises(ValueError):
        sim.configure(**change)
    assert sim.config.quota_rpm == {} and sim.config.quota_window_s == 60.0
