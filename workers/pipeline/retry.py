"""When to try again: one pure backoff function (a provider's own ``Retry-After`` is read
in ``workers.providers.errors``).

The pipeline is the one place that applies it (as dramatiq's retries middleware
applies ``compute_backoff``); nothing else sleeps between provider calls.
"""

from __future__ import annotations

import random

__all__ = ["compute_backoff"]


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
