"""Figures as SQL returns them, made plain for JSON and for people: one place for the
conversions every report, page and roll-up shares."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

__all__ = ["money", "plain", "rate", "with_rates"]


def plain(value: Any) -> Any:
    """Decimals (money, sums of bigints) as floats, so that json.dumps takes them."""
    return float(value) if isinstance(value, Decimal) else value


def money(value: Any) -> float:
    """A sum of money, 0.0 where SQL said NULL."""
    return float(value or 0)


def rate(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def with_rates(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row of ledger measures (``jobs``, ``errors``, ``cache_hits``, ...) as plain
    figures, plus its error and cache-hit rates."""
    out = {key: plain(value) for key, value in row.items()}
    jobs = int(row["jobs"])
    out["error_rate"] = rate(int(row["errors"]), jobs)
    out["cache_hit_rate"] = rate(int(row["cache_hits"]), jobs)
    return out
