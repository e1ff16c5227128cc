"""What a batch's jobs came to, read from Redis where the fleet keeps each job's outcome
(its state key for a day, else Celery's result key), and the output and error files
OpenAI's Batch API writes: one line per request, ``{"id", "custom_id", "response":
{"status_code", "request_id", "body"}, "error"}``, the body exactly what the endpoint
would have answered."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from sqlalchemy.engine import RowMapping

from schemas import CompletionResult, FleetError, JobCancelledError, decode_outcome
from schemas.keys import JOB_STATE
from tasks._results import state_envelope
from workers.api.errors import fleet_error
from workers.api.openai_replies import chat_reply, embedding_reply

__all__ = ["Tally", "read_outcomes", "tally"]

_META = "celery-task-meta-{}"
_CHUNK = 500


def _envelope(raw: Any, meta: bool) -> dict[str, Any] | None:
    """A job's outcome from its state key, or (``meta``) from Celery's result key."""
    value: Any = state_envelope(raw)
    if value is None:
        return None
    if meta:
        value = value.get("result") if value.get("status") == "SUCCESS" else None
    return value if isinstance(value, dict) and "ok" in value else None


def read_outcomes(redis: Redis, job_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The outcome envelope of each of ``job_ids`` that ended."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(job_ids), _CHUNK):
        chunk = list(job_ids[start:start + _CHUNK])
        states = redis.mget([JOB_STATE.format(job_id=j) for j in chunk])
        missing = []
        for job_id, raw in zip(chunk, states, strict=True):
            envelope = _envelope(raw, meta=False)
            if envelope is None:
                missing.append(job_id)
            else:
                found[job_id] = envelope
        if missing:
            metas = redis.mget([_META.format(j) for j in missing])
            for job_id, raw in zip(missing, metas, strict=True):
                envelope = _envelope(raw, meta=True)
                if envelope is not None:
                    found[job_id] = envelope
    return found


@dataclass(slots=True)
class Tally:
    """The batch's requests: how many ended well, how many failed, how many have not
    ended; the output and error files' lines."""

    completed: int = 0
    failed: int = 0
    pending: int = 0
    output: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _cancelled(job: RowMapping) -> str:
    return json.dumps({"id": f"batch_req_{job['job_id']}", "custom_id": job["custom_id"],
                       "response": None, "error": {
                           "code": "batch_cancelled",
                           "message": "the batch was cancelled before this request ended"}})


def _answer(job: RowMapping, status: int, body: dict[str, Any]) -> str:
    return json.dumps({"id": f"batch_req_{job['job_id']}", "custom_id": job["custom_id"],
                       "response": {"status_code": status, "request_id": job["job_id"],
                                    "body": body}, "error": None})


def tally(jobs: Sequence[RowMapping], outcomes: dict[str, dict[str, Any]],
          cancelled: bool = False) -> Tally:
    """Each job's line; a job not ended counts as pending, or (``cancelled``) as a
    cancelled request in the error file."""
    counts = Tally()
    for job in jobs:
        envelope = outcomes.get(job["job_id"])
        if envelope is None:
            if cancelled:
                counts.failed += 1
                counts.errors.append(_cancelled(job))
            else:
                counts.pending += 1
            continue
        try:
            result = decode_outcome(envelope)
        except JobCancelledError:
            counts.failed += 1
            counts.errors.append(_cancelled(job))
            continue
        except FleetError as exc:
            error = fleet_error(exc)
            counts.failed += 1
            counts.errors.append(_answer(job, error.status, {"error": {
                "message": error.message, "type": error.type, "param": error.param,
                "code": error.code}}))
            continue
        if isinstance(result, CompletionResult):
            reply = chat_reply(result).model_dump(mode="json")
        else:
            reply = embedding_reply(result, job["body"].get("encoding_format")).model_dump(
                mode="json")
        counts.completed += 1
        counts.output.append(_answer(job, 200, reply))
    return counts
