"""When to try again: one pure backoff function and one Retry-After parser.

The pipeline is the one place that applies them (as dramatiq's retries middleware
applies ``compute_backoff``); nothing else sleeps between provider calls.
"""

from __future__ import annotations

import email.utils
import random
import time

__all__ = ["compute_backoff", "parse_retry_after"]


def compute_backoff(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): full jitter, so that
    many workers failing together do not retry together. Uniform in
    ``[0, min(cap, base * 2 ** (attempt - 1))]``."""
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    ceiling = min(cap, base * (2 ** (attempt - 1)))
    return (rng or random).uniform(0, ceiling)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """A Retry-After header in seconds: delta-seconds or an HTTP date. None when absent
    or unreadable; never negative."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
