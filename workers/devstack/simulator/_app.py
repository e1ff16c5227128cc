"""HTTP routes of the provider simulator: OpenAI and Anthropic wire formats.

Every provider request runs one pipeline, in this order: auth, body
validation, the x-sim-status header, fail_models, known_models, the context
limit, the model's quotas (_quota.py: a 429 at once, before any sleep), the
latency sleep, the seeded error/rate-limit draw, then the answer: one JSON
body, or (`"stream": true`) a stream paced by first_token_ms and token_ms
instead of the latency sleep (_stream.py). The wire formats live in
_openai*.py and _anthropic*.py; what to answer, in _answer.py. The batch and
file routes (_openai_files.py, _openai_batches.py, _anthropic_batches.py) check only
the api_key; their items run the request's own checks and answer (_batch_run.py).
Handlers do no I/O beyond the socket and reuse one tokenizer, so a 2-core
machine serves well over 1,000 requests/s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from . import _anthropic_batches as claude_batches
from . import _openai_batches as batches
from . import _openai_files as files
from . import _protocol as p
from ._anthropic import parse_messages
from ._batch_run import parse_embeddings, route
from ._config import STATE, SimState, SimulatorConfig
from ._openai import parse_chat
from ._protocol import Fmt, Json, Parsed, Reject
from ._stream import Streamed, send
from ._text import encoder

_MAX_BODY_BYTES = 64 * 1024 * 1024  # 2,048 long embedding inputs fit


async def _run(state: SimState, request: web.Request, fmt: Fmt, parsed: Parsed) -> Json | Streamed:
    """Checks after validation, the quotas, the latency sleep, the draws; then the answer.

    A stream skips the latency sleep (first_token_ms and token_ms pace it instead);
    every check and draw comes before it starts, so they fail as plain HTTP errors.
    """
    config = state.config
    p.check_model(request, config, parsed.model, fmt)
    limit = config.context_limits.get(parsed.model)
    if limit is not None and parsed.context_tokens > limit:
        raise p.context_error(fmt, parsed.context_tokens, limit)
    refusal = state.quotas.admit(config, parsed.model, parsed.quota_tokens, fmt)
    if refusal is not None:
        state.stats.quota_rejected[parsed.model] += 1
        raise refusal
    delay = state.delay_s()
    if delay > 0 and parsed.stream is None:
        await asyncio.sleep(delay)
    draw = state.draw()
    if draw < config.error_rate:
        raise Reject(529 if fmt == "anthropic" else 503, "Overloaded (simulated).")
    if draw < config.error_rate + config.rate_limit_rate:
        raise p.rate_limited(config)
    return parsed.answer(state) if parsed.stream is None else parsed.stream(state)


def _provider(
    fmt: Fmt, parse: Callable[[Json], Parsed]
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A provider route handler: the pipeline, error rendering and counting."""

    async def handler(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        model: str | None = None
        response: web.StreamResponse
        try:
            p.check_auth(request, state.config, fmt)
            body = await p.read_body(request)
            if isinstance(body.get("model"), str):
                model = body["model"]
            answer = await _run(state, request, fmt, parse(body))
            if isinstance(answer, Streamed):
                response = await send(request, state, answer)
            else:
                response = web.json_response(answer)
        except Reject as rej:
            response = p.error_response(rej, fmt)
        state.stats.record(request.path, model, response.status)
        return response

    return handler


async def _models(request: web.Request) -> web.Response:
    """GET /v1/models: known_models, or every model asked for so far."""
    state = request.app[STATE]
    try:
        p.check_auth(request, state.config, "openai")
        status = p.forced_status(request)
        if status is not None:
            raise p.injected(status, None, state.config, "openai")
        names = state.config.known_models
        ids = list(state.stats.seen_models) if names is None else names
        data = [{"id": i, "object": "model", "created": 0, "owned_by": "simulator"} for i in ids]
        response = web.json_response({"object": "list", "data": data})
    except Reject as rej:
        response = p.error_response(rej, "openai")
    state.stats.record(request.path, None, response.status)
    return response


async def _get_config(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].config.to_dict())


async def _post_config(request: web.Request) -> web.Response:
    config = request.app[STATE].config
    try:
        config.update(**await p.read_body(request))
    except (Reject, ValueError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(config.to_dict())


async def _get_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].stats.snapshot())


async def _get_stream_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].streams.snapshot())


async def _reset(request: web.Request) -> web.Response:
    """POST /_sim/reset: zero the counters, empty the quotas' windows."""
    state = request.app[STATE]
    state.reset_stats()
    return web.json_response(state.stats.snapshot())


async def _load_tokenizer(app: web.Application) -> None:
    encoder()  # ~0.15 s; here rather than stalling the loop on the first request


def _add_batch_routes(app: web.Application) -> None:
    """OpenAI's files and batches, Anthropic's message batches (not counted as requests;
    their items are, apart, in stats' batch_requests)."""
    add = app.router.add_route
    for method, path, handle in (
        ("POST", "/v1/files", files.upload),
        ("GET", "/v1/files/{file_id}", files.retrieve),
        ("GET", "/v1/files/{file_id}/content", files.content),
        ("DELETE", "/v1/files/{file_id}", files.delete),
        ("POST", "/v1/batches", batches.create),
        ("GET", "/v1/batches", batches.listing),
        ("GET", "/v1/batches/{batch_id}", batches.retrieve),
        ("POST", "/v1/batches/{batch_id}/cancel", batches.cancel),
    ):
        add(method, path, route("openai", handle))
    for method, path, handle in (
        ("POST", "/v1/messages/batches", claude_batches.create),
        ("GET", "/v1/messages/batches", claude_batches.listing),
        ("GET", "/v1/messages/batches/{batch_id}", claude_batches.retrieve),
        ("DELETE", "/v1/messages/batches/{batch_id}", claude_batches.delete),
        ("POST", "/v1/messages/batches/{batch_id}/cancel", claude_batches.cancel),
        ("GET", "/v1/messages/batches/{batch_id}/results", claude_batches.results),
    ):
        add(method, path, route("anthropic", handle))


def create_app(config: SimulatorConfig) -> web.Application:
    """The simulator's aiohttp application; it reads `config` live on every request."""
    app = web.Application(client_max_size=_MAX_BODY_BYTES)
    app[STATE] = SimState(config)
    app.on_startup.append(_load_tokenizer)
    app.router.add_post("/v1/chat/completions", _provider("openai", parse_chat))
    app.router.add_post("/v1/embeddings", _provider("openai", parse_embeddings))
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/messages", _provider("anthropic", parse_messages))
    _add_batch_routes(app)
    app.router.add_get("/_sim/config", _get_config)
    app.router.add_post("/_sim/config", _post_config)
    app.router.add_get("/_sim/stats", _get_stats)
    app.router.add_get("/_sim/stats/streams", _get_stream_stats)
    app.router.add_post("/_sim/reset", _reset)
    return app
