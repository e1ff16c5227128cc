"""``bench/throughput.py``'s options, its verdicts against the goals, and its table."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from bench._fleet import Ledger
from bench._measure import CPU_GROUPS, Phase, round_or_none

__all__ = ["Options", "render", "verdicts"]

GOAL_BATCH_JOBS_S = 500.0
GOAL_SINGLE_RATIO = 0.8
GOAL_ADDED_P50_MS = 2.0
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
    return {
        "single_over_celery": {"value": round(ratio, 3), "goal": f">= {GOAL_SINGLE_RATIO}",
                               "met": ratio >= GOAL_SINGLE_RATIO},
        "batch_jobs_per_s": {"value": round(phases["batch"].rate, 1),
                             "goal": f">= {GOAL_BATCH_JOBS_S:g}",
                             "met": phases["batch"].rate >= GOAL_BATCH_JOBS_S},
        "batch_over_celery": {"value": round(phases["batch"].rate / celery_rate, 3)
                              if celery_rate else 0.0},
        "added_p50_ms": {"value": round_or_none(added), "goal": f"<= {GOAL_ADDED_P50_MS:g}",
                         "met": added is not None and added <= GOAL_ADDED_P50_MS},
    }


def render(opts: Options, phases: dict[str, Phase], goals: dict[str, Any],
           ledger: Ledger) -> str:
    extra = " ".join(f"{k}={v}" for k, v in opts.env.items())
    lines = [f"llmfleet throughput: simulator {opts.latency_ms:g} ms, {opts.workers} worker "
             f"process(es) x {opts.concurrency} threads, {os.cpu_count()} CPUs, loopback"
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

    single, batch, added = (goals["single_over_celery"], goals["batch_jobs_per_s"],
                            goals["added_p50_ms"])
    lines += ["(p50/p99 of throughput phases: per call under load, a job or a whole batch)", "",
              f"single-job / plain celery   {single['value']:>8.2f}    goal {single['goal']:<8}"
              f" {mark(single)}",
              f"batch jobs/s                {batch['value']:>8.1f}    goal {batch['goal']:<8}"
              f" {mark(batch)}   ({goals['batch_over_celery']['value']:.2f}x plain celery)",
              f"added p50 over celery (ms)  {_ms(added['value']):>8}    goal {added['goal']:<8}"
              f" {mark(added)}   (fleet {_ms(phases['fleet_rt'].percentile(50))} - celery "
              f"{_ms(phases['celery_rt'].percentile(50))})"]
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
