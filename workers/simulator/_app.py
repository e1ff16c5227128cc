"""HTTP routes of the provider simulator: OpenAI and Anthropic wire formats.

Every provider request runs the same pipeline, in this order: auth, body
validation, the x-sim-status header, fail_models, known_models, the context
limit, the latency sleep, the seeded error/rate-limit draw, then the answer.
Failures are raised as `_Reject` and rendered in the route's own error shape,
so clients see exactly what the real provider would send.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from ._config import SimulatorConfig, SimulatorStats
from ._embeddings import MAX_INPUTS, default_dimensions, embed, max_dimensions, to_base64
from ._text import content_text, count_prompt_tokens, count_tokens, make_reply

Json = dict[str, Any]
Fmt = Literal["openai", "anthropic"]
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
_ANTHROPIC_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


class SimState:
    """What the handlers share: the live config, the counters, the seeded draws."""

    __slots__ = ("_draws", "_jitter", "_seed", "config", "stats")

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.stats = SimulatorStats()
        self._seed = config.seed
        self._draws = random.Random(config.seed)
        self._jitter = random.Random(config.seed + 1)

    def draw(self) -> float:
        """The next failure-injection draw; a new seed restarts the sequence."""
        if self.config.seed != self._seed:
            self._seed = self.config.seed
            self._draws = random.Random(self._seed)
            self._jitter = random.Random(self._seed + 1)
        return self._draws.random()

    def delay_s(self) -> float:
        jitter = self.config.jitter_ms
        return (self.config.latency_ms + (self._jitter.uniform(0, jitter) if jitter else 0)) / 1000


STATE = web.AppKey("simulator_state", SimState)


class _Reject(Exception):
    """An error answer; rendered in OpenAI or Anthropic shape by `_error_response`."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.code, self.retry_after = code, retry_after


@dataclass(slots=True)
class _Parsed:
    model: str
    context_tokens: int  # compared with config.context_limits[model]
    answer: Callable[[], Json]


def _error_response(rej: _Reject, fmt: Fmt) -> web.Response:
    body: Json
    server = rej.status >= 500
    if fmt == "openai":
        kind = _OPENAI_TYPES.get(rej.status, "server_error" if server else "invalid_request_error")
        body = {"error": {"message": rej.message, "type": kind, "param": rej.param,
                          "code": rej.code}}
    else:
        kind = _ANTHROPIC_TYPES.get(rej.status, "api_error" if server else "invalid_request_error")
        body = {"type": "error", "error": {"type": kind, "message": rej.message}}
    headers = None if rej.retry_after is None else {"Retry-After": str(rej.retry_after)}
    return web.json_response(body, status=rej.status, headers=headers)


def _context_error(fmt: Fmt, tokens: int | None, limit: int | None) -> _Reject:
    if fmt == "anthropic":
        message = f"prompt is too long: {tokens} tokens > {limit} maximum"
    else:
        message = (f"This model's maximum context length is {limit} tokens. However, your "
                   f"messages resulted in {tokens} tokens. Please reduce the length of the messages.")
    return _Reject(400, message, param="messages", code="context_length_exceeded")


def _injected(status: int, model: str | None, config: SimulatorConfig, fmt: Fmt) -> _Reject:
    """The error a forced status stands for: 400 is a context overflow, 404 an unknown model."""
    if status == 400:
        return _context_error(fmt, None, config.context_limits.get(model or ""))
    if status == 401:
        return _Reject(401, "Invalid API key (simulated).", code="invalid_api_key")
    if status == 404:
        return _Reject(404, f"The model `{model}` does not exist or you do not have access to it.",
                       param="model", code="model_not_found")
    if status == 429:
        return _Reject(429, "Rate limit reached (simulated). Please try again later.",
                       code="rate_limit_exceeded", retry_after=config.retry_after_s)
    if status >= 500:
        return _Reject(status, "The server is overloaded or had an error (simulated).")
    return _Reject(status, f"Simulated HTTP {status} error.")


def _check_auth(request: web.Request, config: SimulatorConfig, fmt: Fmt) -> None:
    if config.api_key is None:
        return
    if fmt == "openai":
        ok = request.headers.get("Authorization") == f"Bearer {config.api_key}"
    else:
        ok = request.headers.get("x-api-key") == config.api_key
    if not ok:
        header = "Authorization: Bearer" if fmt == "openai" else "x-api-key"
        raise _Reject(401, f"Incorrect or missing API key in {header}.", code="invalid_api_key")


def _forced_status(request: web.Request) -> int | None:
    raw = request.headers.get("x-sim-status")
    if raw is None:
        return None
    try:
        status = int(raw)
    except ValueError:
        raise _Reject(400, f"x-sim-status must be an HTTP status, got {raw!r}.") from None
    return status if status >= 400 else None


def _check_model(request: web.Request, config: SimulatorConfig, model: str, fmt: Fmt) -> None:
    status = _forced_status(request) or config.fail_models.get(model)
    if status is not None and status >= 400:
        raise _injected(status, model, config, fmt)
    if config.known_models is not None and model not in config.known_models:
        raise _injected(404, model, config, fmt)


async def _read_body(request: web.Request) -> Json:
    try:
        body = json.loads(await request.read())
    except ValueError:
        raise _Reject(400, "We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise _Reject(400, "The request body must be a JSON object.")
    return body


def _model_of(body: Json) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _Reject(400, "model: a model name is required.", param="model")
    return model


def _positive_int(body: Json, name: str, *, required: bool = False) -> int | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Reject(400, f"{name}: a positive integer is required, got {value!r}.", param=name)
    return value


def _messages_of(body: Json, roles: frozenset[str] | None) -> list[Json]:
    messages = body.get("messages")
    if isinstance(messages, list) and messages and all(
        isinstance(m, dict) and isinstance(m.get("role"), str)
        and (roles is None or m["role"] in roles) for m in messages
    ):
        return messages
    allowed = "" if roles is None else f" with role in {sorted(roles)}"
    raise _Reject(400, f"messages: a non-empty list of messages{allowed} is required.",
                  param="messages")


def _stops_of(body: Json, name: str) -> list[str]:
    value = body.get(name)
    stops = [value] if isinstance(value, str) else value
    if stops is None:
        return []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _Reject(400, f"{name}: a string or a list of strings is required.", param=name)
    return stops


def _common(body: Json) -> tuple[str, int | None]:
    if body.get("stream"):
        raise _Reject(400, "stream: the simulator does not stream.", param="stream")
    return _model_of(body), _positive_int(body, "max_tokens")


def _usage(config: SimulatorConfig, result: Json, usage: Json) -> Json:
    if not config.omit_usage:
        result["usage"] = usage
    return result
