"""The sections of the fleet file, one class each: providers, models with prices, tiers
with model chains, retries, the breaker, beat's intervals, budgets, limits and
admission, the cache, experiments. ``schemas.config.FleetConfig`` puts them together and
checks what refers to what; each section checks its own keys (an unknown one is
refused)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.durations import parse_duration
from schemas.errors import ExperimentError
from schemas.experiments import check_definition

__all__ = [
    "AdmissionConfig",
    "BatchConfig",
    "BeatConfig",
    "BreakerConfig",
    "BudgetConfig",
    "CacheConfig",
    "ExperimentConfig",
    "LimitConfig",
    "ModelConfig",
    "MonitoringConfig",
    "ProviderConfig",
    "RetryConfig",
    "Section",
    "TierConfig",
]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderConfig(Section):
    """One provider endpoint and how to reach it."""

    kind: Literal["openai", "anthropic"]
    base_url: str = Field(pattern=r"^https?://")
    #: Name of the environment variable holding the key (never the key itself).
    api_key_env: str | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=120.0, gt=0)
    #: Most texts one embeddings request may carry.
    max_batch_inputs: int = Field(default=2048, ge=1)
    #: The provider's own quota over all its models (requests, tokens per minute): the
    #: fleet never sends past it, however many workers it has.
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    #: Does the endpoint serve its wire format's batch API (OpenAI's Files and Batch,
    #: Anthropic's Message Batches)? Off for servers that speak only the live calls
    #: (OpenRouter, vLLM): their jobs never wait for a batch.
    batch_api: bool = True


def _seconds(value: Any) -> Any:
    """A number of seconds, or a duration as people write it ("90m", "24h")."""
    if isinstance(value, str):
        try:
            return parse_duration(value).total_seconds()
        except ValueError as exc:
            raise ValueError(str(exc)) from None
    return value


class ModelConfig(Section):
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
    #: The provider's quota for this model (requests, tokens per minute).
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    #: Prices through the provider's batch API (USD per million); None: the live
    #: price times ``[batch] discount``.
    batch_input_per_mtok: float | None = Field(default=None, ge=0)
    batch_output_per_mtok: float | None = Field(default=None, ge=0)


class TierConfig(Section):
    """A tier: its model chain (primary first) and per-tier overrides."""

    models: list[str] = Field(min_length=1)
    #: Retries per model for this tier; None inherits ``[retry].max_retries``.
    max_retries: int | None = Field(default=None, ge=0, le=10)
    default_max_tokens: int | None = Field(default=None, ge=1)
    #: Jobs of this tier can wait (``deadline``, below, unless a job says its own): they
    #: go through the providers' batch APIs at batch prices.
    batch: bool = False
    #: The deadline of this tier's jobs that name none (seconds or "24h"), when
    #: ``batch`` is on.
    deadline: float = Field(default=24 * 3600.0, gt=0, le=7 * 24 * 3600.0)

    _deadline_seconds = field_validator("deadline", mode="before")(_seconds)


class BatchConfig(Section):
    """Jobs that can wait (``[batch]``): gathered per model and sent through the
    providers' batch APIs by one batcher at a time (beat's ``batch-tick``)."""

    enabled: bool = True
    #: A job waits for a batch only if its deadline is at least this far from its
    #: submission (seconds or "1h"); shorter ones run live.
    min_deadline_s: float = Field(default=3600.0, gt=0)
    #: A job its batch has not answered this long before its deadline runs live.
    margin_s: float = Field(default=1800.0, ge=0)
    #: Waiting jobs of one model are sent once the oldest has waited this long ...
    gather_s: float = Field(default=60.0, ge=0)
    #: ... or once this many wait (and never more in one batch).
    max_items: int = Field(default=10_000, ge=1, le=50_000)
    #: Seconds between the batcher's rounds (gather, submit, poll, finish).
    poll_s: float = Field(default=30.0, gt=0)
    #: Batch price as a share of the live price, for models with no batch prices.
    discount: float = Field(default=0.5, ge=0, le=1)

    _durations = field_validator("min_deadline_s", "margin_s", "gather_s", "poll_s",
                               mode="before")(_seconds)

    @model_validator(mode="after")
    def _margin_fits(self) -> BatchConfig:
        if self.margin_s >= self.min_deadline_s:
            raise ValueError("margin_s: must be shorter than min_deadline_s, or no job "
                             "would wait")
        return self


class RetryConfig(Section):
    """Retries of one model before the chain moves on (full-jitter backoff)."""

    max_retries: int = Field(default=2, ge=0, le=10)
    backoff_base_s: float = Field(default=0.25, ge=0)
    backoff_max_s: float = Field(default=8.0, ge=0)
    #: A Retry-After longer than this is not waited for: the chain moves on.
    retry_after_max_s: float = Field(default=20.0, ge=0)
    #: An answer that is not the JSON the job asked for (or calls a tool it did not
    #: offer) is asked for again this many times on the same model, then the chain
    #: moves on. Every call is billed to the job.
    invalid_output_retries: int = Field(default=1, ge=0, le=5)


class BreakerConfig(Section):
    """When a model route keeps failing, every worker skips it for a cool-down."""

    failure_threshold: int = Field(default=8, ge=1)
    window_s: float = Field(default=30.0, gt=0)
    cooldown_s: float = Field(default=30.0, gt=0)


class BeatConfig(Section):
    """Seconds between runs of each periodic task."""

    heartbeat_s: float = Field(default=30.0, gt=0)
    enforce_budgets_s: float = Field(default=60.0, gt=0)
    rollup_metrics_s: float = Field(default=300.0, gt=0)
    purge_expired_s: float = Field(default=3600.0, gt=0)
    #: Beats may run on several hosts: one ticks, holding a lock in Redis that it
    #: renews; the others wait for it. A standby takes over at most this long after
    #: the active beat died.
    lock_timeout_s: float = Field(default=30.0, ge=3, le=3600)


class MonitoringConfig(Section):
    """Operational alerts (``[monitoring]``): beat judges each tier, model and agent
    over the last ``window_s`` of the ledger against these thresholds (None turns one
    off). An alert fires once when its figure goes over its threshold and resolves once
    when the figure falls under ``hysteresis`` times it; in between it stays as it was.
    ENABLE_MONITORING=false in the environment turns it off as ``enabled = false`` does."""

    enabled: bool = True
    #: The sliding window judged, in seconds, ending at the evaluation.
    window_s: float = Field(default=300.0, gt=0, le=86_400)
    #: A tier, model or agent with fewer finished jobs in the window is not judged: its
    #: alerts neither fire nor resolve until it has this many.
    min_jobs: int = Field(default=20, ge=1)
    #: Failed jobs over finished (succeeded or failed) jobs.
    error_rate: float | None = Field(default=0.02, gt=0, le=1)
    #: Mean submit-to-result latency of finished jobs, milliseconds.
    avg_latency_ms: float | None = Field(default=8000.0, gt=0)
    #: Their 95th percentile; off unless set.
    p95_latency_ms: float | None = Field(default=None, gt=0)
    #: Spend over finished jobs, USD.
    cost_per_request: float | None = Field(default=0.10, gt=0)
    #: A firing alert resolves when its figure is back under this share of its
    #: threshold (0.8: an error-rate alert at 2% resolves under 1.6%), so a figure
    #: hovering at the threshold does not fire again at every beat.
    hysteresis: float = Field(default=0.8, gt=0, le=1)
    #: Seconds between evaluations (beat's ``evaluate-alerts``).
    interval_s: float = Field(default=60.0, gt=0)


class BudgetConfig(Section):
    """A spending limit over a period and a scope."""

    name: str
    limit_usd: float = Field(gt=0)
    period: Literal["daily", "weekly", "monthly"] = "daily"
    scope: str = Field(default="global", pattern=r"^(global|(agent|user|tier|model):.+)$")
    alert_threshold: float = Field(default=0.8, gt=0, le=1)
    action: Literal["reject", "downgrade"] = "reject"
    downgrade_to: str | None = None


class LimitConfig(Section):
    """A rate limit (``[[limits]]``): requests and tokens per minute and jobs in flight,
    over a scope, fleet-wide. Tokens are a job's prompt plus its ``max_tokens``,
    reserved at submit and settled to what it used. Over the limit, ``reject`` refuses
    the job (RateLimitedError, HTTP 429) and ``queue`` holds it in Redis until it fits
    or its timeout passes."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    scope: str = Field(default="global",
                       pattern=r"^(global|(agent|user|key|tier|model):.+)$")
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    concurrency: int | None = Field(default=None, ge=1)
    mode: Literal["reject", "queue"] = "reject"

    @model_validator(mode="after")
    def _something(self) -> LimitConfig:
        if self.rpm is None and self.tpm is None and self.concurrency is None:
            raise ValueError("a limit needs rpm, tpm or concurrency")
        return self


class AdmissionConfig(Section):
    """How jobs are admitted (``[admission]``): provider quotas and priorities."""

    #: Provider quotas are spread over the minute, one request after another (0), or
    #: with at most this many seconds' worth at once.
    quota_burst_s: float = Field(default=0.0, ge=0, le=60)
    #: The share of a provider's quota the fleet leaves unused, for the jitter between
    #: a turn and the request reaching the provider.
    quota_headroom: float = Field(default=0.02, ge=0, le=0.5)
    #: The share of fetches a worker makes from the low-priority queues first, so low
    #: jobs move even while high ones keep every slot busy.
    low_share: float = Field(default=0.1, ge=0, le=0.5)
    #: A low or normal job reserves its turn at most this far ahead; beyond it, it waits
    #: unreserved and looks again, so later high jobs are not queued behind it.
    reserve_ahead_s: float = Field(default=10.0, gt=0, le=600)


class CacheConfig(Section):
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


class ExperimentConfig(Section):
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
