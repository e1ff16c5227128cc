"""The fleet file: providers, models with prices, tiers with model chains, budgets,
experiments (each a section of ``schemas.sections``).

Checked when loaded, as dramatiq checks actor options at declaration: an unknown key,
a model without prices, a tier with no models or a reference to nothing stops start-up
with a ``ConfigError`` naming the key (``tiers.simple.models[1]``).
"""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, model_validator

from schemas.errors import ConfigError, UnknownModelError, UnknownTierError
from schemas.sections import (
    AdmissionConfig,
    BatchConfig,
    BeatConfig,
    BreakerConfig,
    BudgetConfig,
    CacheConfig,
    ExperimentConfig,
    LimitConfig,
    ModelConfig,
    MonitoringConfig,
    ProviderConfig,
    RetryConfig,
    Section,
    TierConfig,
)

__all__ = [
    "EMBEDDINGS_TIER",
    "AdmissionConfig",
    "BatchConfig",
    "BeatConfig",
    "BreakerConfig",
    "BudgetConfig",
    "CacheConfig",
    "ExperimentConfig",
    "FleetConfig",
    "LimitConfig",
    "ModelConfig",
    "MonitoringConfig",
    "ProviderConfig",
    "RetryConfig",
    "TierConfig",
    "load_fleet_config",
    "parse_fleet_config",
]

#: The tier that embedding jobs run on; its queue is ``llm.embeddings``.
EMBEDDINGS_TIER = "embeddings"
#: Wire formats that serve embeddings.
_EMBEDDING_FORMATS = ("openai",)
_TIER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


_NO_TIER = TierConfig.model_construct(models=[])


class FleetConfig(Section):
    """The whole fleet file."""

    providers: dict[str, ProviderConfig]
    models: dict[str, ModelConfig]
    tiers: dict[str, TierConfig]
    budgets: list[BudgetConfig] = Field(default_factory=list)
    experiments: list[ExperimentConfig] = Field(default_factory=list)
    limits: list[LimitConfig] = Field(default_factory=list)
    admission: AdmissionConfig = AdmissionConfig()
    retry: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    beat: BeatConfig = BeatConfig()
    cache: CacheConfig = CacheConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    batch: BatchConfig = BatchConfig()
    default_tier: str = "simple"
    default_max_tokens: int = Field(default=1024, ge=1)
    #: Time zone of budget periods (a day starts at midnight there).
    budget_timezone: str = "UTC"
    #: The longest a job may run in a worker (its own timeout may be shorter). Redis
    #: hands an unacknowledged job to another worker after twice this, so a killed
    #: worker's jobs run again within minutes and a slow job never runs twice.
    job_time_limit_s: float = Field(default=300.0, gt=0, le=3600)
    #: How often each worker writes its heartbeat (with the messages it holds) and the
    #: messages of dead workers are looked for; how long after a worker took a message
    #: it may be put back, when no live worker holds it and none of its jobs has a live
    #: lease (``workers.recovery``): a dead worker's jobs run again within a minute.
    sweep_every_s: float = Field(default=10.0, gt=0, le=600)
    sweep_min_age_s: float = Field(default=30.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _check_references(self) -> FleetConfig:
        for name, model in self.models.items():
            if model.provider not in self.providers:
                raise ValueError(f"models.{name}.provider: unknown provider {model.provider!r}")
        for tier_name, tier in self.tiers.items():
            if not _TIER_NAME.match(tier_name):
                raise ValueError(f"tiers.{tier_name}: a tier name is lowercase [a-z0-9_-]")
            for i, model_name in enumerate(tier.models):
                if model_name not in self.models:
                    raise ValueError(f"tiers.{tier_name}.models[{i}]: unknown model {model_name!r}")
        for i, model_name in enumerate(self.tiers.get(EMBEDDINGS_TIER, _NO_TIER).models):
            kind = self.providers[self.models[model_name].provider].kind
            if kind not in _EMBEDDING_FORMATS:
                raise ValueError(f"tiers.{EMBEDDINGS_TIER}.models[{i}]: a {kind!r} provider "
                                 f"serves no embeddings")
        try:
            ZoneInfo(self.budget_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"budget_timezone: unknown time zone {self.budget_timezone!r}") \
                from None
        names = [b.name for b in self.budgets]
        if len(names) != len(set(names)):
            raise ValueError("budgets: two budgets share a name")
        if self.default_tier not in self.tiers:
            raise ValueError(f"default_tier: unknown tier {self.default_tier!r}")
        for i, budget in enumerate(self.budgets):
            if budget.action == "downgrade" and budget.downgrade_to not in self.tiers:
                raise ValueError(f"budgets[{i}].downgrade_to: a downgrade needs a known tier")
        if len({limit.name for limit in self.limits}) != len(self.limits):
            raise ValueError("limits: two limits share a name")
        for i, limit in enumerate(self.limits):
            scope, _, target = limit.scope.partition(":")
            known: dict[str, set[str]] = {"tier": set(self.tiers), "model": set(self.models)}
            if scope in known and target not in known[scope]:
                raise ValueError(f"limits[{i}].scope: unknown {scope} {target!r}")
        if len({e.name for e in self.experiments}) != len(self.experiments):
            raise ValueError("experiments: two experiments share a name")
        for i, experiment in enumerate(self.experiments):
            for j, variant in enumerate(experiment.variants):
                if variant.get("model") is not None and variant["model"] not in self.models:
                    raise ValueError(f"experiments[{i}].variants[{j}].model: unknown model "
                                     f"{variant['model']!r}")
                if variant.get("tier") is not None and variant["tier"] not in self.tiers:
                    raise ValueError(f"experiments[{i}].variants[{j}].tier: unknown tier "
                                     f"{variant['tier']!r}")
        return self

    # -- routing -----------------------------------------------------------

    @property
    def chat_tiers(self) -> list[str]:
        """Tiers that serve completions (every tier but embeddings)."""
        return [t for t in self.tiers if t != EMBEDDINGS_TIER]

    def route(self, tier: str | None, model: str | None, *, embedding: bool = False) -> str:
        """The tier a job runs on: its own, else the first that lists its model, else the
        default. Raises UnknownTierError / UnknownModelError naming the field."""
        if tier is not None:
            if tier not in self.tiers:
                raise UnknownTierError(f"unknown tier {tier!r}; known: {sorted(self.tiers)}",
                                       field="tier")
            if model is not None and model not in self.models:
                raise UnknownModelError(f"unknown model {model!r}", field="model")
            return tier
        if model is not None:
            if model not in self.models:
                raise UnknownModelError(
                    f"unknown model {model!r}; known: {sorted(self.models)}", field="model")
            candidates = [EMBEDDINGS_TIER] if embedding else self.chat_tiers
            for name in candidates:
                if name in self.tiers and model in self.tiers[name].models:
                    return name
        if embedding:
            if EMBEDDINGS_TIER not in self.tiers:
                raise UnknownTierError("the fleet file defines no embeddings tier", field="tier")
            return EMBEDDINGS_TIER
        return self.default_tier

    def chain(self, tier: str, model: str | None = None) -> list[str]:
        """The models to try, in order: the named model first, then the tier's chain."""
        models = list(self.tiers[tier].models)
        if model is not None:
            models = [model, *[m for m in models if m != model]]
        return models

    def wait_s(self, tier: str, deadline: float | None, timeout: float | None) -> float | None:
        """How long from its submission a job of ``tier`` can wait for its answer: its
        own deadline, else its tier's when the tier batches; never past the time its
        caller waits (``timeout``). None: it cannot wait."""
        own = self.tiers[tier]
        wait = deadline if deadline is not None else own.deadline if own.batch else None
        if wait is None:
            return None
        return wait if timeout is None else min(wait, timeout)

    def max_retries(self, tier: str) -> int:
        """Retries per model: the tier's own setting, else the fleet's."""
        own = self.tiers[tier].max_retries
        return self.retry.max_retries if own is None else own


def _error_key(error: ValidationError) -> tuple[str, str]:
    first = error.errors()[0]
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                  for p in first["loc"]).lstrip(".") or "fleet"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    if first["type"] == "missing":
        message = "required key is missing"
    if not first["loc"] and ": " in message:
        # A cross-reference check names its key at the start of its message.
        key, message = message.split(": ", 1)
    return key, message


def parse_fleet_config(data: dict[str, Any], source: str = "fleet file") -> FleetConfig:
    """Validate a parsed fleet file; a ConfigError names the first bad key."""
    try:
        return FleetConfig.model_validate(data)
    except ValidationError as exc:
        key, message = _error_key(exc)
        raise ConfigError(f"{source}: {key}: {message}", key=key) from None


def load_fleet_config(path: str | Path | None = None) -> FleetConfig:
    """Load the fleet file at ``path``, or the one that ships in the package."""
    if path is None:
        text = resources.files("schemas").joinpath("default_fleet.toml").read_text("utf-8")
        source = "built-in default fleet file"
    else:
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read fleet file {path}: {exc.strerror}",
                              key="LLMFLEET_CONFIG") from None
        source = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}", key="fleet") from None
    return parse_fleet_config(data, source)
