"""Wire-format errors and request validation shared by the simulator's routes.

Failures are raised as `Reject` and rendered in the route's own error shape
(OpenAI's {"error": {...}} or Anthropic's {"type": "error", ...}), so clients
see exactly what the real provider would send.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from ._config import SimState, SimulatorConfig
from ._stream import Streamed

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


class Reject(Exception):
    """An error answer; `error_response` renders it in OpenAI or Anthropic shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.code, self.retry_after, self.headers = code, retry_after, headers


def error_response(rej: Reject, fmt: Fmt) -> web.Response:
    body: Json
    server = rej.status >= 500
    if fmt == "openai":
        kind = _OPENAI_TYPES.get(rej.status, "server_error" if server else "invalid_request_error")
        error = {"message": rej.message, "type": kind, "param": rej.param, "code": rej.code}
        body = {"error": error}
    else:
        kind = _ANTHROPIC_TYPES.get(rej.status, "api_error" if server else "invalid_request_error")
        body = {"type": "error", "error": {"type": kind, "message": rej.message}}
    headers = dict(rej.headers or {})
    if rej.retry_after is not None:
        headers["Retry-After"] = str(rej.retry_after)
    reason = "Overloaded" if rej.status == 529 else None  # not in http.HTTPStatus
    return web.json_response(body, status=rej.status, reason=reason, headers=headers)


def context_error(fmt: Fmt, tokens: int | None, limit: int | None) -> Reject:
    if fmt == "anthropic":
        message = f"prompt is too long: {tokens} tokens > {limit} maximum"
    else:
        message = (
            f"This model's maximum context length is {limit} tokens. However, your messages "
            f"resulted in {tokens} tokens. Please reduce the length of the messages."
        )
    return Reject(400, message, param="messages", code="context_length_exceeded")


def rate_limited(config: SimulatorConfig) -> Reject:
    return Reject(
        429,
        "Rate limit reached (simulated). Please try again later.",
        code="rate_limit_exceeded",
        retry_after=config.retry_after_s,
    )


def injected(status: int, model: str | None, config: SimulatorConfig, fmt: Fmt) -> Reject:
    """The error a forced status stands for: 400 is a context overflow, 404 an unknown model."""
    if status == 400:
        return context_error(fmt, None, config.context_limits.get(model or ""))
    if status == 401:
        return Reject(401, "Invalid API key (simulated).", code="invalid_api_key")
    if status == 404:
        message = f"The model `{model}` does not exist or you do not have access to it."
        return Reject(404, message, param="model", code="model_not_found")
    if status == 429:
        return rate_limited(config)
    if status >= 500:
        return Reject(status, "The server is overloaded or had an error (simulated).")
    return Reject(status, f"Simulated HTTP {status} error.")


def check_auth(request: web.Request, config: SimulatorConfig, fmt: Fmt) -> None:
    if config.api_key is None:
        return
    if fmt == "openai":
        ok = request.headers.get("Authorization") == f"Bearer {config.api_key}"
    else:
        ok = request.headers.get("x-api-key") == config.api_key
    if not ok:
        header = "Authorization: Bearer" if fmt == "openai" else "x-api-key"
        raise Reject(401, f"Incorrect or missing API key in {header}.", code="invalid_api_key")


def forced_status(request: web.Request) -> int | None:
    """The error status the x-sim-status header asks for, if any."""
    raw = request.headers.get("x-sim-status")
    if raw is None:
        return None
    try:
        status = int(raw)
    except ValueError:
        raise Reject(400, f"x-sim-status must be an HTTP status, got {raw!r}.") from None
    return status if status >= 400 else None


def check_model(request: web.Request, config: SimulatorConfig, model: str, fmt: Fmt) -> None:
    """The x-sim-status header, then fail_models, then known_models."""
    status = forced_status(request) or config.fail_models.get(model)
    if status is not None and status >= 400:
        raise injected(status, model, config, fmt)
    if config.known_models is not None and model not in config.known_models:
        raise injected(404, model, config, fmt)


async def read_body(request: web.Request) -> Json:
    try:
        body = json.loads(await request.read())
    except ValueError:
        raise Reject(400, "We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise Reject(400, "The request body must be a JSON object.")
    return body


def model_of(body: Json) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Reject(400, "model: a model name is required.", param="model")
    return model


def positive_int(body: Json, name: str, *, required: bool = False) -> int | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Reject(400, f"{name}: a positive integer is required, got {value!r}.", param=name)
    return value


def strings_of(body: Json, name: str) -> list[str]:
    """A field holding a string or a list of strings (stop, input), as a list."""
    value = body.get(name)
    items = [value] if isinstance(value, str) else value
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise Reject(400, f"{name}: a string or a list of strings is required.", param=name)
    return items


def kind_of(value: object) -> str:
    """A JSON value's type, as OpenAI's errors name it."""
    if value is None:
        return "null"
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a decimal"),
                       (str, "a string"), (list, "an array"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def with_usage(config: SimulatorConfig, result: Json, usage: Json) -> Json:
    if not config.omit_usage:
        result["usage"] = usage
    return result


@dataclass(slots=True)
class Parsed:
    """A validated provider request, ready to be answered (or streamed, if asked)."""

    model: str
    context_tokens: int  # compared with config.context_limits[model]
    answer: Callable[[SimState], Json]
    stream: Callable[[SimState], Streamed] | None = None
    quota_tokens: int = 0  # what it counts against quota_tpm: prompt + max_tokens
