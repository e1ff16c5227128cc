"""The simulator's wire formats over real HTTP: OpenAI chat and embeddings, Anthropic
Messages, exact token usage."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

from tests.workers.devstack.simulator.conftest import (
    CHAT,
    EMBEDDINGS,
    ENC,
    MESSAGES,
    anthropic,
    chat,
    cosine,
    openai_error,
)
from workers.devstack.simulator import count_prompt_tokens


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


