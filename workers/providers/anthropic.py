"""The Anthropic Messages API: system prompt apart, content blocks, cache-read usage."""

from __future__ import annotations

from typing import Any

from schemas import Message, ProviderBadRequestError, ProviderServerError, Usage
from workers.providers.base import ChatRequest, Completion, Embeddings, EmbedRequest, Provider

__all__ = ["AnthropicProvider"]

API_VERSION = "2023-06-01"
_STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                 "tool_use": "tool_calls"}


class AnthropicProvider(Provider):
    kind = "anthropic"

    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION}
        if self._api_key:
            headers["x-api-key"] = self._api_key
        return headers

    def _error_detail(self, body: Any) -> tuple[str, str | None]:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            return str(error.get("message", "")), error.get("type")
        return str(body)[:300], None

    async def complete(self, request: ChatRequest) -> Completion:
        system, turns = _to_wire(request.messages)
        payload: dict[str, Any] = {"model": request.wire_model, "max_tokens": request.max_tokens,
                                   "messages": turns}
        if system:
            payload["system"] = system
        for name in ("temperature", "top_p"):
            if name in request.sampling:
                payload[name] = request.sampling[name]
        if "stop" in request.sampling:
            payload["stop_sequences"] = request.sampling["stop"]
        url = self.config.base_url.rstrip("/") + "/v1/messages"
        body = await self._post(url, payload, request.model)
        try:
            text = "".join(block.get("text", "") for block in body["content"]
                           if block.get("type") == "text")
        except (KeyError, TypeError, AttributeError):
            raise ProviderServerError(f"{self.name}: {request.model}: malformed message",
                                      provider=self.name, model=request.model) from None
        reason = body.get("stop_reason")
        return Completion(content=text, finish_reason=_STOP_REASONS.get(reason, reason),
                          usage=_usage(body.get("usage")))

    async def embed(self, request: EmbedRequest) -> Embeddings:
        raise ProviderBadRequestError(f"{self.name}: the Messages API serves no embeddings",
                                      provider=self.name, model=request.model)


def _to_wire(messages: list[Message]) -> tuple[str, list[dict[str, Any]]]:
    """System text apart; turns alternate, so neighbours of one role are merged."""
    system = "\n\n".join(m.text for m in messages if m.role == "system")
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        block = {"type": "text", "text": message.text}
        if turns and turns[-1]["role"] == message.role:
            turns[-1]["content"].append(block)
        else:
            turns.append({"role": message.role, "content": [block]})
    return system, turns


def _usage(raw: Any) -> Usage | None:
    """Anthropic counts cache reads and writes apart from ``input_tokens``; the fleet's
    prompt_tokens is their sum and cached_tokens the reads."""
    if not isinstance(raw, dict) or "input_tokens" not in raw:
        return None
    read = int(raw.get("cache_read_input_tokens") or 0)
    written = int(raw.get("cache_creation_input_tokens") or 0)
    return Usage(prompt_tokens=int(raw["input_tokens"]) + read + written,
                 completion_tokens=int(raw.get("output_tokens") or 0), cached_tokens=read)
