"""HTTP routes of the provider simulator: OpenAI and Anthropic wire formats.

Every provider request runs one pipeline, in this order: auth, body
validation, the x-sim-status header, fail_models, known_models, the context
limit, the latency sleep, the seeded error/rate-limit draw, then the answer.
Handlers do no I/O beyond the socket and reuse one tokenizer, so a 2-core
machine serves well over 1,000 requests/s.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from . import _protocol as p
from ._config import STATE, SimState, SimulatorConfig
from ._embeddings import MAX_INPUTS, default_dimensions, embed, max_dimensions, to_base64
from ._protocol import Fmt, Json, Reject
from ._text import content_text, count_prompt_tokens, count_tokens, encoder, make_reply

_ANTHROPIC_ROLES = frozenset({"user", "assistant"})
_MAX_BODY_BYTES = 64 * 1024 * 1024  # 2,048 long embedding inputs fit


@dataclass(slots=True)
class _Parsed:
    """A validated provider request, ready to be answered."""

    model: str
    context_tokens: int  # compared with config.context_limits[model]
    answer: Callable[[SimulatorConfig], Json]


def _with_usage(config: SimulatorConfig, result: Json, usage: Json) -> Json:
    if not config.omit_usage:
        result["usage"] = usage
    return result


def _parse_chat(body: Json) -> _Parsed:
    """POST /v1/chat/completions (OpenAI)."""
    p.no_stream(body)
    model, messages = p.model_of(body), p.messages_of(body)
    limit = p.positive_int(body, "max_completion_tokens") or p.positive_int(body, "max_tokens")
    n = p.positive_int(body, "n") or 1
    stop = p.strings_of(body, "stop")
    prompt = count_prompt_tokens(messages)

    def answer(config: SimulatorConfig) -> Json:
        reply = make_reply(model, messages, limit, stop)
        message = {"role": "assistant", "content": reply.text, "refusal": None}
        finish = "length" if reply.truncated else "stop"
        choices = [
            {"index": i, "message": message, "logprobs": None, "finish_reason": finish}
            for i in range(n)
        ]
        result: Json = {
            "id": f"chatcmpl-{os.urandom(12).hex()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
        }
        completion = reply.tokens * n
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }
        return _with_usage(config, result, usage)

    return _Parsed(model, prompt, answer)


def _system_of(body: Json) -> str | None:
    system = body.get("system")
    if system is None or isinstance(system, str):
        return system
    if isinstance(system, list) and all(isinstance(b, dict) for b in system):
        return content_text(system)
    raise Reject(400, "system: a string or a list of text blocks is required.", param="system")


def _parse_messages(body: Json) -> _Parsed:
    """POST /v1/messages (Anthropic)."""
    p.no_stream(body)
    model = p.model_of(body)
    limit = p.positive_int(body, "max_tokens", required=True)
    messages = p.messages_of(body, _ANTHROPIC_ROLES)
    system = _system_of(body)
    stop = p.strings_of(body, "stop_sequences")
    prompt = count_prompt_tokens(messages, system)

    def answer(config: SimulatorConfig) -> Json:
        reply = make_reply(model, messages, limit, stop)
        reason = "max_tokens" if reply.truncated else "end_turn"
        result: Json = {
            "id": f"msg_{os.urandom(12).hex()}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": reply.text}],
            "stop_reason": "stop_sequence" if reply.stop_sequence else reason,
            "stop_sequence": reply.stop_sequence,
        }
        usage = {
            "input_tokens": prompt,
            "output_tokens": reply.tokens,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        }
        return _with_usage(config, result, usage)

    return _Parsed(model, prompt, answer)


def _dimensions_of(body: Json, model: str) -> int:
    dims = body.get("dimensions")
    if dims is None:
        return default_dimensions(model)
    top = max_dimensions(model)
    if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= top:
        message = f"dimensions: an integer from 1 to {top} is required."
        raise Reject(400, message, param="dimensions")
    return dims


def _parse_embeddings(body: Json) -> _Parsed:
    """POST /v1/embeddings (OpenAI)."""
    model = p.model_of(body)
    inputs = p.strings_of(body, "input")
    if not inputs or len(inputs) > MAX_INPUTS:
        message = f"input: between 1 and {MAX_INPUTS} strings are required, got {len(inputs)}."
        raise Reject(400, message, param="input")
    dims = _dimensions_of(body, model)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise Reject(400, "encoding_format: 'float' or 'base64'.", param="encoding_format")
    counts = [count_tokens(text) for text in inputs]

    def answer(config: SimulatorConfig) -> Json:
        data = []
        for index, text in enumerate(inputs):
            vector = embed(text, dims)
            value = to_base64(vector) if encoding == "base64" else vector
            data.append({"object": "embedding", "index": index, "embedding": value})
        result: Json = {"object": "list", "data": data, "model": model}
        usage = {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}
        return _with_usage(config, result, usage)

    return _Parsed(model, max(counts), answer)


async def _run(state: SimState, request: web.Request, fmt: Fmt, parsed: _Parsed) -> Json:
    """Checks after validation, the latency sleep, the draws; then the answer."""
    config = state.config
    p.check_model(request, config, parsed.model, fmt)
    limit = config.context_limits.get(parsed.model)
    if limit is not None and parsed.context_tokens > limit:
        raise p.context_error(fmt, parsed.context_tokens, limit)
    delay = state.delay_s()
    if delay > 0:
        await asyncio.sleep(delay)
    draw = state.draw()
    if draw < config.error_rate:
        raise Reject(529 if fmt == "anthropic" else 503, "Overloaded (simulated).")
    if draw < config.error_rate + config.rate_limit_rate:
        raise p.rate_limited(config)
    return parsed.answer(config)


def _provider(
    fmt: Fmt, parse: Callable[[Json], _Parsed]
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A provider route handler: the pipeline, error rendering and counting."""

    async def handler(request: web.Request) -> web.Response:
        state = request.app[STATE]
        model: str | None = None
        try:
            p.check_auth(request, state.config, fmt)
            body = await p.read_body(request)
            if isinstance(body.get("model"), str):
                model = body["model"]
            response = web.json_response(await _run(state, request, fmt, parse(body)))
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


async def _reset(request: web.Request) -> web.Response:
    stats = request.app[STATE].stats
    stats.reset()
    return web.json_response(stats.snapshot())


async def _load_tokenizer(app: web.Application) -> None:
    encoder()  # ~0.15 s; here rather than stalling the loop on the first request


def create_app(config: SimulatorConfig) -> web.Application:
    """The simulator's aiohttp application; it reads `config` live on every request."""
    app = web.Application(client_max_size=_MAX_BODY_BYTES)
    app[STATE] = SimState(config)
    app.on_startup.append(_load_tokenizer)
    app.router.add_post("/v1/chat/completions", _provider("openai", _parse_chat))
    app.router.add_post("/v1/embeddings", _provider("openai", _parse_embeddings))
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/messages", _provider("anthropic", _parse_messages))
    app.router.add_get("/_sim/config", _get_config)
    app.router.add_post("/_sim/config", _post_config)
    app.router.add_get("/_sim/stats", _get_stats)
    app.router.add_post("/_sim/reset", _reset)
    return app
