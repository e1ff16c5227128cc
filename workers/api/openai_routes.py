"""``/v1``: chat completions, embeddings and models in the OpenAI wire format, each
request run as a fleet job. A request waiting for its job holds no thread: it awaits the
client's async path (``acomplete``; ``JobHandle.wait`` for embeddings)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response

from schemas import EMBEDDINGS_TIER, PRIORITIES, CompletionResult, EmbeddingResult, FleetConfig
from tasks import JobHandle
from workers.api import idempotency
from workers.api.auth_guard import auth_guard, client_address
from workers.api.deadlines import request_deadline, request_wait
from workers.api.errors import ApiError, ErrorResponse
from workers.api.keys import FleetKey
from workers.api.openai_models import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelCard,
    ModelList,
)
from workers.api.openai_replies import chat_reply, embedding_reply, fleet_headers
from workers.api.openai_stream import stream_response
from workers.api.state import ApiState, state_of

__all__ = ["ERROR_RESPONSES", "Caller", "admission_fields", "fleet_key", "job_options",
           "resolve_model", "router"]

log = logging.getLogger(__name__)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 429, 502, 503, 504)}
router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)


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


def job_options(body: ChatCompletionRequest) -> dict[str, Any]:
    """A chat request's options as its job's fields (``FleetClient.submit``'s keywords)."""
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


Timeout = Annotated[str | None, Header(
    alias="x-llmfleet-timeout",
    description="Seconds to wait for the job (60; with a deadline: up to the deadline, "
                "at most 3600 unless this asks, up to 86400).")]
Deadline = Annotated[str | None, Header(
    alias="x-llmfleet-deadline",
    description="How long the job can wait (seconds, or 90m, 24h): long enough, it goes "
                "through a provider's batch API at batch prices (default: the key's).")]
JobPriority = Annotated[str | None, Header(
    alias="x-llmfleet-priority",
    description="high, normal or low: which of its tier's queues the job waits in "
                "(default: the key's priority).")]


IdempotencyKey = Annotated[str | None, Header(
    alias="idempotency-key",
    description="Repeats with this key attach to the job the first started (24 h).")]
RetryCount = Annotated[int | None, Header(alias="x-stainless-retry-count",
                                          include_in_schema=False)]


Submit = Callable[[str | None, float | None], Awaitable[JobHandle]]


async def _start(state: ApiState, caller: FleetKey, body: Any, seconds: float,
                 deadline: float | None, idempotency_key: str | None,
                 retry_count: int | None, submit: Submit
                 ) -> tuple[JobHandle, idempotency.Attempt]:
    """The request's job: its own, or the one a repeat of it started
    (``workers.api.idempotency``): a retry attaches, it does not multiply. A job with a
    deadline has no timeout of its own: its deadline bounds it
    (``workers.api.deadlines``)."""
    lifetime = max(seconds, deadline or 0.0) + state.fleet.job_time_limit_s
    attempt = await asyncio.to_thread(idempotency.begin, state.redis, caller.key_id, body,
                                      idempotency_key, retry_count, lifetime)
    if attempt.attached:
        assert attempt.job_id is not None
        return JobHandle(state.client, attempt.job_id), attempt
    # A job a repeat may attach to outlives this wait (up to the fleet's time limit), so
    # that the repeat finds it running; any other job is dropped when its caller goes.
    job_timeout: float | None = seconds if attempt.record is None else max(
        seconds, state.fleet.job_time_limit_s)
    if deadline is not None:
        job_timeout = None
    try:
        return await submit(attempt.job_id, job_timeout), attempt
    except BaseException:  # nothing was queued: a retry may start the job
        await asyncio.to_thread(idempotency.forget, state.redis, attempt)
        raise


async def _run_once(state: ApiState, caller: FleetKey, body: Any, seconds: float,
                    deadline: float | None, idempotency_key: str | None,
                    retry_count: int | None, submit: Submit) -> Any:
    """The result of the request's job (``_start``)."""
    handle, attempt = await _start(state, caller, body, seconds, deadline, idempotency_key,
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
                           priority: JobPriority = None, deadline_header: Deadline = None
                           ) -> Any:
    """One completion job on the tier or model named by ``model``; with ``stream:
    true``, its answer as server-sent events in OpenAI's chunk format."""
    state = state_of(request)
    route = resolve_model(state.fleet, body.model, embedding=False)
    deadline = request_deadline(caller, deadline_header)
    seconds = request_wait(timeout, state.default_timeout_s, deadline)
    admission = admission_fields(caller, priority)
    messages = [m.model_dump(mode="json", exclude_none=True) for m in body.messages]

    async def submit(job_id: str | None, job_timeout: float | None) -> JobHandle:
        return await state.client.asubmit(
            messages, timeout=job_timeout, agent=caller.agent, user=caller.user,
            job_id=job_id, stream=bool(body.stream), deadline=deadline, **route,
            **job_options(body), **admission)

    fingerprint = body.model_dump(mode="json", exclude_none=True)
    if body.stream:
        handle, attempt = await _start(state, caller, fingerprint, seconds, deadline,
                                       idempotency_key, retry_count, submit)
        after = _position(last_event_id) if attempt.attached else -1
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return stream_response(handle, body.model, include_usage, seconds, after)
    result: CompletionResult = await _run_once(state, caller, fingerprint, seconds,
                                               deadline, idempotency_key, retry_count,
                                               submit)
    response.headers.update(fleet_headers(result))
    return chat_reply(result)


def _position(last_event_id: str | None) -> int:
    """The chunk a resuming client had last (the SSE id we sent), else -1."""
    try:
        return int(last_event_id) if last_event_id is not None else -1
    except ValueError:
        return -1


@router.post("/embeddings", response_model=EmbeddingResponse)
async def embeddings(body: EmbeddingRequest, request: Request, response: Response,
                     caller: Caller, timeout: Timeout = None,
                     idempotency_key: IdempotencyKey = None,
                     retry_count: RetryCount = None,
                     priority: JobPriority = None,
                     deadline_header: Deadline = None) -> EmbeddingResponse:
    """One embedding job on ``llm.embeddings``; vectors in the order of ``input``."""
    state = state_of(request)
    route = resolve_model(state.fleet, body.model, embedding=True)
    deadline = request_deadline(caller, deadline_header)
    seconds = request_wait(timeout, state.default_timeout_s, deadline)
    admission = admission_fields(caller, priority)

    async def submit(job_id: str | None, job_timeout: float | None) -> JobHandle:
        return await asyncio.to_thread(
            state.client.embed, body.input, agent=caller.agent, user=caller.user,
            dimensions=body.dimensions, timeout=job_timeout, job_id=job_id,
            deadline=deadline, **route, **admission)

    result: EmbeddingResult = await _run_once(
        state, caller, body.model_dump(mode="json", exclude_none=True), seconds, deadline,
        idempotency_key, retry_count, submit)
    response.headers.update(fleet_headers(result))
    return embedding_reply(result, body.encoding_format)


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
