"""The envelope a task returns: a result or an error, both as plain JSON.

A task never raises across the result backend: Celery would have to rebuild our
exception classes from module paths. It returns ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": ...}`` and the client turns the error back into its class. A
batch message answers ``{"ok": true, "batch": [envelope, ...]}``, one per job in order.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from schemas.errors import FleetError, JobValidationError, WorkerError
from schemas.jobs import CompletionResult, EmbeddingResult

__all__ = ["decode_batch", "decode_outcome", "encode_batch", "encode_error", "encode_result",
           "validation_error"]

Result = CompletionResult | EmbeddingResult


def encode_result(result: Result) -> dict[str, Any]:
    return {"ok": True, "result": result.model_dump(mode="json")}


def encode_error(error: FleetError) -> dict[str, Any]:
    return {"ok": False, "error": error.to_payload()}


def decode_outcome(outcome: Any) -> Result:
    """The result in an envelope, or raise the error it carries."""
    if not isinstance(outcome, dict) or "ok" not in outcome:
        raise WorkerError(f"malformed task result: {str(outcome)[:200]}")
    if not outcome["ok"]:
        raise FleetError.from_payload(outcome.get("error") or {})
    data = outcome.get("result") or {}
    if data.get("kind") == "embedding":
        return EmbeddingResult.model_validate(data)
    return CompletionResult.model_validate(data)


def encode_batch(envelopes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"ok": True, "batch": envelopes}


def decode_batch(outcome: Any, size: int) -> list[dict[str, Any]]:
    """The ``size`` envelopes of a batch message's outcome, in order; raises the error
    the outcome carries instead, or WorkerError when it is malformed."""
    envelopes = outcome.get("batch") if isinstance(outcome, dict) else None
    if not isinstance(envelopes, list) or len(envelopes) != size:
        decode_outcome(outcome)  # raises the error the message carries, if it is one
        raise WorkerError(f"malformed batch result: {str(outcome)[:200]}")
    return envelopes


def validation_error(exc: ValidationError, prefix: str = "") -> JobValidationError:
    """A pydantic error as a JobValidationError naming the first bad field."""
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"]]
    field = ".".join(loc) or "job"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    # A model validator reports on the whole job; its message starts with the field.
    if not loc and ":" in message:
        field, message = (part.strip() for part in message.split(":", 1))
    count = exc.error_count()
    more = f" (and {count - 1} more)" if count > 1 else ""
    return JobValidationError(f"{prefix}{field}: {message}{more}", field=field)
