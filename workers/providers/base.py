"""What every provider is: two coroutines over one pooled HTTP client.

Like an httpx transport, a provider has one job per method: ``complete`` turns a
ChatRequest into a Completion and ``embed`` an EmbedRequest into Embeddings. HTTP and
transport failures are mapped to the ``schemas.errors`` tree in one place
(``Provider._post``); the most specific class wins and the original is chained.
Retries and fallback are not a provider's business: the pipeline does them.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx

from schemas import (
    Message,
    ProviderConfig,
    ProviderConnectionError,
    ProviderError,
    ProviderServerError,
    ProviderTimeoutError,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
    Usage,
)
from workers.providers.errors import body_text, error_for_status, parse_retry_after, redact
from workers.providers.streaming import Delta

__all__ = [
    "ChatRequest",
    "Completion",
    "EmbedRequest",
    "Embeddings",
    "Provider",
]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat call, in the fleet's terms (OpenAI's chat format, whole); each provider
    writes its own wire format, and reads its answer back into a Completion."""

    model: str
    wire_model: str
    messages: list[Message]
    max_tokens: int
    sampling: dict[str, Any] = field(default_factory=dict)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    @property
    def wants_json(self) -> bool:
        return self.response_format is not None and self.response_format.type != "text"


@dataclass(frozen=True, slots=True)
class Completion:
    """A provider's answer: text or tool calls, and why it stopped (OpenAI's words:
    stop, length, tool_calls, content_filter); ``usage`` None when the provider gave
    none."""

    content: str
    finish_reason: str | None
    usage: Usage | None
    tool_calls: list[ToolCall] | None = None


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    model: str
    wire_model: str
    texts: list[str]
    dimensions: int | None = None


@dataclass(frozen=True, slots=True)
class Embeddings:
    vectors: list[list[float]]
    usage: Usage | None


class Provider(ABC):
    """A named endpoint speaking one wire format."""

    #: The fleet file's ``kind`` this class serves.
    kind: ClassVar[str]

    def __init__(self, name: str, config: ProviderConfig, http: httpx.AsyncClient,
                 api_key: str | None) -> None:
        self.name = name
        self.config = config
        self._http = http
        self._api_key = api_key
        self._timeout = httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s)

    def __repr__(self) -> str:  # never the key
        return f"<{type(self).__name__} {self.name} {self.config.base_url}>"

    @abstractmethod
    async def complete(self, request: ChatRequest) -> Completion: ...

    @abstractmethod
    async def embed(self, request: EmbedRequest) -> Embeddings: ...

    @abstractmethod
    def stream(self, request: ChatRequest) -> AsyncIterator[Delta]:
        """The answer as it is written: deltas, the last with the finish reason (and
        the usage, when the provider says it). Errors before the first delta are the
        same as ``complete``'s; after it, a ProviderError ends the stream."""

    @contextlib.asynccontextmanager
    async def _open_stream(self, url: str, payload: dict[str, Any], model: str
                           ) -> AsyncIterator[httpx.Response]:
        """POST JSON for a streamed answer: the open response, or the mapped error. A
        transport failure while the caller reads it maps the same way."""
        where = {"provider": self.name, "model": model}
        try:
            async with self._http.stream("POST", url, json=payload, headers=self._headers(),
                                         timeout=self._timeout) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise self._error(response, model)
                yield response
        except httpx.TimeoutException as exc:
            raise ProviderTimeoutError(f"{self.name}: {model} timed out", **where) from exc
        except httpx.TransportError as exc:
            raise ProviderConnectionError(
                f"{self.name}: {model}: the connection failed: {type(exc).__name__}",
                **where) from exc
        except ValueError as exc:  # an event that is not JSON
            raise ProviderServerError(f"{self.name}: {model} streamed a malformed event",
                                      **where) from exc

    @abstractmethod
    def _headers(self) -> dict[str, str]: ...

    @abstractmethod
    def _error_detail(self, body: Any) -> tuple[str, str | None]:
        """(message, code) from an error body in this wire format."""

    async def send(self, method: str, url: str, model: str, **options: Any) -> httpx.Response:
        """One HTTP request with this provider's headers and timeouts (``options`` go to
        httpx: json, files, data, params); the response, or the mapped ProviderError.
        The batch APIs (``workers.providers.batches``) call it too."""
        where = {"provider": self.name, "model": model}
        try:
            response = await self._http.request(method, url, headers=self._headers(),
                                                timeout=self._timeout, **options)
        except httpx.TimeoutException as exc:
            raise ProviderTimeoutError(f"{self.name}: {model} timed out", **where) from exc
        except httpx.TransportError as exc:
            raise ProviderConnectionError(
                f"{self.name}: cannot reach {self.config.base_url}: {type(exc).__name__}",
                **where) from exc
        if response.status_code >= 400:  # the status decides, whatever the body is
            raise self._error(response, model)
        return response

    async def _post(self, url: str, payload: dict[str, Any], model: str) -> Any:
        """POST JSON and return the decoded body, or raise the mapped ProviderError."""
        where = {"provider": self.name, "model": model}
        response = await self.send("POST", url, model, json=payload)
        try:
            return response.json() if response.content else None
        except ValueError as exc:  # a success that is not JSON
            raise ProviderServerError(f"{self.name}: {model} answered a non-JSON body",
                                      status_code=response.status_code, **where) from exc

    def _error(self, response: httpx.Response, model: str) -> ProviderError:
        """The error of a failed response: its class by status, its message from the
        wire format's error body (or the body's text when it is not JSON: a proxy's
        page), and Retry-After whenever the response sent one."""
        try:
            message, code = self._error_detail(response.json())
        except ValueError:
            message, code = body_text(response.content), None
        message = redact(message, (self._api_key or "",))[:300]
        cls = error_for_status(response.status_code, message, code)
        return cls(f"{self.name}: {model}: HTTP {response.status_code}: {message}",
                   provider=self.name, model=model, status_code=response.status_code,
                   retry_after=parse_retry_after(response.headers.get("retry-after")))
