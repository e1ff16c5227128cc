"""The envelope a task returns: a result or an error, both as plain JSON.

A task never raises across the result backend: Celery would have to rebuild our
exception classes from module paths. It returns ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": ...}`` and the client turns the error back into its class. A
batch message answers ``{"ok": true, "batch": [envelope, ...]}``, one per job in order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from schemas.errors import FleetError, JobValidationError, WorkerError
from schemas.jobs import CompletionResult, EmbeddingResult

__all__ = ["decode_outcome", "describe_errors", "encode_error", "encode_result",
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


#: A union member pydantic names by its class (``NamedToolChoice``); no field is so named.
_MEMBER_CLASS = re.compile(r"^[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]+)+$")


def _path(loc: tuple[Any, ...]) -> list[str]:
    """A pydantic location as a field path: union members (``list[...]``, ``str``, a
    model's class name) and discriminator tags (the tag repeats the field that follows
    it) left out."""
    path: list[str] = []
    for part in map(str, loc):
        if "[" in part or part in ("str", "int", "float", "bool", "none") \
                or _MEMBER_CLASS.match(part):
            continue
        if not path or path[-1] != part:
            path.append(part)
    return path


def describe_errors(errors: Sequence[Any]) -> tuple[str, str, str]:
    """(field, message, pydantic's error type) of the most specific of pydantic's
    ``errors`` (where a value matched no member of a union, the member it came closest
    to); ``body`` (FastAPI's root) is left out of the field."""
    first = max(errors, key=lambda e: len(_path(e["loc"])))
    loc = [part for part in _path(first["loc"]) if part != "body"]
    field = ".".join(loc) or "job"
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    # A model validator reports on the model; its message starts with the field.
    if ":" in message and message.split(":", 1)[0].replace(".", "").replace("_", "").isalnum():
        head, message = (part.strip() for part in message.split(":", 1))
        field = ".".join([*loc, head]) if loc and not head.startswith(loc[0]) else head
    return field, message, str(first["type"])


def validation_error(exc: ValidationError, prefix: str = "") -> JobValidationError:
    """A pydantic error as a JobValidationError naming the most specific bad field."""
    errors = exc.errors()
    field, message, _ = describe_errors(errors)
    count = len(errors)
    more = f" (and {count - 1} more)" if count > 1 else ""
    return JobValidationError(f"{prefix}{field}: {message}{more}", field=field)
