"""The OpenAI-compatible wire format: OpenAI, OpenRouter, vLLM, Ollama."""

from __future__ import annotations

from typing import Any

from schemas import ProviderServerError, Usage
from workers.providers.base import ChatRequest, Completion, Embeddings, EmbedRequest, Provider

__all__ = ["OpenAIProvider"]


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

    async def complete(self, request: ChatRequest) -> Completion:
        payload: dict[str, Any] = {
            "model": request.wire_model,
            "messages": [m.model_dump(exclude_none=True) for m in request.messages],
            "max_tokens": request.max_tokens,
            **request.sampling,
        }
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        body = await self._post(url, payload, request.model)
        try:
            choice = body["choices"][0]
            content = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ProviderServerError(f"{self.name}: {request.model}: malformed completion",
                                      provider=self.name, model=request.model) from None
        return Completion(content=content, finish_reason=choice.get("finish_reason"),
                          usage=_usage(body.get("usage")))

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
