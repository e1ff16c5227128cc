"""The lines of a batch's input file (JSONL, one request a line, as OpenAI's Batch API
takes them), checked as ``/v1/chat/completions`` and ``/v1/embeddings`` check a body.

Each line reads ``{"custom_id", "method": "POST", "url", "body"}``. A file with any bad
line is refused whole, each bad line named as OpenAI names it: ``{"code", "message",
"param", "line"}`` (lines from 1), in the batch's ``errors``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from schemas import FleetConfig, describe_errors
from workers.api.errors import ApiError
from workers.api.openai_models import ChatCompletionRequest, EmbeddingRequest
from workers.api.openai_routes import resolve_model

__all__ = ["ENDPOINTS", "MAX_LINES", "InputLine", "LineError", "read_lines"]

#: What a batch may call: each endpoint and the request body it takes.
ENDPOINTS: dict[str, type[BaseModel]] = {"/v1/chat/completions": ChatCompletionRequest,
                                         "/v1/embeddings": EmbeddingRequest}
#: OpenAI's bound on the requests of one batch.
MAX_LINES = 50_000
#: Errors named at most: past this many, the file is surely not what was meant.
_MAX_ERRORS = 100
_MAX_CUSTOM_ID = 512


@dataclass(frozen=True, slots=True)
class InputLine:
    number: int
    custom_id: str
    request: Any  # ChatCompletionRequest | EmbeddingRequest


@dataclass(frozen=True, slots=True)
class LineError:
    """One refused line, in OpenAI's ``errors.data`` shape."""

    line: int
    message: str
    code: str = "invalid_request"
    param: str | None = None

    def as_openai(self) -> dict[str, Any]:
        return {"code": self.code, "message": f"line {self.line}: {self.message}",
                "param": self.param, "line": self.line}


def read_lines(content: bytes, endpoint: str, fleet: FleetConfig
               ) -> tuple[list[InputLine], list[LineError]]:
    """Every request of the file, or the errors of its bad lines (at most 100)."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return [], [LineError(1, "the file is not UTF-8 text", "invalid_file")]
    lines: list[InputLine] = []
    errors: list[LineError] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = _line(number, raw, endpoint, fleet)
        except _Refused as exc:
            errors.append(exc.error)
        else:
            if line.custom_id in seen:
                errors.append(LineError(number, f"custom_id {line.custom_id!r} is not unique "
                                        "in the file", "duplicate_custom_id", "custom_id"))
            seen.add(line.custom_id)
            lines.append(line)
        if len(errors) >= _MAX_ERRORS:
            break
    if not errors and not lines:
        errors.append(LineError(1, "the file holds no request", "empty_file"))
    if len(lines) > MAX_LINES:
        errors.append(LineError(MAX_LINES + 1, f"a batch takes at most {MAX_LINES} requests",
                                "too_many_requests"))
    return lines, errors


class _Refused(Exception):
    def __init__(self, error: LineError) -> None:
        super().__init__(error.message)
        self.error = error


def _line(number: int, raw: str, endpoint: str, fleet: FleetConfig) -> InputLine:
    try:
        item = json.loads(raw)
    except ValueError:
        raise _Refused(LineError(number, "not a JSON object", "invalid_json")) from None
    if not isinstance(item, dict):
        raise _Refused(LineError(number, "not a JSON object", "invalid_json"))
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not 0 < len(custom_id) <= _MAX_CUSTOM_ID:
        raise _Refused(LineError(number, f"custom_id: a string of 1 to {_MAX_CUSTOM_ID} "
                                 "characters is required", "missing_custom_id", "custom_id"))
    if item.get("method") != "POST":
        raise _Refused(LineError(number, "method: only POST is supported", "invalid_method",
                                 "method"))
    if item.get("url") != endpoint:
        raise _Refused(LineError(number, f"url {item.get('url')!r} is not the batch's "
                                 f"endpoint {endpoint!r}", "mismatched_url", "url"))
    extra = set(item) - {"custom_id", "method", "url", "body"}
    if extra:
        raise _Refused(LineError(number, f"unsupported field {sorted(extra)[0]!r}",
                                 "unsupported_parameter", sorted(extra)[0]))
    return InputLine(number, custom_id, _body(number, item.get("body"), endpoint, fleet))


def _body(number: int, body: Any, endpoint: str, fleet: FleetConfig) -> Any:
    """The line's body checked as its endpoint checks a request body."""
    if not isinstance(body, dict):
        raise _Refused(LineError(number, "body: a JSON object is required",
                                 "missing_required_parameter", "body"))
    try:
        request: Any = ENDPOINTS[endpoint].model_validate(body)
    except ValidationError as exc:
        param, message, kind = describe_errors(exc.errors())
        if kind == "extra_forbidden":
            message = "unsupported parameter: the fleet does not support it"
        raise _Refused(LineError(number, f"body.{param}: {message}", "invalid_value",
                                 f"body.{param}")) from None
    if getattr(request, "stream", None):
        raise _Refused(LineError(number, "body.stream: a batch's requests are not streamed",
                                 "invalid_value", "body.stream"))
    try:
        resolve_model(fleet, request.model, embedding=endpoint == "/v1/embeddings")
    except ApiError as exc:
        raise _Refused(LineError(number, f"body.model: {exc.message}", "model_not_found",
                                 "body.model")) from None
    return request
