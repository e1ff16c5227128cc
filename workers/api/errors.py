"""Fleet errors as OpenAI error responses, so that every OpenAI SDK raises its own
exception class for them: ``{"error": {"message", "type", "param", "code"}}``.

The mapping is one table, most specific class first (as httpx maps httpcore's errors).
What a retry cannot fix says ``x-should-retry: false``, which the official SDKs obey
(they retry 408, 409, 429 and 5xx otherwise): a budget, a rate limit with its
Retry-After, a job that outlived its wait (a repeat would only start it again; one with
the same Idempotency-Key attaches to it instead). A limit of the fleet's own that fits
again within a minute says ``x-should-retry: true``, with OpenAI's rate limit headers.

    UnknownModelError, UnknownTierError   404  model_not_found
    JobValidationError                    400  invalid_request_error, param = its field
    BudgetExceededError                   429  budget_exceeded, naming the budget
    RateLimitedError                      429  rate_limit_exceeded, type = its kind
                                               (requests, tokens, concurrency), naming it
    RateLimitError                        429  rate_limit_exceeded
    JobTimeoutError                       504  timeout
    AllModelsFailedError, ProviderError   502  provider_error
    FleetUnavailableError                 503  fleet_unavailable
    anything else                         500  server_error
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from schemas import (
    AllModelsFailedError,
    BudgetExceededError,
    FleetError,
    FleetUnavailableError,
    JobTimeoutError,
    JobValidationError,
    ProviderError,
    RateLimitedError,
    RateLimitError,
    UnknownModelError,
    UnknownTierError,
    describe_errors,
)

__all__ = ["ApiError", "ErrorBody", "ErrorResponse", "error_response", "fleet_error",
           "install_handlers", "reset_duration"]

log = logging.getLogger(__name__)

#: What an answer carries when retrying it at once would only cost.
_NO_RETRY = {"x-should-retry": "false"}


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape."""

    error: ErrorBody


class ApiError(Exception):
    """An error answered as it is: status, OpenAI type, param and code."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type_
        self.param, self.code, self.headers = param, code, headers


def error_response(error: ApiError) -> JSONResponse:
    body = ErrorBody(message=error.message, type=error.type, param=error.param, code=error.code)
    return JSONResponse({"error": body.model_dump()}, status_code=error.status,
                        headers=error.headers)


def _budget(exc: BudgetExceededError) -> ApiError:
    spent = f"{exc.spent_usd:.6f}" if exc.spent_usd is not None else "?"
    message = (f"budget {exc.budget!r} ({exc.period or 'its period'}) would be exceeded: "
               f"spent ${spent} of ${exc.limit_usd}")
    return ApiError(429, message, "budget_exceeded", code="budget_exceeded",
                    headers=_NO_RETRY)


#: The longest Retry-After an SDK is told to wait out on its own (OpenAI's SDKs wait at
#: most a minute); a longer one says ``x-should-retry: false``.
_RETRY_WITHIN_S = 60.0
#: A limit's kind, as OpenAI's rate limit headers name it.
_HEADER_KIND = {"requests": "requests", "tokens": "tokens"}


def reset_duration(seconds: float) -> str:
    """A wait as OpenAI's ``x-ratelimit-reset-*`` headers write it: 250ms, 1s, 1.5s,
    6m0s, 1h2m3s."""
    millis = max(0, math.ceil(seconds * 1000))  # never sooner than it is
    if millis < 1000:
        return f"{millis}ms"
    seconds = millis / 1000
    whole = math.floor(seconds)
    hours, rest = divmod(whole, 3600)
    minutes = rest // 60
    second = f"{seconds - hours * 3600 - minutes * 60:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{second}s"
    return f"{minutes}m{second}s" if minutes else f"{second}s"


def _rate_limited(exc: RateLimitedError) -> ApiError:
    """A limit of the fleet (``[[limits]]``, a key's own): 429 as OpenAI answers its own
    (type ``requests`` or ``tokens``, code ``rate_limit_exceeded``), with Retry-After and
    the limit's ``x-ratelimit-*-requests`` or ``-tokens`` headers."""
    message = exc.message
    if exc.limit and exc.limit not in message:
        message = f"limit {exc.limit!r}: {message}"
    retry = exc.retry_after
    headers = {"x-should-retry": "true" if retry is not None and retry <= _RETRY_WITHIN_S
               else "false"}
    if retry is not None:
        headers["retry-after"] = str(max(1, math.ceil(retry)))
    kind = _HEADER_KIND.get(exc.kind or "")
    if kind is not None:
        if exc.limit_value is not None:
            headers[f"x-ratelimit-limit-{kind}"] = str(exc.limit_value)
        if exc.remaining is not None:
            headers[f"x-ratelimit-remaining-{kind}"] = str(exc.remaining)
        if retry is not None:
            headers[f"x-ratelimit-reset-{kind}"] = reset_duration(retry)
    return ApiError(429, message, exc.kind or "rate_limit_exceeded", code="rate_limit_exceeded",
                    headers=headers)


def fleet_error(exc: FleetError) -> ApiError:
    """The OpenAI error for a fleet error."""
    if isinstance(exc, UnknownModelError | UnknownTierError):
        return ApiError(404, exc.message, "invalid_request_error", "model", "model_not_found")
    if isinstance(exc, JobValidationError):
        return ApiError(400, exc.message, "invalid_request_error", exc.field)
    if isinstance(exc, BudgetExceededError):
        return _budget(exc)
    if isinstance(exc, RateLimitedError):
        return _rate_limited(exc)
    if isinstance(exc, RateLimitError):
        headers = dict(_NO_RETRY)
        if exc.retry_after:
            headers["retry-after"] = str(math.ceil(exc.retry_after))
        return ApiError(429, exc.message, "rate_limit_exceeded", code="rate_limit_exceeded",
                        headers=headers)
    if isinstance(exc, JobTimeoutError):
        if exc.timeout is None:  # the job itself ran out of time in the worker
            return ApiError(504, f"job {exc.job_id} passed its timeout before it finished",
                            "timeout", code="timeout", headers=_NO_RETRY)
        return ApiError(504, f"no result within {exc.timeout}s (job {exc.job_id}); the job "
                        "may still finish: repeat the request with the same Idempotency-Key "
                        "to wait for it", "timeout", code="timeout", headers=_NO_RETRY)
    if isinstance(exc, AllModelsFailedError | ProviderError):
        return ApiError(502, exc.message, "provider_error", code="all_models_failed")
    if isinstance(exc, FleetUnavailableError):
        return ApiError(503, exc.message, "fleet_unavailable", code="fleet_unavailable")
    log.error("unmapped fleet error %s: %s", type(exc).__name__, exc.message)
    return ApiError(500, f"{type(exc).__name__}: {exc.message}", "server_error")


def _validation(exc: RequestValidationError) -> ApiError:
    """The most specific problem of a request body, naming its parameter the OpenAI way
    (the field itself, not the member of a union it was tried against)."""
    errors = list(exc.errors())
    if not errors:
        return ApiError(400, "invalid request", param=None, code="invalid_value")
    if errors[0].get("type") == "json_invalid":
        return ApiError(400, "the body is not valid JSON", param=None, code="invalid_json")
    param, message, kind = describe_errors(errors)
    if kind == "extra_forbidden":
        return ApiError(400, f"unsupported parameter {param!r}: the fleet does not support "
                        "it", param=param, code="unsupported_parameter")
    if kind == "missing":
        return ApiError(400, f"missing required parameter {param!r}", param=param,
                        code="missing_required_parameter")
    return ApiError(400, f"{param}: {message}", param=param, code="invalid_value")


async def _on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _on_fleet_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FleetError)
    return error_response(fleet_error(exc))


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(_validation(exc))


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return error_response(ApiError(exc.status_code, str(exc.detail), kind))


def install_handlers(app: Any) -> None:
    """Every error the app can raise answers in OpenAI's shape."""
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(FleetError, _on_fleet_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(HTTPException, _on_http)
