"""Backoff is full-jitter and capped; Retry-After reads seconds and HTTP dates."""

from __future__ import annotations

import email.utils
import random

import pytest

from workers.pipeline.retry import compute_backoff
from workers.providers.errors import parse_retry_after


def test_backoff_stays_within_the_exponential_ceiling() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (10, 4.0)]:
        delays = [compute_backoff(attempt, base=0.5, cap=4.0, rng=rng) for _ in range(500)]
        assert all(0 <= d <= ceiling for d in delays)
        # Full jitter spreads the delays over the whole range.
        assert max(delays) > 0.8 * ceiling and min(delays) < 0.2 * ceiling


def test_attempts_are_one_based() -> None:
    with pytest.raises(ValueError):
        compute_backoff(0, base=1, cap=1)


def test_retry_after_in_seconds_and_as_a_date() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 7, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(7, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-5") == 0
