"""A job's result as ``/v1`` answers it: the one place that shape is made, so that a
batch's output file carries exactly what ``POST /v1/chat/completions`` (or
``/v1/embeddings``) would have answered for the same job."""

from __future__ import annotations

import base64
import struct
import time

from schemas import CompletionResult, EmbeddingResult
from workers.api.openai_models import (
    ChatChoice,
    ChatCompletionResponse,
    CompletionUsage,
    EmbeddingData,
    EmbeddingResponse,
    EmbeddingUsage,
    ResponseMessage,
)

__all__ = ["chat_reply", "embedding_reply", "fleet_headers"]


def fleet_headers(result: CompletionResult | EmbeddingResult) -> dict[str, str]:
    """The ``x-llmfleet-*`` headers of a job's answer."""
    return {
        "x-llmfleet-cost-usd": f"{result.cost_usd:.9f}",
        "x-llmfleet-cache-hit": "true" if result.cache_hit else "false",
        "x-llmfleet-model": result.model,
        "x-llmfleet-tier": result.tier or "",
        "x-llmfleet-attempts": str(result.attempts),
        "x-llmfleet-job-id": result.job_id,
    }


def chat_reply(result: CompletionResult, created: int | None = None
               ) -> ChatCompletionResponse:
    """``POST /v1/chat/completions``'s answer for a completion job's result."""
    usage = result.usage
    message = ResponseMessage(content=None if result.tool_calls and not result.content
                              else result.content, tool_calls=result.tool_calls)
    return ChatCompletionResponse(
        id=f"chatcmpl-{result.job_id}", created=created or int(time.time()),
        model=result.model,
        choices=[ChatChoice(index=0, message=message,
                            finish_reason=result.finish_reason or "stop")],
        usage=CompletionUsage(prompt_tokens=usage.prompt_tokens,
                              completion_tokens=usage.completion_tokens,
                              total_tokens=usage.total_tokens))


def _encode(vector: list[float], fmt: str | None) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def embedding_reply(result: EmbeddingResult, encoding_format: str | None
                    ) -> EmbeddingResponse:
    """``POST /v1/embeddings``'s answer: vectors in the order of ``input``, as floats or
    base64 of little-endian float32."""
    data = [EmbeddingData(index=i, embedding=_encode(v, encoding_format))
            for i, v in enumerate(result.vectors)]
    tokens = result.usage.prompt_tokens
    return EmbeddingResponse(data=data, model=result.model,
                             usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))
