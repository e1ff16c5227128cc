"""``bench/throughput.py``'s options, its verdicts against the goals, and its table."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from bench._fleet import Ledger
from bench._measure import CPU_GROUPS, Phase, round_or_none

__all__ = ["Options", "render", "verdicts"]

# The single-job path's goals (bench/README.md): throughput beside plain Celery in the
# same run, Redis commands and worker CPU per job at that throughput, latency added to a
# bare Celery round trip, and batches no slower than they were (0.86-0.91x plain Celery
# on the 2-core machine where the goals were set).
GOAL_SINGLE_RATIO = 0.8
GOAL_REDIS_PER_JOB = 24.0
GOAL_WORKER_CPU_MS = 3.5
GOAL_ADDED_P50_MS = 1.5
GOAL_BATCH_RATIO = 0.85
BUSY_OTHER_PCT = 25.0  # more than this elsewhere on the machine: the figures are low bounds


@dataclass
class Options:
    jobs: int
    batch_jobs: int
    in_flight: int
    latency_ms: float
    workers: int
    concurrency: int
    batch_size: int
    batches_in_flight: int
    samples: int
    tier: str
    redis_db: int
    phase_limit_s: float
    env: dict[str, str]
    as_json: bool


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def verdicts(phases: dict[str, Phase]) -> dict[str, Any]:
    celery_rate, single_rate = phases["celery"].rate, phases["single"].rate
    ratio = single_rate / celery_rate if celery_rate else 0.0
    celery_p50 = phases["celery_rt"].percentile(50)
    fleet_p50 = phases["fleet_rt"].percentile(50)
    added = None if celery_p50 is None or fleet_p50 is None else fleet_p50 - celery_p50
    single = phases["single"]
    redis_per_job = single.redis_commands / max(single.jobs, 1)
    worker_cpu = single.group_ms_per_job("workers")
    batch_ratio = phases["batch"].rate / celery_rate if celery_rate else 0.0
    return {
        "single_over_celery": {"value": round(ratio, 3), "goal": f">= {GOAL_SINGLE_RATIO}",
                               "met": ratio >= GOAL_SINGLE_RATIO},
        "redis_per_job": {"value": round(redis_per_job, 1), "goal": f"<= {GOAL_REDIS_PER_JOB:g}",
                          "met": redis_per_job <= GOAL_REDIS_PER_JOB},
        "worker_cpu_ms_per_job": {"value": round(worker_cpu, 2),
                                  "goal": f"<= {GOAL_WORKER_CPU_MS:g}",
                                  "met": worker_cpu <= GOAL_WORKER_CPU_MS},
        "added_p50_ms": {"value": round_or_none(added), "goal": f"<= {GOAL_ADDED_P50_MS:g}",
                         "met": added is not None and added <= GOAL_ADDED_P50_MS},
        "batch_over_celery": {"value": round(batch_ratio, 3), "goal": f">= {GOAL_BATCH_RATIO}",
                              "met": batch_ratio >= GOAL_BATCH_RATIO},
    }


def render(opts: Options, phases: dict[str, Phase], goals: dict[str, Any],
           ledger: Ledger) -> str:
    extra = " ".join(f"{k}={v}" for k, v in opts.env.items())
    lines = [f"llmfleet throughput: simulator {opts.latency_ms:g} ms, {opts.workers} worker "
             f"process(es), --concurrency {opts.concurrency}, {os.cpu_count()} CPUs, loopback"
             + (f", {extra}" if extra else ""), "",
             f"{'phase':<43}{'jobs':>6}{'err':>5}{'secs':>7}{'jobs/s':>8}{'p50 ms':>8}"
             f"{'p99 ms':>8}{'redis/job':>10}{'cpu ms/job':>11}{'wlog':>6}   cpu %: "
             + "/".join(CPU_GROUPS)]
    for phase in phases.values():
        cpu = "/".join(f"{phase.cpu.get(k, 0):.0f}" for k in CPU_GROUPS)
        name = phase.name + (" (cut)" if phase.cut else "")
        lines.append(f"{name:<43}{phase.jobs:>6}{phase.errors:>5}{phase.seconds:>7.2f}"
                     f"{phase.rate:>8.1f}{_ms(phase.percentile(50)):>8}"
                     f"{_ms(phase.percentile(99)):>8}"
                     f"{phase.redis_commands / max(phase.jobs, 1):>10.1f}"
                     f"{phase.cpu_ms_per_job:>11.2f}"
                     f"{sum(phase.worker_log.values()):>6}   {cpu}")
        if phase.error_kinds:
            lines.append(f"    errors: {dict(phase.error_kinds)}")
        for message, count in phase.worker_log.most_common(3):
            lines.append(f"    worker log x{count}: {message}")

    def mark(goal: dict[str, Any]) -> str:
        return "met" if goal["met"] else "NOT met"

    def line(label: str, name: str, note: str = "") -> str:
        goal = goals[name]
        value = _ms(goal["value"]) if isinstance(goal["value"], float) else str(goal["value"])
        return f"{label:<30}{value:>8}    goal {goal['goal']:<8} {mark(goal)}{note}"

    lines += ["(p50/p99 of throughput phases: per call under load, a job or a whole batch;",
              " cpu ms/job: every process under test, the goal counts the workers' only)", "",
              line("single-job / plain celery", "single_over_celery"),
              line("redis commands per job", "redis_per_job"),
              line("worker cpu ms per job", "worker_cpu_ms_per_job",
                   f"   (plain celery's: {phases['celery'].group_ms_per_job('workers'):.2f})"),
              line("added p50 over celery (ms)", "added_p50_ms",
                   f"   (fleet {_ms(phases['fleet_rt'].percentile(50))} - celery "
                   f"{_ms(phases['celery_rt'].percentile(50))})"),
              line("batch / plain celery", "batch_over_celery",
                   f"   ({phases['batch'].rate:.1f} jobs/s)")]
    if ledger.rows is None:
        lines.append("ledger: accounting off")
    else:
        lost = ledger.jobs - ledger.rows - ledger.spooled
        ok = "ok" if ledger.rows == ledger.jobs else f"{lost} LOST" if lost > 0 else "late"
        lines.append(f"ledger: {ledger.rows} rows for {ledger.jobs} fleet jobs, "
                     f"{ledger.spooled} still spooled after 15 s: {ok}")
    busy = max(p.cpu.get("other", 0) for p in phases.values())
    if busy > BUSY_OTHER_PCT:
        lines.append(f"note: other work used up to {busy:.0f}% of a core during a phase: "
                     "these figures are low bounds")
    return "\n".join(lines)
