"""Settings read from the environment (the names are a contract: docs/architecture.md).

Read once, into a frozen object, so that nothing deeper reads ``os.environ``. A value
that does not parse is a ``ConfigError`` naming the variable. API keys are not kept
here: providers read them by name when they are built, and they never reach a repr.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from schemas.config import FleetConfig, load_fleet_config, parse_fleet_config
from schemas.errors import ConfigError

__all__ = ["Settings", "load_config", "masked_url", "sentinel_master", "sqlalchemy_url"]


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r}: expected true or false", key=name)


def _number(env: Mapping[str, str], name: str, default: float | None) -> float | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a number", key=name) from None
    if value < 0:
        raise ConfigError(f"{name}={raw!r}: must not be negative", key=name)
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (case aside), the first when unset."""
    raw = env.get(name) or choices[0]
    if raw.lower() not in choices:
        raise ConfigError(f"{name}={raw!r}: expected one of {', '.join(choices)}", key=name)
    return raw.lower()


def _postgres_url(env: Mapping[str, str], name: str) -> str | None:
    """A ``postgresql://`` (or ``postgres://``, with or without a driver) URL, or None."""
    raw = env.get(name) or None
    if raw is not None:
        try:
            sqlalchemy_url(raw)
        except ValueError:
            raise ConfigError(f"{name}={masked_url(raw)!r}: expected a postgresql:// URL",
                              key=name) from None
    return raw


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the environment says, parsed."""

    redis_url: str | None = None
    database_url: str | None = None
    config_path: str | None = None
    data_dir: Path | None = None
    default_llm_model: str | None = None
    fallback_model: str | None = None
    enable_llm_cache: bool = True
    cache_ttl_seconds: float = 3600.0
    cache_max_size: int = 10_000
    enable_cost_tracking: bool = True
    metrics_retention_days: int = 30
    #: AUDIT_RETENTION_DAYS: days the audit log keeps its rows (0 keeps them forever);
    #: beat's purge_expired deletes older ones.
    audit_retention_days: int = 90
    daily_budget_limit: float | None = None
    monthly_budget_limit: float | None = None
    budget_alert_threshold: float = 0.8
    #: ENABLE_MONITORING: false turns monitoring off: operational alerts (whatever
    #: ``[monitoring] enabled`` says), the metrics' roll-ups, and Prometheus' counters
    #: kept as ledger rows land (``/metrics`` then reads Redis only). Budgets, the
    #: ledger and its retention are not monitoring: they carry on.
    enable_monitoring: bool = True
    #: Base URL of the provider simulator; when set, every provider is pointed at it.
    simulator_url: str | None = None
    #: POSTGRES_VECTOR_CONNECTION: the Postgres of the vector store (pgvector), when it
    #: is not the fleet's own (DATABASE_URL, or the embedded one): see ``vector_url``.
    vector_database_url: str | None = field(default=None, repr=False)
    #: LLMFLEET_LOG_FORMAT: ``text`` (the default) or ``json`` (one JSON object a line,
    #: with the job's ids: ``workers.observability.logs``).
    log_format: str = "text"
    #: Where spans go (OpenTelemetry's OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else
    #: OTEL_EXPORTER_OTLP_ENDPOINT); None, or OTEL_SDK_DISABLED=true: no tracing at all.
    otlp_endpoint: str | None = None
    #: LLMFLEET_SENTINEL_MASTER: the name Redis Sentinel monitors the fleet's master
    #: under, when REDIS_URL is a ``sentinel://`` URL (docs/sentinel.md).
    sentinel_master: str = "mymaster"

    @property
    def resolved_data_dir(self) -> Path:
        """Where the embedded servers keep their data: LLMFLEET_DATA_DIR, else
        ``~/.local/share/llmfleet``."""
        return self.data_dir or Path.home() / ".local" / "share" / "llmfleet"

    def vector_url(self, fleet_database_url: str | None) -> str | None:
        """The vector store's Postgres: POSTGRES_VECTOR_CONNECTION when set, else the
        fleet's own database (``fleet_database_url``: DATABASE_URL or the embedded
        one), where the vector tables sit beside the ledger."""
        return self.vector_database_url or fleet_database_url

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        data_dir = env.get("LLMFLEET_DATA_DIR")
        threshold = _number(env, "BUDGET_ALERT_THRESHOLD", 0.8)
        if threshold is not None and not 0 < threshold <= 1:
            raise ConfigError("BUDGET_ALERT_THRESHOLD must be in (0, 1]",
                              key="BUDGET_ALERT_THRESHOLD")
        return cls(
            redis_url=env.get("REDIS_URL") or None,
            database_url=env.get("DATABASE_URL") or None,
            config_path=env.get("LLMFLEET_CONFIG") or None,
            data_dir=Path(data_dir) if data_dir else None,
            default_llm_model=env.get("DEFAULT_LLM_MODEL") or None,
            fallback_model=env.get("FALLBACK_MODEL") or None,
            enable_llm_cache=_flag(env, "ENABLE_LLM_CACHE", True),
            cache_ttl_seconds=_number(env, "CACHE_TTL_SECONDS", 3600.0) or 0.0,
            cache_max_size=int(_number(env, "CACHE_MAX_SIZE", 10_000) or 0),
            enable_cost_tracking=_flag(env, "ENABLE_COST_TRACKING", True),
            metrics_retention_days=int(_number(env, "METRICS_RETENTION_DAYS", 30) or 0),
            audit_retention_days=int(_number(env, "AUDIT_RETENTION_DAYS", 90) or 0),
            daily_budget_limit=_number(env, "DAILY_BUDGET_LIMIT", None),
            monthly_budget_limit=_number(env, "MONTHLY_BUDGET_LIMIT", None),
            budget_alert_threshold=threshold or 0.8,
            enable_monitoring=_flag(env, "ENABLE_MONITORING", True),
            simulator_url=env.get("LLMFLEET_SIMULATOR_URL") or None,
            vector_database_url=_postgres_url(env, "POSTGRES_VECTOR_CONNECTION"),
            log_format=_choice(env, "LLMFLEET_LOG_FORMAT", ("text", "json")),
            otlp_endpoint=None if _flag(env, "OTEL_SDK_DISABLED", False) else (
                env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None),
            sentinel_master=sentinel_master(env),
        )


def sentinel_master(env: Mapping[str, str] | None = None) -> str:
    """LLMFLEET_SENTINEL_MASTER (default ``mymaster``): one word, as sentinel.conf's
    ``sentinel monitor <name> ...`` has it."""
    env = os.environ if env is None else env
    raw = env.get("LLMFLEET_SENTINEL_MASTER") or "mymaster"
    if not raw.isprintable() or any(c.isspace() for c in raw):
        raise ConfigError(f"LLMFLEET_SENTINEL_MASTER={raw!r}: expected one word",
                          key="LLMFLEET_SENTINEL_MASTER")
    return raw


def _apply_env_overrides(fleet: FleetConfig, settings: Settings) -> FleetConfig:
    """DEFAULT_LLM_MODEL heads the default tier's chain; FALLBACK_MODEL ends every chat
    tier's chain (both must name models of the fleet file). DAILY_BUDGET_LIMIT and
    MONTHLY_BUDGET_LIMIT add global budgets ``daily_limit`` and ``monthly_limit`` unless
    the fleet file defines budgets of those names."""
    data = fleet.model_dump()
    for var, model in (("DEFAULT_LLM_MODEL", settings.default_llm_model),
                       ("FALLBACK_MODEL", settings.fallback_model)):
        if model is not None and model not in fleet.models:
            raise ConfigError(f"{var}={model!r} is not a model of the fleet file", key=var)
    if settings.default_llm_model:
        tier = data["tiers"][fleet.default_tier]
        tier["models"] = [settings.default_llm_model,
                          *[m for m in tier["models"] if m != settings.default_llm_model]]
    if settings.fallback_model:
        for name in fleet.chat_tiers:
            chain = data["tiers"][name]["models"]
            if settings.fallback_model not in chain:
                chain.append(settings.fallback_model)
    for name, limit, period in (("daily_limit", settings.daily_budget_limit, "daily"),
                                ("monthly_limit", settings.monthly_budget_limit, "monthly")):
        if limit and not any(b["name"] == name for b in data["budgets"]):
            data["budgets"].append({"name": name, "limit_usd": limit, "period": period,
                                    "scope": "global",
                                    "alert_threshold": settings.budget_alert_threshold})
    if settings.simulator_url:
        base = settings.simulator_url.rstrip("/")
        for provider in data["providers"].values():
            provider["base_url"] = base + "/v1" if provider["kind"] == "openai" else base
    return parse_fleet_config(data, "fleet file with environment overrides")


def masked_url(url: str) -> str:
    """``url`` fit for a message or a log: its password, if any, replaced by ***."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = f"{parts.username}:" if parts.username else ":"
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return urlunsplit(parts._replace(netloc=f"{user}***@{host}{port}"))
    except ValueError:
        return "<unreadable URL>"


def sqlalchemy_url(url: str) -> str:
    """A plain ``postgresql://`` URL rewritten to SQLAlchemy's psycopg 3 dialect."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        raise ValueError(f"not a Postgres URL: {url!r}")
    if "+" in scheme:
        return url  # the caller already chose a driver
    return f"postgresql+psycopg://{rest}"


def load_config(settings: Settings | None = None) -> tuple[Settings, FleetConfig]:
    """The settings from the environment and the fleet file they name, overrides applied."""
    settings = Settings.from_env() if settings is None else settings
    fleet = load_fleet_config(settings.config_path)
    return settings, _apply_env_overrides(fleet, settings)

