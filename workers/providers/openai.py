"""The OpenAI-compatible wire format: OpenAI, OpenRouter, vLLM, Ollama. The fleet's chat
shape is OpenAI's, so messages, tools, tool choice and response formats pass through."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from schemas import Message, ProviderServerError, ToolCall, Usage
from workers.providers.base import ChatRequest, Completion, Embeddings, EmbedRequest, Provider
from workers.providers.streaming import Delta, openai_deltas

__all__ = ["OpenAIProvider", "wire_messages"]


def wire_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """The messages as OpenAI-compatible servers take them. "developer" goes as
    "system": every such server knows it, and OpenAI's own models read both alike."""
    wire = []
    for message in messages:
        out = message.model_dump(mode="json", exclude_none=True)
        if message.role == "developer":
            out["role"] = "system"
        if message.role == "assistant" and message.tool_calls and message.content is None:
            out["content"] = None  # OpenAI wants the key, null, beside tool calls
        wire.append(out)
    return wire


class OpenAIProvider(Provider):
    kind = "openai"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _error_detail(self, body: Any) -> tuple[str, str | None]:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code = error.get("code") or error.get("type")
            return str(error.get("message", "")), None if code is None else str(code)
        return str(body)[:300], None

    def chat_payload(self, request: ChatRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": request.wire_model, "messages": wire_messages(request.messages),
            "max_tokens": request.max_tokens, **request.sampling}
        if request.tools:
            payload["tools"] = [t.model_dump(mode="json", exclude_none=True)
                                for t in request.tools]
        if request.tool_choice is not None:
            payload["tool_choice"] = (request.tool_choice if isinstance(request.tool_choice, str)
                                      else request.tool_choice.model_dump(mode="json"))
        if request.parallel_tool_calls is not None:
            payload["parallel_tool_calls"] = request.parallel_tool_calls
        if request.response_format is not None:
            payload["response_format"] = request.response_format.wire()
        return payload

    async def complete(self, request: ChatRequest) -> Completion:
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        body = await self._post(url, self.chat_payload(request), request.model)
        return self.read_completion(body, request)

    def read_completion(self, body: Any, request: ChatRequest) -> Completion:
        """A chat completion's body (a live answer, or a batch's output line) read."""
        try:
            choice = body["choices"][0]
            message = choice["message"]
            calls = [ToolCall.model_validate(c) for c in message.get("tool_calls") or ()]
        except (KeyError, IndexError, TypeError, AttributeError, ValidationError):
            raise ProviderServerError(f"{self.name}: {request.model}: malformed completion",
                                      provider=self.name, model=request.model) from None
        content, reason = message.get("content") or "", choice.get("finish_reason")
        if message.get("refusal"):  # a structured-output refusal: said, not JSON
            content, reason = str(message["refusal"]), "content_filter"
        return Completion(content=content, finish_reason=reason,
                          usage=_usage(body.get("usage")), tool_calls=calls or None)

    async def stream(self, request: ChatRequest) -> AsyncIterator[Delta]:
        payload = {**self.chat_payload(request), "stream": True,
                   "stream_options": {"include_usage": True}}
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        async with self._open_stream(url, payload, request.model) as response:
            async for delta in openai_deltas(response, self.name, request.model):
                yield delta

    async def embed(self, request: EmbedRequest) -> Embeddings:
        payload: dict[str, Any] = {"model": request.wire_model, "input": request.texts}
        if request.dimensions is not None:
            payload["dimensions"] = request.dimensions
        url = self.config.base_url.rstrip("/") + "/embeddings"
        body = await self._post(url, payload, request.model)
        try:
            rows = sorted(body["data"], key=lambda row: row["index"])
            vectors = [list(map(float, row["embedding"])) for row in rows]
        except (KeyError, TypeError, ValueError):
            raise ProviderServerError(f"{self.name}: {request.model}: malformed embeddings",
                                      provider=self.name, model=request.model) from None
        if len(vectors) != len(request.texts):
            raise ProviderServerError(
                f"{self.name}: {request.model}: {len(vectors)} vectors for "
                f"{len(request.texts)} texts", provider=self.name, model=request.model)
        return Embeddings(vectors=vectors, usage=_usage(body.get("usage")))


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict) or "prompt_tokens" not in raw:
        return None
    details = raw.get("prompt_tokens_details") or {}
    return Usage(prompt_tokens=int(raw["prompt_tokens"]),
                 completion_tokens=int(raw.get("completion_tokens") or 0),
                 cached_tokens=int(details.get("cached_tokens") or 0))
