"""The Anthropic Messages API: the chat translated both ways by ``anthropic_wire``, cache
reads counted apart in usage, ``stop_reason`` in OpenAI's words."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from schemas import FunctionCall, ProviderBadRequestError, ProviderServerError, ToolCall, Usage
from workers.providers.anthropic_wire import (
    answer_from_format_tool,
    format_tool,
    to_wire,
    tool_choice,
    wire_tools,
)
from workers.providers.base import ChatRequest, Completion, Embeddings, EmbedRequest, Provider
from workers.providers.streaming import Delta, anthropic_deltas

__all__ = ["AnthropicProvider"]

API_VERSION = "2023-06-01"
_STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                 "tool_use": "tool_calls", "refusal": "content_filter", "pause_turn": "stop"}


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

    def chat_payload(self, request: ChatRequest) -> tuple[dict[str, Any], str | None, bool]:
        """(the payload, the name of the tool a response format became, whether its
        schema was wrapped in an object)."""
        system, turns = to_wire(request.messages)
        payload: dict[str, Any] = {"model": request.wire_model, "max_tokens": request.max_tokens,
                                   "messages": turns}
        if system.strip():
            payload["system"] = system
        for name in ("temperature", "top_p"):
            if name in request.sampling:
                # Anthropic's scale ends at 1 where OpenAI's ends at 2.
                payload[name] = min(1.0, request.sampling[name])
        if "stop" in request.sampling:
            payload["stop_sequences"] = request.sampling["stop"]
        tools = wire_tools(request.tools)
        choice = tool_choice(request.tool_choice, request.parallel_tool_calls)
        format_name, wrapped = None, False
        if request.wants_json:
            assert request.response_format is not None
            forced, wrapped = format_tool(request.response_format)
            taken, base = {tool["name"] for tool in tools}, forced["name"]
            for n in range(1, len(taken) + 2):  # a job's own tool of that name keeps it
                if forced["name"] not in taken:
                    break
                forced["name"] = f"{base[:58]}_fmt{n}"
            format_name = forced["name"]
            tools.append(forced)
            # Alone, the format tool is forced; beside the job's own tools, some tool is.
            choice = {"type": "tool", "name": format_name} if len(tools) == 1 else {
                "type": "any", **({"disable_parallel_tool_use": True}
                                  if request.parallel_tool_calls is False else {})}
        if tools:
            payload["tools"] = tools
        if choice is not None and tools:
            payload["tool_choice"] = choice
        return payload, format_name, wrapped

    async def complete(self, request: ChatRequest) -> Completion:
        payload, format_name, wrapped = self.chat_payload(request)
        url = self.config.base_url.rstrip("/") + "/v1/messages"
        body = await self._post(url, payload, request.model)
        return self._checked(body, request, format_name, wrapped)

    def read_completion(self, body: Any, request: ChatRequest) -> Completion:
        """A message's body (a batch's result) read; the request tells which tool, if
        any, its response format became."""
        _, format_name, wrapped = self.chat_payload(request)
        return self._checked(body, request, format_name, wrapped)

    def _checked(self, body: Any, request: ChatRequest, format_name: str | None,
                 wrapped: bool) -> Completion:
        try:
            return self._read(body, format_name, wrapped)
        except (KeyError, TypeError, AttributeError, ValueError):
            raise ProviderServerError(f"{self.name}: {request.model}: malformed message",
                                      provider=self.name, model=request.model) from None

    def _read(self, body: Any, format_name: str | None, wrapped: bool) -> Completion:
        texts: list[str] = []
        calls: list[ToolCall] = []
        for block in body["content"]:
            if block.get("type") == "text":
                texts.append(block["text"])
            elif block.get("type") == "tool_use" and block.get("name") == format_name:
                # The response format's tool: its input is the answer, never empty content.
                return Completion(content=answer_from_format_tool(block, wrapped),
                                  finish_reason="stop", usage=_usage(body.get("usage")))
            elif block.get("type") == "tool_use":
                calls.append(ToolCall(id=block["id"], function=FunctionCall(
                    name=block["name"], arguments=json.dumps(block.get("input") or {}))))
        reason = body.get("stop_reason")
        return Completion(content="".join(texts), finish_reason=_STOP_REASONS.get(reason, reason),
                          usage=_usage(body.get("usage")), tool_calls=calls or None)

    async def stream(self, request: ChatRequest) -> AsyncIterator[Delta]:
        payload, format_name, _ = self.chat_payload(request)
        url = self.config.base_url.rstrip("/") + "/v1/messages"
        async with self._open_stream(url, {**payload, "stream": True},
                                     request.model) as response:
            async for delta in anthropic_deltas(response, self.name, request.model,
                                                format_name):
                yield delta

    async def embed(self, request: EmbedRequest) -> Embeddings:
        raise ProviderBadRequestError(f"{self.name}: the Messages API serves no embeddings",
                                      provider=self.name, model=request.model)


def _usage(raw: Any) -> Usage | None:
    """Anthropic counts cache reads and writes apart from ``input_tokens``; the fleet's
    prompt_tokens is their sum and cached_tokens the reads."""
    if not isinstance(raw, dict) or "input_tokens" not in raw:
        return None
    read = int(raw.get("cache_read_input_tokens") or 0)
    written = int(raw.get("cache_creation_input_tokens") or 0)
    return Usage(prompt_tokens=int(raw["input_tokens"]) + read + written,
                 completion_tokens=int(raw.get("output_tokens") or 0), cached_tokens=read)
