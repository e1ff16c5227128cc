"""The Postgres tables, as SQLAlchemy Core metadata. Declarations only: the migrations
in ``workers/migrations`` create them, and ``workers.store.engines`` talks to them."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

__all__ = ["api_batch_jobs", "api_batches", "api_files", "audit_log", "budget_alerts",
           "experiment_outcomes", "experiments", "fleet_keys",
           "job_ledger", "metadata", "metric_counters", "metric_latency", "metric_ttft",
           "metrics_rollup", "operational_alerts", "prompt_templates", "provider_batch_jobs",
           "provider_batches", "rollup_watermark"]

metadata = MetaData()

#: USD amounts: exact decimals, nine places (a nano-dollar).
Money = Numeric(20, 9)

job_ledger = Table(
    "job_ledger", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("job_id", String(64), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("agent", String(200), nullable=False),
    Column("user_id", String(200)),
    Column("tier", String(40)),
    Column("requested_model", String(200)),
    Column("model", String(200)),
    Column("provider", String(200)),
    Column("status", String(16), nullable=False),
    Column("cache_hit", Boolean, nullable=False, default=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("fallback_used", Boolean, nullable=False, default=False),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("cached_tokens", Integer, nullable=False, default=0),
    Column("usage_estimated", Boolean, nullable=False, default=False),
    Column("cost_usd", Money, nullable=False, default=0),
    Column("cost_saved_usd", Money, nullable=False, default=0),
    Column("latency_ms", Float, nullable=False, default=0),
    #: A streamed job's time to its first chunk; NULL for the others.
    Column("ttft_ms", Float),
    #: Answered through a provider's batch API (its cost_saved_usd: live less batch).
    Column("batch", Boolean, nullable=False, server_default="false"),
    Column("error", String(100)),
    Column("error_message", Text),
    Column("metadata", JSONB, nullable=False, default=dict),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=False),
    Index("ix_job_ledger_created_at", "created_at"),
    Index("ix_job_ledger_agent_created", "agent", "created_at"),
    Index("ix_job_ledger_user_created", "user_id", "created_at"),
    Index("ix_job_ledger_model_created", "model", "created_at"),
    Index("ix_job_ledger_tier_created", "tier", "created_at"),
)

#: Every budget alert sent, at most one per budget, period and level.
budget_alerts = Table(
    "budget_alerts", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("budget", String(200), nullable=False),
    Column("period_start", DateTime(timezone=True), nullable=False),
    Column("level", String(16), nullable=False),  # "threshold" | "exceeded"
    Column("spent_usd", Money, nullable=False),
    Column("limit_usd", Money, nullable=False),
    Column("message", Text, nullable=False),
    #: Per channel (log, webhook, email): "sent", "failed: ...", or "off".
    Column("deliveries", JSONB, nullable=False, default=dict),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("budget", "period_start", "level", name="uq_budget_alerts_once"),
)

#: Operational alerts (``workers.accounting.monitoring``): one row per firing, from the
#: beat that fired it to the one that resolved it. At most one row per kind, scope and
#: target is firing (``resolved_at`` NULL): the partial unique index below is how any
#: number of beats agree on firing once, and the row lock of the update on resolving once.
operational_alerts = Table(
    "operational_alerts", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    #: The figure: "error_rate" | "avg_latency_ms" | "p95_latency_ms" | "cost_per_request".
    Column("kind", String(32), nullable=False),
    Column("scope", String(16), nullable=False),  # "tier" | "model" | "agent"
    Column("target", String(200), nullable=False),
    Column("threshold", Float, nullable=False),
    #: Under this the alert resolves (the threshold times ``[monitoring] hysteresis``).
    Column("resolve_below", Float, nullable=False),
    Column("value", Float, nullable=False),
    Column("jobs", Integer, nullable=False),
    Column("window_s", Float, nullable=False),
    Column("message", Text, nullable=False),
    #: Per channel (log, webhook, email): "sent", "failed: ...", or "off".
    Column("deliveries", JSONB, nullable=False, default=dict),
    Column("fired_at", DateTime(timezone=True), nullable=False),
    Column("resolved_at", DateTime(timezone=True)),
    Column("resolved_value", Float),
    Column("resolved_jobs", Integer),
    Column("resolve_message", Text),
    Column("resolve_deliveries", JSONB),
    Index("ix_operational_alerts_fired_at", "fired_at"),
)
Index("uq_operational_alerts_firing", operational_alerts.c.kind, operational_alerts.c.scope,
      operational_alerts.c.target, unique=True,
      postgresql_where=operational_alerts.c.resolved_at.is_(None))

#: Hourly and daily figures per model, agent and tier, kept past the ledger's retention.
metrics_rollup = Table(
    "metrics_rollup", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("granularity", String(8), nullable=False),  # "hour" | "day"
    Column("bucket_start", DateTime(timezone=True), nullable=False),
    Column("model", String(200), nullable=False),
    Column("agent", String(200), nullable=False),
    Column("tier", String(40), nullable=False),
    Column("jobs", Integer, nullable=False),
    Column("errors", Integer, nullable=False),
    Column("cache_hits", Integer, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("cost_usd", Money, nullable=False),
    Column("cost_saved_usd", Money, nullable=False),
    Column("latency_p50_ms", Float),
    Column("latency_p95_ms", Float),
    Column("latency_p99_ms", Float),
    UniqueConstraint("granularity", "bucket_start", "model", "agent", "tier",
                     name="uq_metrics_rollup_bucket"),
    Index("ix_metrics_rollup_bucket", "granularity", "bucket_start"),
)

#: The highest ``job_ledger.id`` the roll-ups have seen: rows above it arrived since the
#: last roll-up, whatever their ``created_at`` (a Postgres outage delivers old rows
#: late), so their buckets are recomputed too.
rollup_watermark = Table(
    "rollup_watermark", metadata,
    Column("name", String(40), primary_key=True),
    Column("ledger_id", BigInteger, nullable=False),
)

#: Prometheus' counters, fleet-wide totals since the table was made: the flusher adds
#: each batch's newly inserted ledger rows in the insert's transaction, and nothing ever
#: subtracts (purging the ledger leaves them). NULL model or tier is "".
metric_counters = Table(
    "metric_counters", metadata,
    Column("agent", String(200), primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("tier", String(40), primary_key=True),
    Column("status", String(16), primary_key=True),
    Column("jobs", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("cached_tokens", BigInteger, nullable=False),
    Column("cache_hits", BigInteger, nullable=False),
    Column("cost_usd", Money, nullable=False),
    Column("cost_saved_usd", Money, nullable=False),
)

#: The latency histogram beside them, per tier, of jobs that were not rejected. A row is
#: one bucket's own range (previous bound, ``le``], seconds, 'Infinity' for the last: a
#: job adds to one row, and /metrics makes the cumulative counts when scraped.
metric_latency = Table(
    "metric_latency", metadata,
    Column("tier", String(40), primary_key=True),
    Column("le", Float, primary_key=True),
    Column("jobs", BigInteger, nullable=False),
    Column("sum_ms", Float, nullable=False),
)

#: The time-to-first-token histogram of streamed jobs, by tier (as ``metric_latency``).
metric_ttft = Table(
    "metric_ttft", metadata,
    Column("tier", String(40), primary_key=True),
    Column("le", Float, primary_key=True),
    Column("jobs", BigInteger, nullable=False),
    Column("sum_ms", Float, nullable=False),
)

#: API keys of the HTTP API (``llmfleet keys``): only a sha256 of each key is kept; the
#: key's id (its public prefix) is what lists, logs and revocations name.
fleet_keys = Table(
    "fleet_keys", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("key_id", String(32), nullable=False, unique=True),
    Column("key_hash", String(64), nullable=False),
    Column("agent", String(200), nullable=False),
    Column("user_id", String(200)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    # The key's own limits and queue priority (migration 0008).
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("concurrency", Integer),
    Column("limit_mode", String(16)),
    Column("priority", String(16)),
    #: Seconds its jobs that name no deadline can wait (migration 0012); NULL: none.
    Column("deadline_s", Float),
)

#: Prompt templates, one row per version: a version is never rewritten, so a ledger row
#: that names (template, version) names the exact text that was sent.
prompt_templates = Table(
    "prompt_templates", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("category", String(200)),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("name", "version", name="uq_prompt_templates_version"),
)

#: A/B experiments over templates, models or tiers; ``variants`` is a JSON list of
#: {name, weight, template?, version?, model?, tier?}.
experiments = Table(
    "experiments", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("unit", String(16), nullable=False),  # "user" | "agent" | "job"
    Column("primary_metric", String(40), nullable=False),  # "success_rate" | "score"
    Column("variants", JSONB, nullable=False),
    Column("status", String(16), nullable=False),  # "draft" | "running" | "stopped"
    Column("winner", String(200)),
    Column("alpha", Float, nullable=False, default=0.05),
    Column("created_at", DateTime(timezone=True), nullable=False),
    #: An automatic evaluator's spec ({"kind": ..., params}), or NULL for agent feedback.
    Column("evaluator", JSONB),
)

#: What an experiment measures: one outcome per job (feedback is an upsert).
experiment_outcomes = Table(
    "experiment_outcomes", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("job_id", String(64), nullable=False, unique=True),
    Column("experiment", String(200), nullable=False),
    Column("variant", String(200), nullable=False),
    Column("success", Boolean),
    Column("score", Float),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_experiment_outcomes_experiment", "experiment", "variant"),
)

#: Every administrative action, appended and never changed (``workers.store.audit``):
#: a trigger refuses UPDATE, DELETE and TRUNCATE but the retention purge's DELETE
#: (migration 0009). ``before`` and ``after`` hold ids and settings, never a secret.
audit_log = Table(
    "audit_log", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    #: "admin-key", "dashboard:<session id>", "cli:<os user>@<host>", "system", ...
    Column("actor", Text, nullable=False),
    #: "key.create", "template.put", "dashboard.login_failed", "admin.<route>", ...
    Column("action", Text, nullable=False),
    #: "key:<key id>", "template:<name>", "experiment:<name>", ...
    Column("resource", Text, nullable=False),
    Column("before", JSONB(none_as_null=True)),
    Column("after", JSONB(none_as_null=True)),
    Column("outcome", Text, nullable=False),  # "ok" | "refused" | "error"
    #: The HTTP client's address; NULL for the CLI and the fleet itself.
    Column("address", Text),
    Index("ix_audit_log_at", "at"),
    Index("ix_audit_log_action_at", "action", "at"),
    Index("ix_audit_log_actor_at", "actor", "at"),
    Index("ix_audit_log_resource_at", "resource", "at"),
    CheckConstraint("outcome IN ('ok', 'refused', 'error')", name="ck_audit_log_outcome"),
)

#: A batch sent to a provider's batch API (``workers.batching``): written as
#: ``submitting`` before anything is uploaded, its provider's id stored as soon as it is
#: known, so a batcher restarted at any moment finds it again.
provider_batches = Table(
    "provider_batches", metadata,
    #: Ours (32 hex), also sent as the provider batch's metadata where it takes one.
    Column("id", String(32), primary_key=True),
    Column("provider", String(200), nullable=False),
    Column("model", String(200), nullable=False),
    Column("wire_model", String(200), nullable=False),
    #: submitting | in_progress | ended | cancelled
    Column("status", String(16), nullable=False),
    Column("provider_batch_id", String(200)),
    Column("items", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("submitted_at", DateTime(timezone=True)),
    Column("ended_at", DateTime(timezone=True)),
    #: How it ended at the provider (completed, expired, failed, cancelled...).
    Column("outcome", String(32)),
    Index("ix_provider_batches_status", "status"),
    CheckConstraint("status IN ('submitting', 'in_progress', 'ended', 'cancelled')",
                    name="ck_provider_batches_status"),
)

#: A job waiting for a batch, and its place in one: its whole payload (the batcher runs
#: it from here), its deadline, its state. One row per job.
provider_batch_jobs = Table(
    "provider_batch_jobs", metadata,
    Column("job_id", String(64), primary_key=True),
    Column("batch_id", String(32)),
    Column("provider", String(200), nullable=False),
    Column("model", String(200), nullable=False),
    Column("tier", String(40), nullable=False),
    Column("payload", JSONB, nullable=False),
    #: waiting (for a batch) | submitted (in batch_id) | done (answered by it) | live
    #: (sent back to its tier's queue to run now)
    Column("state", String(16), nullable=False),
    #: Why it went live: deadline, errored, expired, failed, cancelled, missing.
    Column("reason", String(32)),
    Column("deadline_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_provider_batch_jobs_state", "state", "provider", "model"),
    Index("ix_provider_batch_jobs_batch", "batch_id"),
    CheckConstraint("state IN ('waiting', 'submitted', 'done', 'live')",
                    name="ck_provider_batch_jobs_state"),
)

#: Files uploaded at the HTTP API (``/v1/files``, purpose ``batch``) and the output and
#: error files of its batches; each belongs to the fleet key that made it.
api_files = Table(
    "api_files", metadata,
    #: ``file-`` and 24 hex characters.
    Column("id", String(40), primary_key=True),
    Column("key_id", String(32), nullable=False),
    #: batch (uploaded) | batch_output (written by a batch: output and error files)
    Column("purpose", String(32), nullable=False),
    Column("filename", String(255), nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("content", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_api_files_key_created", "key_id", "created_at"),
)

#: Batches made at the HTTP API (``/v1/batches``): one fleet job per line of the input
#: file, sent with the completion window as its deadline.
api_batches = Table(
    "api_batches", metadata,
    #: ``batch_`` and 24 hex characters.
    Column("id", String(40), primary_key=True),
    Column("key_id", String(32), nullable=False),
    Column("endpoint", String(40), nullable=False),
    Column("input_file_id", String(40), nullable=False),
    Column("completion_window", String(16), nullable=False),
    #: validating | failed | in_progress | cancelling | cancelled | completed
    Column("status", String(16), nullable=False),
    Column("metadata", JSONB),
    #: OpenAI's ``errors.data`` of a batch whose input was refused (lines named).
    Column("errors", JSONB),
    Column("total", Integer, nullable=False, default=0),
    Column("completed", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("output_file_id", String(40)),
    Column("error_file_id", String(40)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("in_progress_at", DateTime(timezone=True)),
    Column("finalizing_at", DateTime(timezone=True)),
    Column("completed_at", DateTime(timezone=True)),
    Column("failed_at", DateTime(timezone=True)),
    Column("cancelling_at", DateTime(timezone=True)),
    Column("cancelled_at", DateTime(timezone=True)),
    Index("ix_api_batches_key_created", "key_id", "created_at"),
)

#: A batch's lines: each custom_id, the fleet job that answers it and the request's body.
api_batch_jobs = Table(
    "api_batch_jobs", metadata,
    Column("batch_id", String(40), primary_key=True),
    #: The line of the input file, from 1.
    Column("line", Integer, primary_key=True),
    Column("custom_id", String(512), nullable=False),
    Column("job_id", String(64), nullable=False),
    Column("body", JSONB, nullable=False),
    UniqueConstraint("batch_id", "custom_id", name="uq_api_batch_jobs_custom_id"),
)
