"""Provider quotas: requests and tokens per minute per model, over a sliding window.

`quota_rpm` and `quota_tpm` (by wire model name) and `quota_window_s`: any window of
that length admits at most rpm x window / 60 requests and tpm x window / 60 tokens, a
request's tokens being its prompt plus its max_tokens (times n), counted when it is
admitted, as OpenAI counts them. Past either, a 429 in the route's own error shape with
Retry-After (whole seconds until the window admits one more; none when the request can
never fit) and the provider's rate-limit headers: OpenAI's x-ratelimit-limit-*,
-remaining-* and -reset-* (a duration), Anthropic's anthropic-ratelimit-*-limit,
-remaining and -reset (an RFC 3339 time), for requests and, under a tpm, tokens.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # _config holds the windows, and _protocol imports _config
    from ._config import SimulatorConfig
    from ._protocol import Fmt, Reject

Kind = Literal["requests", "tokens"]


@dataclass(frozen=True, slots=True)
class _Use:
    """One quota (requests or tokens) of a model, as a request finds it."""

    kind: Kind
    per_minute: int
    remaining: int  # of the window, before this request
    wait_s: float  # until the window admits this request; inf: never
    reset_s: float  # until the window is empty again


class QuotaWindows:
    """The requests each model admitted in the last window: (when, tokens), oldest first."""

    __slots__ = ("_seen", "_tokens")

    def __init__(self) -> None:
        self._seen: dict[str, deque[tuple[float, int]]] = {}
        self._tokens: dict[str, int] = {}  # the sum of each model's window

    def clear(self) -> None:
        self._seen.clear()
        self._tokens.clear()

    def admit(self, config: SimulatorConfig, model: str, tokens: int, fmt: Fmt) -> Reject | None:
        """Count the request in `model`'s window; or the 429 to answer, counting nothing."""
        rpm, tpm = config.quota_rpm.get(model), config.quota_tpm.get(model)
        if rpm is None and tpm is None:
            return None
        now, window = time.monotonic(), config.quota_window_s
        seen = self._seen.setdefault(model, deque())
        while seen and seen[0][0] <= now - window:
            self._tokens[model] -= seen.popleft()[1]
        used = {"requests": len(seen), "tokens": self._tokens.get(model, 0)}
        quotas: tuple[tuple[Kind, int | None, int], ...] = (
            ("requests", rpm, 1), ("tokens", tpm, tokens))
        uses = [_use(kind, limit, asked, used[kind], seen, now, window)
                for kind, limit, asked in quotas if limit is not None]
        if all(use.wait_s == 0 for use in uses):
            seen.append((now, tokens))
            self._tokens[model] = used["tokens"] + tokens
            return None
        return _refusal(model, tokens, uses, fmt)


def _use(kind: Kind, per_minute: int, asked: int, used: int, seen: deque[tuple[float, int]],
         now: float, window: float) -> _Use:
    """How `asked` fits a quota whose window holds `used` in `seen` (oldest first)."""
    allowed = max(1, math.floor(per_minute * window / 60 + 1e-9))
    remaining = max(0, allowed - used)
    reset = max(0.0, seen[-1][0] + window - now) if seen else 0.0
    if used + asked <= allowed:
        return _Use(kind, per_minute, remaining, 0.0, reset)
    if asked > allowed:
        return _Use(kind, per_minute, remaining, math.inf, reset)
    if kind == "requests":  # one more fits once the (used - allowed)th oldest ages out
        return _Use(kind, per_minute, 0, max(seen[used - allowed][0] + window - now, 1e-3),
                    reset)
    excess = used + asked - allowed
    for at, tokens in seen:
        excess -= tokens
        if excess <= 0:
            return _Use(kind, per_minute, remaining, max(at + window - now, 1e-3), reset)
    return _Use(kind, per_minute, remaining, reset, reset)  # not reached: used is the sum


def _refusal(model: str, tokens: int, uses: list[_Use], fmt: Fmt) -> Reject:
    from ._protocol import Reject

    deciding = max(uses, key=lambda use: use.wait_s)
    headers: dict[str, str] = {}
    for use in uses:
        headers.update(_headers(use, fmt))
    retry_after = None if math.isinf(deciding.wait_s) else max(1, math.ceil(deciding.wait_s))
    asked = 1 if deciding.kind == "requests" else tokens
    unit = "RPM" if deciding.kind == "requests" else "TPM"
    if fmt == "anthropic":
        message = (f"This request would exceed the rate limit for your organization of "
                   f"{deciding.per_minute} {'requests' if unit == 'RPM' else 'tokens'} per "
                   f"minute for {model} (simulated). You can see the response headers for "
                   "current usage.")
    elif retry_after is None:
        message = (f"Request too large for {model} on tokens per min (TPM): Limit "
                   f"{deciding.per_minute}, Requested {asked} (simulated).")
    else:
        message = (f"Rate limit reached for {model} on {deciding.kind} per min ({unit}): "
                   f"Limit {deciding.per_minute}, Requested {asked}. Please try again in "
                   f"{_duration(deciding.wait_s)} (simulated).")
    return Reject(429, message, code="rate_limit_exceeded", retry_after=retry_after,
                  headers=headers)


def _headers(use: _Use, fmt: Fmt) -> dict[str, str]:
    if fmt == "anthropic":
        at = datetime.now(UTC) + timedelta(seconds=use.reset_s)
        head = f"anthropic-ratelimit-{use.kind}"
        return {f"{head}-limit": str(use.per_minute), f"{head}-remaining": str(use.remaining),
                f"{head}-reset": at.isoformat(timespec="seconds").replace("+00:00", "Z")}
    return {f"x-ratelimit-limit-{use.kind}": str(use.per_minute),
            f"x-ratelimit-remaining-{use.kind}": str(use.remaining),
            f"x-ratelimit-reset-{use.kind}": _duration(use.reset_s)}


def _duration(seconds: float) -> str:
    """OpenAI's way of writing a wait: 120ms, 1.5s, 6m0s."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(round(seconds, 3), 60)
    return f"{int(minutes)}m{rest:g}s" if minutes else f"{rest:g}s"
