"""A batch item answered as a live call with its body would be, and what the batch
routes share: their auth and error rendering, the per-item draws.

An item runs the live route's checks that belong to the request itself (body
validation, fail_models, known_models, the context limit) and its answer function,
so its body and usage are exactly a live call's; what belongs to the live call's
moment (quotas, latency, error_rate and rate_limit_rate draws, x-sim-status) does
not apply. A failure is the live call's error body with its status.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from . import _protocol as p
from ._anthropic import parse_messages
from ._batches import Batch, Item, advance
from ._config import STATE, SimState
from ._embeddings import MAX_INPUTS, default_dimensions, embed, max_dimensions, to_base64
from ._openai import parse_chat
from ._protocol import Fmt, Json, Parsed, Reject, with_usage
from ._text import count_tokens

Parse = Callable[[Json], Parsed]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: What an item drawn by batch_item_error_rate ends in: a server error.
_INJECTED = {
    "openai": Reject(500, "The server had an error while processing your request. "
                          "Sorry about that! (simulated)"),
    "anthropic": Reject(500, "Internal server error (simulated)."),
}


def _dimensions_of(body: Json, model: str) -> int:
    dims = body.get("dimensions")
    if dims is None:
        return default_dimensions(model)
    top = max_dimensions(model)
    if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= top:
        message = f"dimensions: an integer from 1 to {top} is required."
        raise Reject(400, message, param="dimensions")
    return dims


def parse_embeddings(body: Json) -> Parsed:
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

    def answer(state: SimState) -> Json:
        data = []
        for index, text in enumerate(inputs):
            vector = embed(text, dims)
            value = to_base64(vector) if encoding == "base64" else vector
            data.append({"object": "embedding", "index": index, "embedding": value})
        result: Json = {"object": "list", "data": data, "model": model}
        usage = {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}
        return with_usage(state.config, result, usage)

    return Parsed(model, max(counts), answer, quota_tokens=sum(counts))


#: The live routes a batch item may go to, by the path OpenAI's lines name.
LIVE: dict[str, Parse] = {
    "/v1/chat/completions": parse_chat,
    "/v1/embeddings": parse_embeddings,
    "/v1/messages": parse_messages,
}


def error_body(rej: Reject, fmt: Fmt) -> Json:
    """The body a live call refused with `rej` has (rendered by the live code)."""
    body: Json = json.loads(p.error_response(rej, fmt).body)  # type: ignore[arg-type]
    return body


def _answer(state: SimState, fmt: Fmt, parse: Parse, body: Json, fail: bool) -> Json:
    """The live route's checks in its order: validation, the model, the context limit,
    then the drawn error (after the checks, as a live call's error_rate draw)."""
    parsed = parse(body)
    if parsed.stream is not None:
        raise Reject(400, "stream: streaming is not supported in a batch.", param="stream")
    config = state.config
    status = config.fail_models.get(parsed.model)
    if status is not None and status >= 400:
        raise p.injected(status, parsed.model, config, fmt)
    if config.known_models is not None and parsed.model not in config.known_models:
        raise p.injected(404, parsed.model, config, fmt)
    limit = config.context_limits.get(parsed.model)
    if limit is not None and parsed.context_tokens > limit:
        raise p.context_error(fmt, parsed.context_tokens, limit)
    if fail:
        raise _INJECTED[fmt]
    return parsed.answer(state)


def run_item(state: SimState, fmt: Fmt, parse: Parse, item: Item) -> None:
    """Answer `item` as the live route would, or with its drawn error; count it."""
    try:
        item.status, item.response = 200, _answer(state, fmt, parse, item.body, item.fail)
        item.outcome = "succeeded"
    except Reject as rej:
        item.status, item.response = rej.status, error_body(rej, fmt)
        item.outcome = "errored"
    model = item.body.get("model")
    state.stats.record_batch(model if isinstance(model, str) else None)


def bring_up(state: SimState, batch: Batch, fmt: Fmt) -> Batch:
    """`batch` as it stands now: its due items answered, ended if its time came."""
    parse = LIVE[batch.wire["endpoint"]]
    advance(batch, time.time(), lambda item: run_item(state, fmt, parse, item))
    return batch


def draw_failures(state: SimState, count: int) -> list[bool]:
    """For each of `count` new items: does it end in an injected error?"""
    draws, rate = state.batch_draws(), state.config.batch_item_error_rate
    return [draws.random() < rate for _ in range(count)]


def draw_expiry(state: SimState) -> bool:
    """Does a new batch expire instead of completing (batch_expire)?"""
    return state.batch_draws().random() < float(state.config.batch_expire)


def route(fmt: Fmt, handle: Callable[[web.Request, SimState], Awaitable[web.StreamResponse]]
          ) -> Handler:
    """A batch or file route: the api_key check, then `handle`; a Reject rendered in
    `fmt`'s shape. These calls are not provider requests: no stats, no quotas."""

    async def handler(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        try:
            p.check_auth(request, state.config, fmt)
            return await handle(request, state)
        except Reject as rej:
            return p.error_response(rej, fmt)

    return handler


def int_query(request: web.Request, name: str, default: int, top: int) -> int:
    """A query parameter holding an integer from 1 to `top` (a page's limit)."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= top:
        raise Reject(400, f"{name}: an integer from 1 to {top} is required, got {raw!r}.",
                     param=name)
    return int(raw)
