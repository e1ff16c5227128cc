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

_FLOATS = ("latency_ms", "jitter_ms", "error_rate", "rate_limit_rate")
_RATES = ("error_rate", "rate_limit_rate")
_INTS = ("retry_after_s", "seed")
_INT_MAPS = ("fail_models", "context_limits")


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
        if not number >= 0 or (name in _RATES and number > 1):
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
        return dict(value)
    if name == "known_models":
        if value is None:
            return None
        if not isinstance(value, list | tuple) or not all(isinstance(m, str) for m in value):
            raise ValueError(f"known_models must be a list of model names or null, got {value!r}")
        return list(value)
    if name == "omit_usage":
        if not isinstance(value, bool):
            raise ValueError(f"omit_usage must be a boolean, got {value!r}")
        return value
    if value is not None and not isinstance(value, str):  # api_key
        raise ValueError(f"{name} must be a string or null, got {value!r}")
    return value


class SimulatorStats:
    """Request counters of the provider routes, by path, model and status."""

    __slots__ = ("by_model", "by_path", "by_status", "requests", "seen_models")

    def __init__(self) -> None:
        self.requests = 0
        self.by_path: Counter[str] = Counter()
        self.by_model: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()
        # Survives reset: GET /v1/models lists it when known_models is None.
        self.seen_models: dict[str, None] = {}

    def record(self, path: str, model: str | None, status: int) -> None:
        self.requests += 1
        self.by_path[path] += 1
        self.by_status[str(status)] += 1
        if model is not None:
            self.by_model[model] += 1
            self.seen_models.setdefault(model, None)

    def reset(self) -> None:
        self.requests = 0
        self.by_path.clear()
        self.by_model.clear()
        self.by_status.clear()

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "by_model": dict(self.by_model),
            "by_status": dict(self.by_status),
        }


class SimState:
    """What the handlers share: the live config, the counters, the seeded draws."""

    __slots__ = ("_draws", "_jitter", "_seed", "config", "stats")

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.stats = SimulatorStats()
        self._reseed(config.seed)

    def _reseed(self, seed: int) -> None:
        self._seed = seed
        self._draws = random.Random(seed)
        self._jitter = random.Random(seed + 1)  # jitter never shifts the failure draws

    def draw(self) -> float:
        """The next failure-injection draw; a new seed restarts the sequence."""
        if self.config.seed != self._seed:
            self._reseed(self.config.seed)
        return self._draws.random()

    def delay_s(self) -> float:
        jitter = self.config.jitter_ms
        extra = self._jitter.uniform(0.0, jitter) if jitter else 0.0
        return (self.config.latency_ms + extra) / 1000.0


STATE = web.AppKey("simulator_state", SimState)
