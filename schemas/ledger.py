"""One ledger row per job: the shape that travels from workers (and the client's cache
short-circuit) through the Redis spool into Postgres' ``job_ledger`` table."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.errors import FleetError
from schemas.jobs import CompletionJob, EmbeddingJob, JobStatus

__all__ = ["LedgerRow", "status_for_error"]

#: The widths of ``job_ledger``'s string columns (``schemas.tables``; a test holds the
#: two alike, and agents need not load SQLAlchemy for them): a row is cut to fit them.
COLUMN_WIDTHS = {"job_id": 64, "kind": 16, "agent": 200, "user_id": 200, "tier": 40,
                 "requested_model": 200, "model": 200, "provider": 200, "status": 16,
                 "error": 100}
_MESSAGE_CHARS = 500
_SURROGATE = re.compile("[\ud800-\udfff]")


def _storable(value: Any) -> Any:
    """``value`` with every NUL character gone and every lone surrogate replaced
    (Postgres text and JSONB refuse both), in strings, keys and nested values."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value.replace("\x00", ""))
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


_REJECTIONS = ("JobValidationError", "UnknownTierError", "UnknownModelError",
               "RequestTooLargeError", "BudgetExceededError", "RateLimitedError")


class LedgerRow(BaseModel):
    """The columns of ``job_ledger`` (docs/architecture.md), as JSON-able values."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    kind: str
    agent: str
    user_id: str | None = None
    tier: str | None = None
    requested_model: str | None = None
    model: str | None = None
    provider: str | None = None
    status: JobStatus
    cache_hit: bool = False
    attempts: int = 0
    fallback_used: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    usage_estimated: bool = False
    cost_usd: float = 0.0
    #: What a cache hit would have cost at the answering model's prices; for a job
    #: answered through a provider's batch API, its live price less its batch price.
    cost_saved_usd: float = 0.0
    #: Answered through a provider's batch API, at batch prices.
    batch: bool = False
    latency_ms: float = 0.0
    #: A streamed job's time to its first chunk, from its submission.
    ttft_ms: float | None = None
    #: The error's class name, for failed and rejected jobs.
    error: str | None = None
    error_message: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    #: An automatic evaluator's outcome for an experiment job (``schemas.evaluators``),
    #: written to ``experiment_outcomes`` with the row; not a ``job_ledger`` column.
    outcome: dict[str, Any] | None = None
    created_at: dt.datetime
    finished_at: dt.datetime

    @field_validator("*", mode="before")
    @classmethod
    def _fits_postgres(cls, value: Any, info: Any) -> Any:
        """Whoever builds a row (a worker, the client, a message that skipped the
        client), it is storable: no NUL anywhere, strings cut to their column's width
        (an error message to 500 characters)."""
        value = _storable(value)
        width = COLUMN_WIDTHS.get(info.field_name) or (
            _MESSAGE_CHARS if info.field_name == "error_message" else None)
        if width is not None and isinstance(value, str):
            value = value[:width]
        return value

    @classmethod
    def for_job(cls, job: CompletionJob | EmbeddingJob, **fields: Any) -> LedgerRow:
        """A row with the job's own columns filled in."""
        now = dt.datetime.now(dt.UTC)
        base: dict[str, Any] = {
            "job_id": job.job_id, "kind": job.kind, "agent": job.agent, "user_id": job.user,
            "tier": job.tier, "requested_model": job.model, "metadata": dict(job.metadata),
            "created_at": dt.datetime.fromtimestamp(job.submitted_at, dt.UTC),
            "finished_at": now,
            "latency_ms": round(max(0.0, now.timestamp() - job.submitted_at) * 1000, 3),
        }
        return cls(**{**base, **fields})


def status_for_error(error: FleetError) -> JobStatus:
    """Refused before any provider call: rejected; cancelled by an agent: cancelled;
    otherwise failed."""
    names = {klass.__name__ for klass in type(error).__mro__}
    if "JobCancelledError" in names:
        return JobStatus.CANCELLED
    return JobStatus.REJECTED if names & set(_REJECTIONS) else JobStatus.FAILED
