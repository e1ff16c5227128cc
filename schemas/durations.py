"""Durations and moments as people write them: "90m", "24h", "7d", "2w", or an ISO date.

One parser for every place that reads one (key lifetimes, report windows, job deadlines).
"""

from __future__ import annotations

import datetime as dt
import re

__all__ = ["parse_duration", "parse_since"]

_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(value: str) -> dt.timedelta:
    """"45s", "90m", "12h", "30d", "2w" as a timedelta (never zero)."""
    match = _DURATION.match(value.strip().lower())
    if not match or int(match[1]) == 0:
        raise ValueError(f"{value!r} is not a duration like 90m, 12h, 30d or 2w")
    return dt.timedelta(**{_UNITS[match[2]]: int(match[1])})


def parse_since(value: str, now: dt.datetime | None = None) -> dt.datetime:
    """A moment back from ``now`` ("24h", "7d", "2w") or an ISO date or time (UTC unless
    it says)."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        return now - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is neither like 24h, 7d, 2w nor an ISO date") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
