"""``/v1``: chat completions, embeddings and models in the OpenAI wire format, each
request run as a fleet job. A request waiting for its job holds no thread: it awaits the
client's async path (``acomplete``; ``JobHandle.wait`` for embeddings)."""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response

from schemas import EMBEDDINGS_TIER, CompletionResult, EmbeddingResult, FleetConfig
from workers.api.errors import ApiError, ErrorResponse
from workers.api.keys import FleetKey
from workers.api.openai_models import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionUsage,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    ModelCard,
    ModelList,
    ResponseMessage,
)
from workers.api.state import state_of

__all__ = ["fleet_key", "resolve_model", "router"]

log = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 429, 502, 503, 504)}
router = APIRouter(prefix="/v1", responses=_ERRORS)


async def fleet_key(request: Request,
                    authorization: Annotated[str | None, Header()] = None) -> FleetKey:
    """The caller's fleet key (``Authorization: Bearer <key>``), else 401."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing API key: send Authorization: Bearer <fleet key>",
                       "invalid_request_error", code="invalid_api_key")
    found = await asyncio.to_thread(state_of(request).verifier.verify, token.strip())
    if found is None:
        raise ApiError(401, "invalid, revoked or expired API key", "invalid_request_error",
                       code="invalid_api_key")
    return found


Caller = Annotated[FleetKey, Depends(fleet_key)]


def resolve_model(fleet: FleetConfig, name: str, *, embedding: bool) -> dict[str, str]:
    """``{"tier": ...}`` or ``{"model": ...}`` for a request's ``model``; 404 when the
    fleet serves no such chat (or embeddings) tier or model."""
    tier = name.removeprefix("tier/")
    kind = "embeddings" if embedding else "chat"
    if tier in fleet.tiers and (tier == EMBEDDINGS_TIER) == embedding:
        return {"tier": tier}
    tiers = [EMBEDDINGS_TIER] if embedding else fleet.chat_tiers
    if any(name in fleet.tiers[t].models for t in tiers if t in fleet.tiers):
        return {"model": name}
    raise ApiError(404, f"the fleet has no {kind} tier or model {name!r}; see GET /v1/models",
                   "invalid_request_error", "model", "model_not_found")


def _timeout(value: str | None, default: float) -> float:
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 3600:
        raise ApiError(400, "x-llmfleet-timeout: seconds in (0, 3600]",
                       param="x-llmfleet-timeout")
    return seconds


def _fleet_headers(response: Response, result: CompletionResult | EmbeddingResult) -> None:
    response.headers.update({
        "x-llmfleet-cost-usd": f"{result.cost_usd:.9f}",
        "x-llmfleet-cache-hit": "true" if result.cache_hit else "false",
        "x-llmfleet-model": result.model,
        "x-llmfleet-tier": result.tier or "",
        "x-llmfleet-attempts": str(result.attempts),
        "x-llmfleet-job-id": result.job_id,
    })


def _job_options(body: ChatCompletionRequest) -> dict[str, Any]:
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    options: dict[str, Any] = {
        "max_tokens": body.max_completion_tokens or body.max_tokens, "stop": stop,
        **{n: getattr(body, n) for n in ("temperature", "top_p", "presence_penalty",
                                         "frequency_penalty", "seed")}}
    if body.user:
        # OpenAI's end-user id; the key's user is what budgets see. NULs cannot be stored.
        options["metadata"] = {"openai_user": body.user.replace("\x00", "")}
    return options


Timeout = Annotated[str | None, Header(alias="x-llmfleet-timeout",
                                       description="Seconds to wait for the job (60).")]


@router.post("/chat/completions", response_model=ChatCompletionResponse)
async def chat_completions(body: ChatCompletionRequest, request: Request, response: Response,
                           caller: Caller, timeout: Timeout = None) -> ChatCompletionResponse:
    """One completion job on the tier or model named by ``model``."""
    state = state_of(request)
    route = resolve_model(state.fleet, body.model, embedding=False)
    messages = [{**m.model_dump(exclude_none=True),
                 "role": "system" if m.role == "developer" else m.role} for m in body.messages]
    result = await state.client.acomplete(
        messages, timeout=_timeout(timeout, state.default_timeout_s), agent=caller.agent,
        user=caller.user, **route, **_job_options(body))
    _fleet_headers(response, result)
    usage = result.usage
    return ChatCompletionResponse(
        id=f"chatcmpl-{result.job_id}", created=int(time.time()), model=result.model,
        choices=[ChatChoice(index=0, message=ResponseMessage(content=result.content),
                            finish_reason=result.finish_reason or "stop")],
        usage=CompletionUsage(prompt_tokens=usage.prompt_tokens,
                              completion_tokens=usage.completion_tokens,
                              total_tokens=usage.total_tokens))


def _encode(vector: list[float], fmt: str | None) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


@router.post("/embeddings", response_model=EmbeddingResponse)
async def embeddings(body: EmbeddingRequest, request: Request, response: Response,
                     caller: Caller, timeout: Timeout = None) -> EmbeddingResponse:
    """One embedding job on ``llm.embeddings``; vectors in the order of ``input``."""
    state = state_of(request)
    route = resolve_model(state.fleet, body.model, embedding=True)
    seconds = _timeout(timeout, state.default_timeout_s)
    handle = await asyncio.to_thread(
        state.client.embed, body.input, agent=caller.agent, user=caller.user,
        dimensions=body.dimensions, timeout=seconds, **route)
    result: EmbeddingResult = await handle.wait(seconds)
    _fleet_headers(response, result)
    data = [EmbeddingData(index=i, embedding=_encode(v, body.encoding_format))
            for i, v in enumerate(result.vectors)]
    tokens = result.usage.prompt_tokens
    return EmbeddingResponse(data=data, model=result.model,
                             usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))


def _cards(fleet: FleetConfig) -> list[ModelCard]:
    tiers = [ModelCard(id=name, owned_by="llmfleet-tier", models=list(tier.models))
             for name, tier in fleet.tiers.items()]
    models = [ModelCard(id=name, owned_by=model.provider) for name, model in fleet.models.items()]
    return tiers + models


@router.get("/models", response_model=ModelList)
async def list_models(request: Request, caller: Caller) -> ModelList:
    """Tiers (use ``simple`` or ``tier/simple``) and the models of the fleet file."""
    return ModelList(data=_cards(state_of(request).fleet))


@router.get("/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, request: Request, caller: Caller) -> ModelCard:
    """One tier or model."""
    for card in _cards(state_of(request).fleet):
        if model_id in (card.id, f"tier/{card.id}"):
            return card
    raise ApiError(404, f"the fleet has no tier or model {model_id!r}",
                   "invalid_request_error", "model", "model_not_found")
