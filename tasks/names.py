"""What an agent may ask of the fleet: task names, queues and the options they run with.

Declared here, on the agent side, so the client enqueues by name without loading worker
code; ``workers.bodies`` binds the bodies to these names with these options.
"""

from __future__ import annotations

from typing import Any

from schemas import EMBEDDINGS_TIER, PRIORITIES, Priority

__all__ = [
    "ADMIN_QUEUE",
    "AGENT_STATS",
    "BATCH_TICK",
    "BEAT_HEARTBEAT",
    "COMPLETE",
    "COMPLETE_BATCH",
    "EMBED",
    "EMBEDDINGS_QUEUE",
    "ENFORCE_BUDGETS",
    "EVALUATE_ALERTS",
    "EXPERIMENTS_CREATE",
    "EXPERIMENTS_FEEDBACK",
    "EXPERIMENTS_GET",
    "EXPERIMENTS_REPORT",
    "EXPERIMENTS_STATUS",
    "PURGE_EXPIRED",
    "ROLLUP_METRICS",
    "TASK_OPTIONS",
    "TEMPLATES_GET",
    "TEMPLATES_LIST",
    "TEMPLATES_PUT",
    "args_summary",
    "priority_queues",
    "queue_for",
]

#: One completion job per message.
COMPLETE = "llm.complete"
#: Many completion jobs of one tier in one message; the worker runs them concurrently.
#: One message per job costs a broker round trip each (docs/architecture.md), so batches
#: matter.
COMPLETE_BATCH = "llm.complete_batch"
#: One embedding job (many texts) per message.
EMBED = "llm.embed"
#: Beat's heartbeat, so that health reports know beat is alive.
BEAT_HEARTBEAT = "llm.beat_heartbeat"
#: Beat: recompute budget spend from the ledger, repair the fast counters, alert.
ENFORCE_BUDGETS = "llm.enforce_budgets"
#: Beat: judge tiers, models and agents over ``[monitoring]``'s window; fire and resolve
#: operational alerts, once each.
EVALUATE_ALERTS = "llm.evaluate_alerts"
#: Beat: hourly and daily metric roll-ups from the ledger.
ROLLUP_METRICS = "llm.rollup_metrics"
#: Beat: delete ledger rows past METRICS_RETENTION_DAYS (roll-ups stay).
PURGE_EXPIRED = "llm.purge_expired"
#: Beat: the batcher's round (``[batch] poll_s``): gather jobs that can wait into
#: provider batches, send, poll, answer; one at a time fleet-wide.
BATCH_TICK = "llm.batch_tick"
#: An agent's figures from the ledger (for FleetAgent.get_agent_stats).
AGENT_STATS = "llm.agent_stats"
#: Prompt templates in Postgres, for ``client.templates`` (agents load no database code).
TEMPLATES_PUT = "llm.templates_put"
TEMPLATES_GET = "llm.templates_get"
TEMPLATES_LIST = "llm.templates_list"
#: Experiments in Postgres, for ``client.experiments`` and ``client.feedback``.
EXPERIMENTS_CREATE = "llm.experiments_create"
EXPERIMENTS_STATUS = "llm.experiments_status"
EXPERIMENTS_GET = "llm.experiments_get"
EXPERIMENTS_REPORT = "llm.experiments_report"
EXPERIMENTS_FEEDBACK = "llm.experiments_feedback"

#: Housekeeping and reports; every worker consumes it, whatever its tiers.
ADMIN_QUEUE = "llm.admin"

EMBEDDINGS_QUEUE = f"llm.{EMBEDDINGS_TIER}"


def queue_for(tier: str, priority: Priority = "normal") -> str:
    """The queue of a tier and priority: ``llm.<tier>`` for normal jobs,
    ``llm.<tier>.high`` and ``llm.<tier>.low`` for the others."""
    return f"llm.{tier}" if priority == "normal" else f"llm.{tier}.{priority}"


def priority_queues(tier: str) -> list[str]:
    """A tier's queues, highest priority first."""
    return [queue_for(tier, p) for p in PRIORITIES]


def args_summary(args: list[Any]) -> str:
    """What a job message's headers say of its arguments (Celery's ``argsrepr``, shown
    by Flower and worker logs): the job's id and who sent it, or how many jobs a batch
    holds. Celery's own summary is a repr of the whole payload: it costs the sender more
    than the rest of the send, and copies the start of the prompt into the headers."""
    first = args[0] if args else None
    if isinstance(first, list):
        return f"({len(first)} jobs)"
    if isinstance(first, dict):
        return (f"(job {first.get('job_id')}, agent {first.get('agent')}, "
                f"tier {first.get('tier')})")
    return f"({len(args)} args)"


_JOB_TASK: dict[str, Any] = {
    #: Ack after the body returns: a killed worker's job is delivered again, so the
    #: body must be idempotent (results are keyed by job id).
    "acks_late": True,
    #: Requeue when the worker process dies mid-job instead of failing the job. A job
    #: that kills its worker every time would loop; jobs here only wait on HTTP.
    "reject_on_worker_lost": True,
    #: Retries happen inside the pipeline (backoff, Retry-After, fallback), not by
    #: re-enqueueing: the job keeps its one attempt log.
    "max_retries": 0,
    #: No Celery result: a job's outcome goes to its state key and its client's reply
    #: channel with the job's other writes (``workers.bodies.jobs``), one round trip.
    "ignore_result": True,
}

#: Options of each task, applied where the bodies are bound.
TASK_OPTIONS: dict[str, dict[str, Any]] = {
    COMPLETE: dict(_JOB_TASK),
    COMPLETE_BATCH: dict(_JOB_TASK),
    EMBED: dict(_JOB_TASK),
    BEAT_HEARTBEAT: {"ignore_result": True, "acks_late": False},
    # Periodic work is idempotent (it recomputes from the ledger), so a redelivery is
    # harmless; results are kept for `llmfleet` to show what a run did.
    ENFORCE_BUDGETS: {"acks_late": True, "ignore_result": False},
    ROLLUP_METRICS: {"acks_late": True, "ignore_result": False},
    # Firing and resolving are claimed in Postgres: a redelivery finds them claimed.
    EVALUATE_ALERTS: {"acks_late": True, "ignore_result": False},
    PURGE_EXPIRED: {"acks_late": True, "ignore_result": False},
    AGENT_STATS: {"acks_late": False, "ignore_result": False},
    # Idempotent, its state in Postgres: a round killed part-way is finished by the next.
    # Not acknowledged late: a redelivered round would only wait for the lock.
    BATCH_TICK: {"acks_late": False, "ignore_result": True},
    # A put is idempotent (the same body returns the same version), reads are reads.
    TEMPLATES_PUT: {"acks_late": False, "ignore_result": False},
    TEMPLATES_GET: {"acks_late": False, "ignore_result": False},
    TEMPLATES_LIST: {"acks_late": False, "ignore_result": False},
    EXPERIMENTS_CREATE: {"acks_late": False, "ignore_result": False},
    EXPERIMENTS_STATUS: {"acks_late": False, "ignore_result": False},
    EXPERIMENTS_GET: {"acks_late": False, "ignore_result": False},
    EXPERIMENTS_REPORT: {"acks_late": False, "ignore_result": False},
    # Feedback is an upsert on job_id: a redelivery writes the same outcome again.
    EXPERIMENTS_FEEDBACK: {"acks_late": False, "ignore_result": False},
}
