"""The simulator's failure injection, keys, quotas and configuration over real HTTP."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.workers.devstack.simulator.conftest import (
    CHAT,
    EMBEDDINGS,
    MESSAGES,
    anthropic,
    anthropic_error,
    chat,
    openai_error,
)
from workers.devstack.simulator import SimulatorConfig, SimulatorThread


def test_api_key_is_enforced_in_each_format(sim: SimulatorThread, client: httpx.Client) -> None:
    # Given a simulator that requires an API key
    sim.configure(api_key="sk-test")
    # When requests come without it, with a wrong one, and with the right one
    no_key = client.post(CHAT, json=chat())
    wrong = client.post(MESSAGES, json=anthropic(), headers={"x-api-key": "nope"})
    right_openai = client.post(CHAT, json=chat(), headers={"Authorization": "Bearer sk-test"})
    right_anthropic = client.post(MESSAGES, json=anthropic(), headers={"x-api-key": "sk-test"})
    # Then only the keyed ones succeed; the others get 401 in their own shape
    assert openai_error(no_key, 401, "authentication_error")["code"] == "invalid_api_key"
    anthropic_error(wrong, 401, "authentication_error")
    assert right_openai.status_code == right_anthropic.status_code == 200


def test_auth_is_checked_before_the_body(sim: SimulatorThread, client: httpx.Client) -> None:
    # Given a key is required; When a keyless request also has a bad body
    sim.configure(api_key="sk-test")
    response = client.post(CHAT, content=b"not json")
    # Then auth wins
    openai_error(response, 401, "authentication_error")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"not json", None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": "gpt-4o-mini"}', "messages"),
        (b'{"model": "gpt-4o-mini", "messages": []}', "messages"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
            "max_tokens",
        ),
    ],
)
def test_bad_openai_body_is_400_with_param(
    client: httpx.Client, body: bytes, param: str | None
) -> None:
    # Given a malformed chat body; When it is posted
    response = client.post(CHAT, content=body, headers={"content-type": "application/json"})
    # Then it is a 400 invalid_request_error naming the offending param
    assert openai_error(response, 400, "invalid_request_error")["param"] == param


@pytest.mark.parametrize("missing", ["max_tokens", "model", "messages"])
def test_bad_anthropic_body_is_400(client: httpx.Client, missing: str) -> None:
    # Given a Messages body missing a required field
    body = anthropic()
    del body[missing]
    # When it is posted; Then it is a 400 invalid_request_error naming the field
    message = anthropic_error(client.post(MESSAGES, json=body), 400, "invalid_request_error")
    assert missing in message


def test_forced_status_header_applies_to_one_request(client: httpx.Client) -> None:
    # Given requests forcing server errors through x-sim-status
    openai = client.post(CHAT, json=chat(), headers={"x-sim-status": "503"})
    claude = client.post(MESSAGES, json=anthropic(), headers={"x-sim-status": "529"})
    limited = client.post(CHAT, json=chat(), headers={"x-sim-status": "429"})
    # When a request follows without the header
    normal = client.post(CHAT, json=chat())
    # Then each forced status came back in its route's shape, and the next is fine
    openai_error(openai, 503, "server_error")
    anthropic_error(claude, 529, "overloaded_error")
    assert openai_error(limited, 429, "rate_limit_error")["code"] == "rate_limit_exceeded"
    assert normal.status_code == 200


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (500, "server_error", None),
        (503, "server_error", None),
        (529, "server_error", None),
        (429, "rate_limit_error", "rate_limit_exceeded"),
        (404, "invalid_request_error", "model_not_found"),
        (400, "invalid_request_error", "context_length_exceeded"),
        (401, "authentication_error", "invalid_api_key"),
    ],
)
def test_fail_models_openai(
    sim: SimulatorThread, client: httpx.Client, status: int, kind: str, code: str | None
) -> None:
    # Given one model configured to fail with `status`
    sim.configure(fail_models={"broken": status})
    # When it and another model are asked
    failed = client.post(CHAT, json=chat("broken"))
    fine = client.post(CHAT, json=chat("healthy"))
    # Then only the broken one fails, with the matching OpenAI error
    assert openai_error(failed, status, kind)["code"] == code
    assert fine.status_code == 200


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (529, "overloaded_error"),
        (500, "api_error"),
        (429, "rate_limit_error"),
        (404, "not_found_error"),
        (400, "invalid_request_error"),
    ],
)
def test_fail_models_anthropic(
    sim: SimulatorThread, client: httpx.Client, status: int, kind: str
) -> None:
    # Given a failing model; When it is asked through the Messages API
    sim.configure(fail_models={"claude-down": status})
    response = client.post(MESSAGES, json=anthropic("claude-down"))
    # Then the Anthropic error type matches the status
    anthropic_error(response, status, kind)


def test_known_models_reject_others_with_404(sim: SimulatorThread, client: httpx.Client) -> None:
    # Given a fixed model catalogue
    sim.configure(known_models=["gpt-4o-mini", "claude-3-5-haiku"])
    # When a listed and an unlisted model are asked, and the catalogue is listed
    listed = client.post(CHAT, json=chat("gpt-4o-mini"))
    unknown_openai = client.post(CHAT, json=chat("gpt-9"))
    unknown_claude = client.post(MESSAGES, json=anthropic("claude-9"))
    models = client.get("/v1/models").json()
    # Then unlisted models are 404 model_not_found / not_found_error
    assert listed.status_code == 200
    assert openai_error(unknown_openai, 404, "invalid_request_error")["code"] == "model_not_found"
    anthropic_error(unknown_claude, 404, "not_found_error")
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["gpt-4o-mini", "claude-3-5-haiku"]


def test_models_lists_models_seen_without_a_catalogue(client: httpx.Client) -> None:
    # Given requests for two models; When the models are listed
    client.post(CHAT, json=chat("a-model"))
    client.post(MESSAGES, json=anthropic("b-model"))
    # Then both are listed
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["a-model", "b-model"]


def test_context_limit_rejects_long_prompts(sim: SimulatorThread, client: httpx.Client) -> None:
    # Given a 20-token context limit on two models
    sim.configure(context_limits={"small": 20, "claude-small": 20})
    long_text = "word " * 50
    # When a short and a long prompt are sent to each format
    short = client.post(CHAT, json=chat("small"))
    long_openai = client.post(
        CHAT, json={"model": "small", "messages": [{"role": "user", "content": long_text}]}
    )
    long_claude = client.post(
        MESSAGES,
        json={
            "model": "claude-small",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": long_text}],
        },
    )
    # Then only the long ones are 400, each in its provider's words
    assert short.status_code == 200
    error = openai_error(long_openai, 400, "invalid_request_error")
    assert error["code"] == "context_length_exceeded"
    assert "maximum context length is 20 tokens" in error["message"]
    assert "prompt is too long" in anthropic_error(long_claude, 400, "invalid_request_error")


def test_rate_limit_carries_retry_after(sim: SimulatorThread, client: httpx.Client) -> None:
    # Given every request is rate limited, with a 7 s retry hint
    sim.configure(rate_limit_rate=1.0, retry_after_s=7)
    # When each format is asked
    openai = client.post(CHAT, json=chat())
    claude = client.post(MESSAGES, json=anthropic())
    # Then both are 429 with Retry-After: 7
    assert openai_error(openai, 429, "rate_limit_error")["code"] == "rate_limit_exceeded"
    anthropic_error(claude, 429, "rate_limit_error")
    assert openai.headers["Retry-After"] == claude.headers["Retry-After"] == "7"


def test_error_rate_one_always_fails(sim: SimulatorThread, client: httpx.Client) -> None:
    # Given error_rate 1.0; When ten requests of each format are sent
    sim.configure(error_rate=1.0)
    openai = [client.post(CHAT, json=chat()).status_code for _ in range(10)]
    claude = [client.post(MESSAGES, json=anthropic()) for _ in range(10)]
    # Then all fail: 503 server_error for OpenAI, 529 overloaded_error for Anthropic
    assert openai == [503] * 10
    for response in claude:
        anthropic_error(response, 529, "overloaded_error")


def test_seeded_draws_are_reproducible() -> None:
    # Given two simulators with the same seed and a 50% error rate
    def statuses() -> list[int]:
        config = SimulatorConfig(latency_ms=0, error_rate=0.5, seed=42)
        with SimulatorThread(config) as sim, httpx.Client(base_url=sim.base_url) as http:
            return [http.post(CHAT, json=chat()).status_code for _ in range(20)]

    # When each serves the same twenty requests; Then the failures fall identically
    first = statuses()
    assert first == statuses()
    assert set(first) == {200, 503}


def test_latency_is_applied(sim: SimulatorThread, client: httpx.Client) -> None:
    # Given 100 ms latency; When a request is timed
    sim.configure(latency_ms=100)
    started = time.perf_counter()
    response = client.post(CHAT, json=chat())
    # Then it took at least that long
    assert response.status_code == 200
    assert time.perf_counter() - started >= 0.1


def test_omit_usage(sim: SimulatorThread, client: httpx.Client) -> None:
    # Given omit_usage; When each route answers
    sim.configure(omit_usage=True)
    bodies = [
        client.post(CHAT, json=chat()).json(),
        client.post(MESSAGES, json=anthropic()).json(),
        client.post(EMBEDDINGS, json={"model": "text-embedding-3-small", "input": "x"}).json(),
    ]
    # Then no usage object is present
    assert all("usage" not in body for body in bodies)
