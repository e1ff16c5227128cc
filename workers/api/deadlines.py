"""How long a request's job can wait (``x-llmfleet-deadline``, else its fleet key's
default deadline) and how long the request waits for it (``x-llmfleet-timeout``).

A job with a deadline may be answered by a provider's batch API, minutes or hours later
(``docs/batches.md``), so its request waits longer by default than a live one: up to
its deadline, at most ``DEFERRED_WAIT_S``; ``x-llmfleet-timeout`` may ask for up to the
deadline, at most ``MAX_DEFERRED_WAIT_S``. Its job's own timeout is then left unset,
so that it never shortens the deadline: a request that stops waiting leaves the job to
be answered by its deadline (and charged), and a repeat with the same
``Idempotency-Key`` waits for that answer.
"""

from __future__ import annotations

from pydantic import ValidationError

from schemas import CompletionJob
from workers.api.errors import ApiError
from workers.api.keys import FleetKey

__all__ = ["DEFERRED_WAIT_S", "LIVE_WAIT_MAX_S", "MAX_DEFERRED_WAIT_S", "request_deadline",
           "request_wait"]

#: The longest ``x-llmfleet-timeout`` of a request whose job has no deadline.
LIVE_WAIT_MAX_S = 3600.0
#: How long a request whose job has a deadline waits unless it says: up to the deadline,
#: at most this.
DEFERRED_WAIT_S = 3600.0
#: The longest ``x-llmfleet-timeout`` of a request whose job has a deadline (and never
#: past the deadline).
MAX_DEFERRED_WAIT_S = 24 * 3600.0

_HEADER = "x-llmfleet-deadline"


def request_deadline(caller: FleetKey, header: str | None) -> float | None:
    """Seconds the request's job can wait: ``x-llmfleet-deadline`` (seconds or a
    duration, a job's own rule), else the key's default, else None; 400 naming the
    header for a value a job would refuse."""
    if header is None:
        return caller.limits.deadline
    try:
        job = CompletionJob.model_validate(
            {"messages": [{"role": "user", "content": "x"}], "deadline": header.strip()})
    except ValidationError as exc:
        reason = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise ApiError(400, f"{_HEADER}: {reason} (seconds, or a duration like 90m, 12h, "
                       f"2d; at most 7d)", param=_HEADER, code="invalid_value") from None
    return job.deadline


def request_wait(header: str | None, default: float, deadline: float | None) -> float:
    """Seconds the request waits for its job: ``x-llmfleet-timeout``, else ``default``
    for a live job, else (a job with a deadline) the deadline up to ``DEFERRED_WAIT_S``;
    400 naming the header for a value outside its bounds."""
    ceiling = LIVE_WAIT_MAX_S
    if deadline is not None:
        ceiling = max(LIVE_WAIT_MAX_S, min(deadline, MAX_DEFERRED_WAIT_S))
        default = max(default, min(deadline, DEFERRED_WAIT_S))
    if header is None:
        return default
    try:
        seconds = float(header)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= ceiling:
        raise ApiError(400, f"x-llmfleet-timeout: seconds in (0, {ceiling:.0f}]",
                       param="x-llmfleet-timeout")
    return seconds
