"""Both wire formats: requests as each provider expects, answers and errors mapped."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from schemas import (
    ContextLengthError,
    Message,
    ModelNotFoundError,
    ProviderAuthError,
    ProviderBadRequestError,
    ProviderConfig,
    ProviderConnectionError,
    ProviderError,
    ProviderOverloadedError,
    ProviderServerError,
    ProviderTimeoutError,
    RateLimitError,
)
from workers.providers import ChatRequest, EmbedRequest, Provider, redact
from workers.providers.anthropic import AnthropicProvider
from workers.providers.openai import OpenAIProvider

Handler = Callable[[httpx.Request], httpx.Response]
SECRET = "sk-test-0123456789abcdef"


def _provider(cls: type[Provider], handler: Handler, base: str = "http://p.test/v1") -> Provider:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    config = ProviderConfig(kind=cls.kind, base_url=base)  # type: ignore[arg-type]
    return cls("p", config, http, SECRET)


def _chat(**sampling: Any) -> ChatRequest:
    return ChatRequest(model="fleet/m", wire_model="wire-m", max_tokens=16, sampling=sampling,
                       messages=[Message(role="system", content="be brief"),
                                 Message(role="user", content="hello"),
                                 Message(role="user", content="again")])


def test_openai_request_and_answer() -> None:
    seen: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["url"], seen["auth"] = str(request.url), request.headers["authorization"]
        seen["body"] = json.loads(request.content)
        return httpx.Response(200, json={
            "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 1,
                      "prompt_tokens_details": {"cached_tokens": 4}}})

    completion = asyncio.run(_provider(OpenAIProvider, handler).complete(_chat(temperature=0.1)))
    assert seen["url"] == "http://p.test/v1/chat/completions"
    assert seen["auth"] == f"Bearer {SECRET}"
    assert seen["body"]["model"] == "wire-m" and seen["body"]["temperature"] == 0.1
    assert seen["body"]["messages"][0] == {"role": "system", "content": "be brief"}
    assert completion.content == "hi" and completion.finish_reason == "stop"
    assert completion.usage is not None and completion.usage.cached_tokens == 4


def test_anthropic_request_and_answer() -> None:
    seen: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["url"], seen["headers"] = str(request.url), request.headers
        seen["body"] = json.loads(request.content)
        return httpx.Response(200, json={
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            "stop_reason": "max_tokens",
            "usage": {"input_tokens": 5, "output_tokens": 16, "cache_read_input_tokens": 7,
                      "cache_creation_input_tokens": 1}})

    provider = _provider(AnthropicProvider, handler, base="http://a.test")
    completion = asyncio.run(provider.complete(_chat(stop=["END"])))
    assert seen["url"] == "http://a.test/v1/messages"
    assert seen["headers"]["x-api-key"] == SECRET and "anthropic-version" in seen["headers"]
    body = seen["body"]
    assert body["system"] == "be brief" and body["stop_sequences"] == ["END"]
    # Neighbouring user turns merge: the Messages API wants alternating roles.
    assert body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "hello"}, {"type": "text", "text": "again"}]}]
    assert completion.content == "ab" and completion.finish_reason == "length"
    usage = completion.usage
    assert usage is not None and (usage.prompt_tokens, usage.cached_tokens) == (13, 7)


def test_openai_embeddings_are_put_in_input_order() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["dimensions"] == 2
        return httpx.Response(200, json={"data": [
            {"index": 1, "embedding": [0, 1]}, {"index": 0, "embedding": [1, 0]}],
            "usage": {"prompt_tokens": 4}})

    request = EmbedRequest(model="e", wire_model="e", texts=["x", "y"], dimensions=2)
    result = asyncio.run(_provider(OpenAIProvider, handler).embed(request))
    assert result.vectors == [[1.0, 0.0], [0.0, 1.0]]


OPENAI_ERRORS = [
    (429, {"error": {"message": "slow", "code": "rate_limit_exceeded"}}, RateLimitError),
    (503, {"error": {"message": "busy"}}, ProviderOverloadedError),
    (500, {"error": {"message": "oops"}}, ProviderServerError),
    (408, {"error": {"message": "late"}}, ProviderServerError),
    (401, {"error": {"message": f"Incorrect API key provided: {SECRET}"}}, ProviderAuthError),
    (404, {"error": {"message": "no", "code": "model_not_found"}}, ModelNotFoundError),
    (400, {"error": {"message": "too long", "code": "context_length_exceeded"}},
     ContextLengthError),
    (400, {"error": {"message": "bad", "param": "x"}}, ProviderBadRequestError),
]
ANTHROPIC_ERRORS = [
    (529, {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
     ProviderOverloadedError),
    (400, {"type": "error", "error": {"type": "invalid_request_error",
                                      "message": "prompt is too long: 300000 tokens"}},
     ContextLengthError),
    (404, {"type": "error", "error": {"type": "not_found_error", "message": "model"}},
     ModelNotFoundError),
]


@pytest.mark.parametrize(("cls", "status", "body", "error"),
                         [(OpenAIProvider, *e) for e in OPENAI_ERRORS]
                         + [(AnthropicProvider, *e) for e in ANTHROPIC_ERRORS])
def test_http_errors_map_to_the_most_specific_class(cls: type[Provider], status: int,
                                                    body: Any, error: type[ProviderError]) -> None:
    provider = _provider(cls, lambda r: httpx.Response(status, json=body,
                                                       headers={"retry-after": "2"}))
    with pytest.raises(error) as info:
        asyncio.run(provider.complete(_chat()))
    assert type(info.value) is error
    assert info.value.status_code == status and info.value.provider == "p"
    assert SECRET not in str(info.value)
    if error is RateLimitError:
        assert info.value.retry_after == 2.0  # type: ignore[attr-defined]


@pytest.mark.parametrize(("exc", "error"), [
    (httpx.ConnectError("refused"), ProviderConnectionError),
    (httpx.ReadTimeout("slow"), ProviderTimeoutError),
])
def test_transport_failures_are_mapped(exc: Exception, error: type[ProviderError]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(error) as info:
        asyncio.run(_provider(OpenAIProvider, handler).complete(_chat()))
    assert isinstance(info.value.__cause__, type(exc))


def test_a_malformed_answer_is_a_server_error() -> None:
    provider = _provider(OpenAIProvider, lambda r: httpx.Response(200, json={"nope": 1}))
    with pytest.raises(ProviderServerError):
        asyncio.run(provider.complete(_chat()))


def test_repr_and_redaction_never_show_keys() -> None:
    provider = _provider(OpenAIProvider, lambda r: httpx.Response(200))
    assert SECRET not in repr(provider)
    assert redact(f"key {SECRET} and sk-other-abcdefgh1234", (SECRET,)) == \
        "key *** and sk-***"


_PAGE = b"<html><head><title>429 Too Many Requests</title></head><body><h1>slow down</h1>" \
        b"</body></html>"


@pytest.mark.parametrize(("status", "headers", "content", "expected", "retry_after"), [
    # a proxy's HTML pages: the status decides, not the body
    (429, {"retry-after": "7"}, _PAGE, RateLimitError, 7.0),
    (401, {}, b"<html><body>Unauthorized</body></html>", ProviderAuthError, None),
    (502, {}, b"<html><body>Bad gateway</body></html>", ProviderServerError, None),
    # an overloaded provider's own JSON, its Retry-After kept
    (503, {"retry-after": "3"}, b'{"error": {"message": "busy", "type": "overloaded"}}',
     ProviderOverloadedError, 3.0),
    # a plain-text 400
    (400, {}, b"bad request", ProviderBadRequestError, None),
])
@pytest.mark.parametrize("cls", [OpenAIProvider, AnthropicProvider])
def test_errors_are_classified_by_status_first_and_keep_retry_after(
        cls: type[Provider], status: int, headers: dict[str, str], content: bytes,
        expected: type[ProviderError], retry_after: float | None) -> None:
    # Given a provider (or a proxy before it) answering an error, JSON or not
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers, content=content)

    # When a completion is asked for
    with pytest.raises(ProviderError) as info:
        asyncio.run(_provider(cls, handler, base="http://x.test/v1").complete(_chat()))
    # Then its class follows the status, the Retry-After is kept, and no tag is quoted
    assert type(info.value) is expected
    assert info.value.retry_after == retry_after  # type: ignore[attr-defined]
    assert info.value.status_code == status  # type: ignore[attr-defined]
    assert "<" not in info.value.message


def test_a_success_that_is_not_json_is_a_server_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"<html>maintenance</html>")

    with pytest.raises(ProviderServerError):
        asyncio.run(_provider(OpenAIProvider, handler).complete(_chat()))
