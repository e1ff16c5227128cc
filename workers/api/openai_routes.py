"""``/v1``: chat completions, embeddings and models in the OpenAI wire format, each
request run as a fleet job. A request waiting for its job holds no thread: it awaits the
client's async path (``acomplete``; ``JobHandle.wait`` for embeddings)."""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response

from schemas import EMBEDDINGS_TIER, PRIORITIES, CompletionResult, EmbeddingResult, FleetConfig
from tasks import JobHandle
from workers.api import idempotency
from workers.api.auth_guard import auth_guard, client_address
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
from workers.api.openai_stream import stream_response
from workers.api.state import ApiState, state_of

__all__ = ["admission_fields", "fleet_key", "resolve_model", "router"]

log = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 429, 502, 503, 504)}
router = APIRouter(prefix="/v1", responses=_ERRORS)


async def fleet_key(request: Request,
                    authorization: Annotated[str | None, Header()] = None) -> FleetKey:
    """The caller's fleet key (``Authorization: Bearer <key>``), else 401; 429 while
    the caller's address has made too many failed attempts."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing API key: send Authorization: Bearer <fleet key>",
                       "invalid_request_error", code="invalid_api_key")
    # A key that just verified costs nothing more. Any other is looked up behind the
    # guard: a wrong one counts against the caller's address, and over its limit the
    # address gets 429 before any key is looked up (workers.api.auth_guard).
    verifier, presented = state_of(request).verifier, token.strip()
    found = verifier.remembered(presented)
    if found is None:
        found = await asyncio.to_thread(auth_guard(request).attempt, client_address(request),
                                        lambda: verifier.verify(presented))
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


def admission_fields(caller: FleetKey, priority: str | None) -> dict[str, Any]:
    """What a request's job carries for admission: the key it came through, the key's
    own limit (``key-<id>``) and its priority: the key's, or a lower one that
    ``x-llmfleet-priority`` asks for (a caller may yield, never jump the queue its key
    was given); 400 naming the header for anything else."""
    chosen: str = caller.limits.priority
    if priority is not None:
        asked = priority.strip().lower()
        if asked not in PRIORITIES:
            raise ApiError(400, f"x-llmfleet-priority: one of {', '.join(PRIORITIES)} "
                           f"(got {priority[:40]!r})", param="x-llmfleet-priority",
                           code="invalid_value")
        if PRIORITIES.index(asked) < PRIORITIES.index(chosen):
            raise ApiError(400, f"x-llmfleet-priority: {asked!r} is above this key's "
                           f"priority ({chosen!r})", param="x-llmfleet-priority",
                           code="invalid_value")
        chosen = asked
    return {"key_id": caller.key_id, "priority": chosen, "key_limits": caller.own_limits()}


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
                                         "frequency_penalty", "seed", "tools", "tool_choice",
                                         "parallel_tool_calls", "response_format")}}
    if body.user:
        # OpenAI's end-user id; the key's user is what budgets see. NULs cannot be stored.
        options["metadata"] = {"openai_user": body.user.replace("\x00", "")}
    return options


Timeout = Annotated[str | None, Header(alias="x-llmfleet-timeout",
                                       description="Seconds to wait for the job (60).")]
JobPriority = Annotated[str | None, Header(
    alias="x-llmfleet-priority",
    description="high, normal or low: which of its tier's queues the job waits in "
                "(default: the key's priority).")]


IdempotencyKey = Annotated[str | None, Header(
    alias="idempotency-key",
    description="Repeats with this key attach to the job the first started (24 h).")]
RetryCount = Annotated[int | None, Header(alias="x-stainless-retry-count",
                                          include_in_schema=False)]


async def _start(state: ApiState, caller: FleetKey, body: Any, seconds: float,
                 idempotency_key: str | None, retry_count: int | None,
                 submit: Callable[[str | None, float], Awaitable[JobHandle]]
                 ) -> tuple[JobHandle, idempotency.Attempt]:
    """The request's job: its own, or the one a repeat of it started
    (``workers.api.idempotency``): a retry attaches, it does not multiply."""
    lifetime = seconds + state.fleet.job_time_limit_s
    attempt = await asyncio.to_thread(idempotency.begin, state.redis, caller.key_id, body,
                                      idempotency_key, retry_count, lifetime)
    if attempt.attached:
        assert attempt.job_id is not None
        return JobHandle(state.client, attempt.job_id), attempt
    # A job a repeat may attach to outlives this wait (up to the fleet's time limit), so
    # that the repeat finds it running; any other job is dropped when its caller goes.
    job_timeout = seconds if attempt.record is None else max(
        seconds, state.fleet.job_time_limit_s)
    try:
        return await submit(attempt.job_id, job_timeout), attempt
    except BaseException:  # nothing was queued: a retry may start the job
        await asyncio.to_thread(idempotency.forget, state.redis, attempt)
        raise


async def _run_once(state: ApiState, caller: FleetKey, body: Any, seconds: float,
                    idempotency_key: str | None, retry_count: int | None,
                    submit: Callable[[str | None, float], Awaitable[JobHandle]]) -> Any:
    """The result of the request's job (``_start``)."""
    handle, attempt = await _start(state, caller, body, seconds, idempotency_key,
                                   retry_count, submit)
    result = await handle.wait(seconds)
    if attempt.record is not None and result.cache_hit:
        # Answered at submit (no worker stored it): leave it where a repeat waits.
        await asyncio.to_thread(idempotency.publish_answer, state.redis, result)
    return result


LastEventId = Annotated[str | None, Header(alias="last-event-id", include_in_schema=False)]


@router.post("/chat/completions", response_model=ChatCompletionResponse)
async def chat_completions(body: ChatCompletionRequest, request: Request, response: Response,
                           caller: Caller, timeout: Timeout = None,
                           idempotency_key: IdempotencyKey = None,
                           retry_count: RetryCount = None,
                           last_event_id: LastEventId = None,
                           priority: JobPriority = None) -> Any:
    """One completion job on the tier or model named by ``model``; with ``stream:
    true``, its answer as server-sent events in OpenAI's chunk format."""
    state = state_of(request)
    route = resolve_model(state.fleet, body.model, embedding=False)
    seconds = _timeout(timeout, state.default_timeout_s)
    admission = admission_fields(caller, priority)
    messages = [m.model_dump(mode="json", exclude_none=True) for m in body.messages]

    async def submit(job_id: str | None, job_timeout: float) -> JobHandle:
        return await state.client.asubmit(
            messages, timeout=job_timeout, agent=caller.agent, user=caller.user,
            job_id=job_id, stream=bool(body.stream), **route, **_job_options(body),
            **admission)

    fingerprint = body.model_dump(mode="json", exclude_none=True)
    if body.stream:
        handle, attempt = await _start(state, caller, fingerprint, seconds, idempotency_key,
                                       retry_count, submit)
        after = _position(last_event_id) if attempt.attached else -1
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return stream_response(handle, body.model, include_usage, seconds, after)
    result: CompletionResult = await _run_once(state, caller, fingerprint, seconds,
                                               idempotency_key, retry_count, submit)
    _fleet_headers(response, result)
    usage = result.usage
    message = ResponseMessage(content=None if result.tool_calls and not result.content
                              else result.content, tool_calls=result.tool_calls)
    return ChatCompletionResponse(
        id=f"chatcmpl-{result.job_id}", created=int(time.time()), model=result.model,
        choices=[ChatChoice(index=0, message=message,
                            finish_reason=result.finish_reason or "stop")],
        usage=CompletionUsage(prompt_tokens=usage.prompt_tokens,
                              completion_tokens=usage.completion_tokens,
                              total_tokens=usage.total_tokens))


def _position(last_event_id: str | None) -> int:
    """The chunk a resuming client had last (the SSE id we sent), else -1."""
    try:
        return int(last_event_id) if last_event_id is not None else -1
    except ValueError:
        return -1


def _encode(vector: list[float], fmt: str | None) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


@router.post("/embeddings", response_model=EmbeddingResponse)
async def embeddings(body: EmbeddingRequest, request: Request, response: Response,
                     caller: Caller, timeout: Timeout = None,
                     idempotency_key: IdempotencyKey = None,
                     retry_count: RetryCount = None,
                     priority: JobPriority = None) -> EmbeddingResponse:
    """One embedding job on ``llm.embeddings``; vectors in the order of ``input``."""
    state = state_of(request)
    route = resolve_model(state.fleet, body.model, embedding=True)
    seconds = _timeout(timeout, state.default_timeout_s)
    admission = admission_fields(caller, priority)

    async def submit(job_id: str | None, job_timeout: float) -> JobHandle:
        return await asyncio.to_thread(
            state.client.embed, body.input, agent=caller.agent, user=caller.user,
            dimensions=body.dimensions, timeout=job_timeout, job_id=job_id, **route,
            **admission)

    result: EmbeddingResult = await _run_once(
        state, caller, body.model_dump(mode="json", exclude_none=True), seconds,
        idempotency_key, retry_count, submit)
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
