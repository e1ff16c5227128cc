"""Runtime knobs of the provider simulator, and the state it keeps.

Tests, the demo and benchmarks change latency and failure injection while
the server runs, so the config is a plain mutable object shared with the app;
`update` validates every field first so a bad change never half-applies.
The app's state (counters and the seeded draws) lives here beside it.
"""

from __future__ import annotations

import copy
import random
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any

from aiohttp import web

from ._batches import BatchStore
from ._quota import QuotaWindows

_RATES = ("error_rate", "rate_limit_rate", "malformed_rate", "stream_failure_rate",
          "batch_item_error_rate")
_FLOATS = ("latency_ms", "jitter_ms", "first_token_ms", "token_ms", "quota_window_s",
           "batch_completion_s", *_RATES)
_INTS = ("retry_after_s", "seed")
_QUOTAS = ("quota_rpm", "quota_tpm")
_INT_MAPS = ("fail_models", "context_limits", *_QUOTAS)


@dataclass(slots=True)
class SimulatorConfig:
    """How the simulated providers behave; see the package docstring."""

    latency_ms: float = 50.0
    jitter_ms: float = 0.0
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after_s: int = 1
    fail_models: dict[str, int] = field(default_factory=dict)
    known_models: list[str] | None = None
    context_limits: dict[str, int] = field(default_factory=dict)
    omit_usage: bool = False
    api_key: str | None = None
    seed: int = 0
    #: Share of JSON answers (structured output, tool-call arguments) made invalid:
    #: broken JSON and JSON that violates the schema, in turn.
    malformed_rate: float = 0.0
    #: Streams: the wait before the first content delta and between deltas (a
    #: stream's answer has no latency_ms sleep; these stand for it).
    first_token_ms: float = 0.0
    token_ms: float = 0.0
    #: Share of streams that fail after some deltas (an error event mid-stream).
    stream_failure_rate: float = 0.0
    #: Provider quotas by wire model name, requests and tokens (prompt + max_tokens)
    #: per minute: a sliding window of quota_window_s admits rpm x window / 60
    #: requests (and as many tokens); past it, 429 with Retry-After (_quota.py).
    quota_rpm: dict[str, int] = field(default_factory=dict)
    quota_tpm: dict[str, int] = field(default_factory=dict)
    quota_window_s: float = 60.0
    #: Batches (OpenAI's Batch API, Anthropic's Message Batches): how long one takes
    #: from creation to its end, its items answered progressively over that time (a
    #: poll midway sees partial counts). Read when a batch is created; a huge value
    #: stalls new batches (they expire after the 24-hour window).
    batch_completion_s: float = 2.0
    #: Share of batch items that end in a per-item error (a server error line).
    batch_item_error_rate: float = 0.0
    #: Share of batches that expire instead of completing (True: all, False: none):
    #: they expire after batch_completion_s with about half their items answered, the
    #: rest `expired`.
    batch_expire: float = 0.0

    def update(self, **changes: Any) -> None:
        """Set the given fields; any unknown name or bad value raises ValueError."""
        names = {f.name for f in fields(self)}
        checked: dict[str, object] = {}
        for name, value in changes.items():
            if name not in names:
                raise ValueError(f"unknown simulator config field: {name!r}")
            checked[name] = _check(name, value)
        for name, value in checked.items():
            setattr(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy of every field."""
        return {f.name: copy.copy(getattr(self, f.name)) for f in fields(self)}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(name: str, value: object) -> object:
    """Validate one field value, returning it in its canonical type."""
    if name in _FLOATS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number, got {value!r}")
        number = float(value)
        if not number >= 0 or (name in _RATES and number > 1) or (
                name == "quota_window_s" and not 0 < number < float("inf")) or (
                name == "batch_completion_s" and number == float("inf")):
            raise ValueError(f"{name} is out of range: {value!r}")
        return number
    if name in _INTS:
        if not _is_int(value):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return value
    if name in _INT_MAPS:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and _is_int(v) for k, v in value.items()
        ):
            raise ValueError(f"{name} must map model names to integers, got {value!r}")
        if name in _QUOTAS and any(v < 1 for v in value.values()):
            raise ValueError(f"{name}: a quota is at least 1 per minute, got {value!r}")
        return dict(value)
    if name == "known_models":
        if value is None:
            return None
        if not isinstance(value, list | tuple) or not all(isinstance(m, str) for m in value):
            raise ValueError(f"known_models must be a list of model names or null, got {value!r}")
        return list(value)
    if name == "batch_expire":
        if isinstance(value, bool):
            return 1.0 if value else 0.0
        if not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ValueError(f"batch_expire must be a boolean or a share from 0 to 1, "
                             f"got {value!r}")
        return float(value)
    if name == "omit_usage":
        if not isinstance(value, bool):
            raise ValueError(f"omit_usage must be a boolean, got {value!r}")
        return value
    if value is not None and not isinstance(value, str):  # api_key
        raise ValueError(f"{name} must be a string or null, got {value!r}")
    return value


class SimulatorStats:
    """Request counters of the provider routes, by path, model and status; the
    requests each model's quotas refused (429), by model; and, apart, the batch
    items answered (succeeded or errored), in all and by model."""

    __slots__ = ("batch_by_model", "batch_requests", "by_model", "by_path", "by_status",
                 "quota_rejected", "requests", "seen_models")

    def __init__(self) -> None:
        self.requests = 0
        self.by_path: Counter[str] = Counter()
        self.by_model: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()
        self.quota_rejected: Counter[str] = Counter()
        self.batch_requests = 0
        self.batch_by_model: Counter[str] = Counter()
        # Survives reset: GET /v1/models lists it when known_models is None.
        self.seen_models: dict[str, None] = {}

    def record(self, path: str, model: str | None, status: int) -> None:
        self.requests += 1
        self.by_path[path] += 1
        self.by_status[str(status)] += 1
        if model is not None:
            self.by_model[model] += 1
            self.seen_models.setdefault(model, None)

    def record_batch(self, model: str | None) -> None:
        self.batch_requests += 1
        if model is not None:
            self.batch_by_model[model] += 1

    def reset(self) -> None:
        self.requests = 0
        self.batch_requests = 0
        self.batch_by_model.clear()
        self.by_path.clear()
        self.by_model.clear()
        self.by_status.clear()
        self.quota_rejected.clear()

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "by_model": dict(self.by_model),
            "by_status": dict(self.by_status),
            "quota_rejected": dict(self.quota_rejected),
            "batch_requests": self.batch_requests,
            "batch_by_model": dict(self.batch_by_model),
        }


class StreamStats:
    """What the simulator sent on streams: a client that hangs up shows as `cancelled`."""

    __slots__ = ("cancelled", "completed", "deltas", "failed", "started", "tokens")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.started = self.completed = self.failed = self.cancelled = 0
        self.deltas = self.tokens = 0

    def snapshot(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in sorted(self.__slots__)}


class SimState:
    """What the handlers share: the live config, the counters, the quotas' windows,
    the batches and files, the seeded draws."""

    __slots__ = (
        "_batch_draws", "_broken_next", "_draws", "_jitter", "_malformed", "_seed",
        "_streams", "batches", "config", "quotas", "stats", "streams",
    )

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.stats = SimulatorStats()
        self.streams = StreamStats()
        self.quotas = QuotaWindows()
        self.batches = BatchStore()  # survives reset_stats: batches are not counters
        self._reseed(config.seed)

    def _reseed(self, seed: int) -> None:
        self._seed = seed
        self._draws = random.Random(seed)
        # Own sequences, so that turning one knob never shifts the other draws.
        self._jitter = random.Random(seed + 1)
        self._malformed = random.Random(seed + 2)
        self._streams = random.Random(seed + 3)
        self._batch_draws = random.Random(seed + 4)
        self._broken_next = True

    def reset_stats(self) -> None:
        """Zero the counters and empty the quotas' windows (a fresh minute)."""
        self.stats.reset()
        self.streams.reset()
        self.quotas.clear()

    def _check_seed(self) -> None:
        if self.config.seed != self._seed:
            self._reseed(self.config.seed)

    def draw(self) -> float:
        """The next failure-injection draw; a new seed restarts the sequence."""
        self._check_seed()
        return self._draws.random()

    def malformed(self) -> str | None:
        """For one JSON answer: None (valid), or "broken" / "violating", in turn."""
        self._check_seed()
        if self._malformed.random() >= self.config.malformed_rate:
            return None
        broken, self._broken_next = self._broken_next, not self._broken_next
        return "broken" if broken else "violating"

    def stream_failure(self, deltas: int) -> int | None:
        """After how many of a stream's `deltas` it fails (at least one), or None."""
        self._check_seed()
        if self._streams.random() >= self.config.stream_failure_rate:
            return None
        return self._streams.randint(1, max(1, deltas - 1))

    def batch_draws(self) -> random.Random:
        """The sequence batches draw from: item order, item errors, expiry."""
        self._check_seed()
        return self._batch_draws

    def delay_s(self) -> float:
        jitter = self.config.jitter_ms
        extra = self._jitter.uniform(0.0, jitter) if jitter else 0.0
        return (self.config.latency_ms + extra) / 1000.0


STATE = web.AppKey("simulator_state", SimState)
