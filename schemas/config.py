"""The fleet file: providers, models with prices, tiers with model chains, budgets,
experiments.

Checked when loaded, as dramatiq checks actor options at declaration: an unknown key,
a model without prices, a tier with no models or a reference to nothing stops start-up
with a ``ConfigError`` naming the key (``tiers.simple.models[1]``).
"""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.errors import ConfigError, ExperimentError, UnknownModelError, UnknownTierError
from schemas.experiments import check_definition

__all__ = [
    "EMBEDDINGS_TIER",
    "BeatConfig",
    "BreakerConfig",
    "BudgetConfig",
    "CacheConfig",
    "ExperimentConfig",
    "FleetConfig",
    "ModelConfig",
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


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderConfig(_Section):
    """One provider endpoint and how to reach it."""

    kind: Literal["openai", "anthropic"]
    base_url: str = Field(pattern=r"^https?://")
    #: Name of the environment variable holding the key (never the key itself).
    api_key_env: str | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=120.0, gt=0)
    #: Most texts one embeddings request may carry.
    max_batch_inputs: int = Field(default=2048, ge=1)


class ModelConfig(_Section):
    """One model: who serves it and what its tokens cost (USD per million)."""

    provider: str
    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cached_input_per_mtok: float | None = Field(default=None, ge=0)
    context_window: int = Field(gt=0)
    #: The name sent to the provider, when it differs from the fleet's name.
    wire_name: str | None = None
    #: Output dimensions, for embedding models.
    dimensions: int | None = Field(default=None, gt=0)


class TierConfig(_Section):
    """A tier: its model chain (primary first) and per-tier overrides."""

    models: list[str] = Field(min_length=1)
    #: Retries per model for this tier; None inherits ``[retry].max_retries``.
    max_retries: int | None = Field(default=None, ge=0, le=10)
    default_max_tokens: int | None = Field(default=None, ge=1)


class RetryConfig(_Section):
    """Retries of one model before the chain moves on (full-jitter backoff)."""

    max_retries: int = Field(default=2, ge=0, le=10)
    backoff_base_s: float = Field(default=0.25, ge=0)
    backoff_max_s: float = Field(default=8.0, ge=0)
    #: A Retry-After longer than this is not waited for: the chain moves on.
    retry_after_max_s: float = Field(default=20.0, ge=0)


class BreakerConfig(_Section):
    """When a model route keeps failing, every worker skips it for a cool-down."""

    failure_threshold: int = Field(default=8, ge=1)
    window_s: float = Field(default=30.0, gt=0)
    cooldown_s: float = Field(default=30.0, gt=0)


class BeatConfig(_Section):
    """Seconds between runs of each periodic task."""

    heartbeat_s: float = Field(default=30.0, gt=0)
    enforce_budgets_s: float = Field(default=60.0, gt=0)
    rollup_metrics_s: float = Field(default=300.0, gt=0)
    purge_expired_s: float = Field(default=3600.0, gt=0)


class BudgetConfig(_Section):
    """A spending limit over a period and a scope."""

    name: str
    limit_usd: float = Field(gt=0)
    period: Literal["daily", "weekly", "monthly"] = "daily"
    scope: str = Field(default="global", pattern=r"^(global|(agent|user|tier|model):.+)$")
    alert_threshold: float = Field(default=0.8, gt=0, le=1)
    action: Literal["reject", "downgrade"] = "reject"
    downgrade_to: str | None = None


class CacheConfig(_Section):
    """The response cache (``[cache]``); ENABLE_LLM_CACHE, CACHE_TTL_SECONDS and
    CACHE_MAX_SIZE in the environment turn it on and size it."""

    #: Jobs sampled hotter than this are not served from the cache unless they ask
    #: (``cache="use"``): their callers want a fresh draw, not a repeat.
    max_temperature: float = Field(default=0.5, ge=0, le=2)
    #: The longest a job waits for an identical job in flight before calling on its own.
    coalesce_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    #: Tiers whose misses are also looked up by meaning (embeddings), not only exactly.
    semantic_tiers: list[str] = Field(default_factory=list)
    #: Cosine similarity a semantic match needs; high, because a near miss (another
    #: number, a negation) served as a hit is a wrong answer.
    semantic_threshold: float = Field(default=0.95, gt=0, le=1)
    #: The embeddings model of the semantic cache; None: the embeddings tier's first.
    semantic_model: str | None = None


class ExperimentConfig(_Section):
    """An A/B experiment declared in the fleet file (``[[experiments]]``); the fleet
    writes it to Postgres the first time it is used, with ``status``. A definition never
    changes there afterwards (its outcomes were measured against it): to change one,
    declare a new experiment."""

    name: str = Field(min_length=1, max_length=200)
    unit: str = "user"
    primary_metric: str = "success_rate"
    variants: list[dict[str, Any]]
    alpha: float = 0.05
    evaluator: dict[str, Any] | None = None
    status: Literal["draft", "running"] = "running"

    @model_validator(mode="before")
    @classmethod
    def _check(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("variants"), list):
            return data  # pydantic names what is missing or of the wrong type
        try:
            variants, evaluator = check_definition(
                str(data.get("name", "")), data.get("unit", "user"),
                data.get("primary_metric", "success_rate"), data["variants"],
                data.get("alpha", 0.05), data.get("evaluator"))
        except ExperimentError as exc:
            raise ValueError(exc.message) from None
        return {**data, "variants": variants, "evaluator": evaluator}


_NO_TIER = TierConfig.model_construct(models=[])


class FleetConfig(_Section):
    """The whole fleet file."""

    providers: dict[str, ProviderConfig]
    models: dict[str, ModelConfig]
    tiers: dict[str, TierConfig]
    budgets: list[BudgetConfig] = Field(default_factory=list)
    experiments: list[ExperimentConfig] = Field(default_factory=list)
    retry: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    beat: BeatConfig = BeatConfig()
    cache: CacheConfig = CacheConfig()
    default_tier: str = "simple"
    default_max_tokens: int = Field(default=1024, ge=1)
    #: Time zone of budget periods (a day starts at midnight there).
    budget_timezone: str = "UTC"
    #: The longest a job may run in a worker (its own timeout may be shorter). Redis
    #: hands an unacknowledged job to another worker after twice this, so a killed
    #: worker's jobs run again within minutes and a slow job never runs twice.
    job_time_limit_s: float = Field(default=300.0, gt=0, le=3600)

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
