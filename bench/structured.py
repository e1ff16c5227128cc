"""Structured output through the fleet from a provider that answers malformed JSON: one run.

    python bench/structured.py [--jobs 500] [--malformed-rate 0.1] [--tools-share 0.2]
                               [--in-flight 16] [--latency-ms 50] [--json]

Everything listens on loopback only: an embedded Redis and Postgres in a temp directory
(or REDIS_URL with a dedicated db, ``--redis-db``, flushed before and after; or
DATABASE_URL, already migrated), the provider simulator as its own process, one real
worker process for the tier (``llmfleet worker``), fleet defaults otherwise.

``--jobs`` jobs, each a unique prompt: most ask for a ``json_schema`` response format
(two schemas in turn, one strict and one not, with enums, bounds and arrays), the
``--tools-share`` rest offer a strict tool and force a call of it. ``--in-flight``
client threads each ``submit -> get`` in a loop, the simulator answering after
``--latency-ms``. Two passes of the same jobs (``cache="skip"``, so the second pass is
answered by the provider too), each under an agent of its own:

1. the simulator's ``malformed_rate`` at ``--malformed-rate`` (broken JSON and JSON
   that breaks the schema, in turn): the fleet checks every answer against the job's
   schema, asks again, falls back along the tier's chain;
2. ``malformed_rate`` 0: the cost of the same jobs when every answer is good.

For each pass: the answers that reach the agent valid (checked again here, with
jsonschema, against the schema the job sent; goal: at least 99.9% in pass 1), the
invalid ones that reached it anyway (goal: 0), the errors (the OutputValidationErrors
quoted), the provider calls the simulator counted against the jobs, fallbacks, and the
ledger's cost. The extra cost is pass 1's ledger cost over pass 2's. Beside each pass:
CPU per process in % of one core ("other" is the rest of the machine) and the warnings
and errors the worker logged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the project and bench importable
    sys.path.insert(0, str(ROOT))

from jsonschema import Draft202012Validator  # noqa: E402

from bench._measure import Phase, closed_loop, interruptible, log  # noqa: E402
from bench._rig import GROUPS, LedgerRows, Rig, ledger_rows, rig  # noqa: E402
from schemas import CompletionResult, FleetError  # noqa: E402
from tasks import FleetClient  # noqa: E402

GOAL_VALID_SHARE = 0.999
BUSY_OTHER_PCT = 25.0
JOB_TIMEOUT_S = 60.0

TICKET = {"type": "object", "additionalProperties": False,
          "required": ["title", "priority", "tags", "estimate_hours"],
          "properties": {"title": {"type": "string"},
                         "priority": {"type": "string", "enum": ["low", "medium", "high"]},
                         "tags": {"type": "array", "items": {"type": "string"}},
                         "estimate_hours": {"type": "number", "minimum": 0, "maximum": 100}}}
SUMMARY = {"type": "object", "required": ["summary", "confidence"],
           "properties": {"summary": {"type": "string", "minLength": 1},
                          "points": {"type": "array", "items": {"type": "string"},
                                     "minItems": 1, "maxItems": 5},
                          "confidence": {"type": "integer", "minimum": 1, "maximum": 5}}}
FORMATS = [{"type": "json_schema", "json_schema": {"name": "ticket", "schema": TICKET,
                                                   "strict": True}},
           {"type": "json_schema", "json_schema": {"name": "summary", "schema": SUMMARY}}]
TOOL_SCHEMA = {"type": "object", "additionalProperties": False,
               "required": ["title", "severity", "component"],
               "properties": {"title": {"type": "string"},
                              "severity": {"type": "integer", "minimum": 1, "maximum": 4},
                              "component": {"type": "string", "enum": ["api", "worker", "ui"]}}}
TOOL = {"type": "function", "function": {"name": "create_ticket", "strict": True,
                                         "description": "File a ticket in the tracker.",
                                         "parameters": TOOL_SCHEMA}}
TOOL_CHOICE = {"type": "function", "function": {"name": "create_ticket"}}
_TOPICS = ("the login page times out", "exports miss the last row", "search ranks drafts",
           "webhooks retry forever", "the dashboard shows stale costs")


@dataclass
class Options:
    jobs: int
    malformed_rate: float
    tools_share: float
    in_flight: int
    latency_ms: float
    concurrency: int
    tier: str
    redis_db: int
    phase_limit_s: float
    as_json: bool


def make_jobs(opts: Options, run: str) -> list[dict[str, Any]]:
    """The jobs (same in both passes), tool jobs spread evenly among format jobs."""
    jobs = []
    for n in range(opts.jobs):
        text = f"Ticket {run}-{n}: {_TOPICS[n % len(_TOPICS)]} for customer {n}."
        job: dict[str, Any] = {"messages": [{"role": "user", "content": text}],
                               "tier": opts.tier, "max_tokens": 256, "cache": "skip"}
        if int((n + 1) * opts.tools_share) > int(n * opts.tools_share):
            job.update(tools=[TOOL], tool_choice=TOOL_CHOICE)
        else:
            job["response_format"] = FORMATS[n % len(FORMATS)]
        jobs.append(job)
    return jobs


_VALIDATORS = {id(s): Draft202012Validator(s) for s in (TICKET, SUMMARY, TOOL_SCHEMA)}


def problem_of(job: dict[str, Any], result: CompletionResult) -> str | None:
    """What is wrong with ``result`` for ``job``, checked here; None when valid."""
    if "tools" in job:
        if not result.tool_calls:
            return f"no tool call (finish {result.finish_reason})"
        for call in result.tool_calls:
            if call.name != "create_ticket":
                return f"called {call.name!r}"
            try:
                arguments = json.loads(call.function.arguments)
            except ValueError:
                return "arguments not JSON"
            if not _VALIDATORS[id(TOOL_SCHEMA)].is_valid(arguments):
                return "arguments break the tool's schema"
        return None
    schema = job["response_format"]["json_schema"]["schema"]
    try:
        document = json.loads(result.content)
    except ValueError:
        return "content not JSON"
    if not _VALIDATORS[id(schema)].is_valid(document):
        return "content breaks the schema"
    if result.parsed != document:
        return "parsed differs from content"
    return None


@dataclass
class Pass:
    name: str
    malformed_rate: float
    agent: str
    jobs: int = 0
    valid: int = 0
    invalid_delivered: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    validation_errors: list[str] = field(default_factory=list)  # their messages
    fallbacks: int = 0
    attempts: Counter[int] = field(default_factory=Counter)  # provider calls per job
    agent_cost_usd: float = 0.0  # what the results said (successes only)
    sim: dict[str, Any] = field(default_factory=dict)
    ledger: LedgerRows | None = None
    cut: bool = False

    @property
    def provider_calls(self) -> int:
        return int(self.sim.get("requests", 0))

    @property
    def valid_share(self) -> float:
        return self.valid / self.jobs if self.jobs else 0.0

    def to_json(self) -> dict[str, Any]:
        ledger = None if self.ledger is None else {
            k: v for k, v in asdict(self.ledger).items() if k != "jobs"} | {"ok": self.ledger.ok}
        return {"malformed_rate": self.malformed_rate, "jobs": self.jobs, "valid": self.valid,
                "valid_share": round(self.valid_share, 5),
                "invalid_delivered": dict(self.invalid_delivered),
                "errors": dict(self.errors), "validation_errors": self.validation_errors,
                "fallbacks": self.fallbacks,
                "attempts_per_job": {str(k): v for k, v in sorted(self.attempts.items())},
                "provider_calls": self.provider_calls, "simulator": self.sim,
                "agent_cost_usd": round(self.agent_cost_usd, 8), "ledger": ledger,
                "cut": self.cut}


def run_pass(r: Rig, client: FleetClient, opts: Options, jobs: list[dict[str, Any]],
             out: Pass, phase: Phase) -> None:
    r.sim_config(malformed_rate=out.malformed_rate)
    r.sim_reset()
    lock, positions = threading.Lock(), iter(range(len(jobs)))

    def one() -> tuple[int, int]:
        with lock:
            n = next(positions)
        spec = dict(jobs[n])
        try:
            result = client.submit(spec.pop("messages"), agent=out.agent,
                                   **spec).get(timeout=JOB_TIMEOUT_S)
        except FleetError as exc:
            with lock:
                out.errors[type(exc).__name__] += 1
                if type(exc).__name__ == "OutputValidationError":
                    out.validation_errors.append(exc.message[:300])
            return 0, 1
        problem = problem_of(jobs[n], result)
        with lock:
            out.attempts[result.attempts] += 1
            out.fallbacks += result.fallback_used
            out.agent_cost_usd += result.cost_usd
            if problem is None:
                out.valid += 1
            else:
                out.invalid_delivered[problem] += 1
        return 1, 0

    log(f"{out.name}: {len(jobs)} jobs, {opts.in_flight} in flight, malformed_rate "
        f"{out.malformed_rate:g}")
    with r.observer.measure(phase):
        closed_loop(phase, one, len(jobs), opts.in_flight, opts.phase_limit_s)
    out.jobs = phase.jobs + phase.errors
    out.cut = phase.cut
    if phase.error_kinds:  # not a FleetError: a bug here or in the client
        out.errors.update({f"unexpected {k}": v for k, v in phase.error_kinds.items()})
    out.sim = r.sim_stats()
    r.check_alive()


def render(opts: Options, passes: list[Pass], phases: list[Phase],
           goals: dict[str, Any]) -> str:
    tools = sum(int((n + 1) * opts.tools_share) > int(n * opts.tools_share)
                for n in range(opts.jobs))
    lines = [f"llmfleet structured output: {opts.jobs} jobs ({opts.jobs - tools} json_schema, "
             f"{tools} strict tool), simulator {opts.latency_ms:g} ms, 1 worker process x "
             f"{opts.concurrency} threads, {opts.in_flight} in flight, {os.cpu_count()} CPUs, "
             "loopback", "",
             f"{'pass':<20}{'jobs':>6}{'valid':>7}{'share':>9}{'bad→agent':>10}{'errors':>8}"
             f"{'calls':>7}{'extra':>7}{'fallbk':>7}{'ledger $':>12}{'rows':>6}"]
    for one in passes:
        ledger = one.ledger
        lines.append(
            f"{one.name:<20}{one.jobs:>6}{one.valid:>7}{100 * one.valid_share:>8.2f}%"
            f"{sum(one.invalid_delivered.values()):>10}{sum(one.errors.values()):>8}"
            f"{one.provider_calls:>7}{one.provider_calls - one.jobs:>7}{one.fallbacks:>7}"
            f"{(ledger.cost_usd if ledger else 0):>12.6f}{(ledger.rows if ledger else 0):>6}")
        lines.append(f"    simulator by path {one.sim.get('by_path')}, by status "
                     f"{one.sim.get('by_status')}; provider calls per job "
                     f"{dict(sorted(one.attempts.items()))}")
        if one.invalid_delivered:
            lines.append(f"    INVALID answers delivered: {dict(one.invalid_delivered)}")
        if one.errors:
            lines.append(f"    errors: {dict(one.errors)}")
        for message in one.validation_errors[:5]:
            lines.append(f"    OutputValidationError: {message}")
        if ledger is not None:
            lines.append(f"    {ledger.line()}; attempts in the ledger {ledger.attempts}")
    lines += ["", f"   {'pass':<34}{'secs':>7}{'jobs/s':>8}{'wlog':>6}   cpu %: "
              + "/".join(GROUPS)]
    for phase in phases:
        cpu = "/".join(f"{phase.cpu.get(k, 0):.0f}" for k in GROUPS)
        lines.append(f"   {phase.name:<34}{phase.seconds:>7.2f}{phase.rate:>8.1f}"
                     f"{sum(phase.worker_log.values()):>6}   {cpu}")
        for message, count in phase.worker_log.most_common(3):
            lines.append(f"      worker log x{count}: {message}")
    share, extra = goals["valid_share"], goals["extra"]
    lines += ["",
              f"valid answers reaching the agent   {100 * share['value']:.2f}%   goal >= "
              f"{100 * GOAL_VALID_SHARE:g}%  {'met' if share['met'] else 'NOT met'}",
              f"invalid answers reaching the agent {goals['invalid_delivered']['value']}   "
              f"goal 0  {'met' if goals['invalid_delivered']['met'] else 'NOT met'}",
              f"extra provider calls               {extra['provider_calls']} for "
              f"{passes[0].jobs} jobs (+{100 * extra['provider_calls_share']:.1f}%)",
              f"extra cost                         ${extra['cost_usd']:.6f} over "
              f"${passes[1].ledger.cost_usd if passes[1].ledger else 0:.6f} "
              f"(+{100 * extra['cost_share']:.1f}%)",
              f"OutputValidationErrors             {len(passes[0].validation_errors)}"]
    busy = max((p.cpu.get("other", 0) for p in phases), default=0)
    if busy > BUSY_OTHER_PCT:
        lines.append(f"note: other work used up to {busy:.0f}% of a core during a pass: "
                     "timings are low bounds (the counts are not affected)")
    return "\n".join(lines)


def verdicts(passes: list[Pass]) -> dict[str, Any]:
    bad, good = passes
    base = good.ledger.cost_usd if good.ledger else 0.0
    cost = (bad.ledger.cost_usd if bad.ledger else 0.0) - base
    delivered = sum(bad.invalid_delivered.values())
    return {"valid_share": {"value": round(bad.valid_share, 5),
                            "goal": f">= {GOAL_VALID_SHARE}",
                            "met": bad.valid_share >= GOAL_VALID_SHARE},
            "invalid_delivered": {"value": delivered, "goal": "0", "met": delivered == 0},
            "extra": {"provider_calls": bad.provider_calls - bad.jobs,
                      "provider_calls_share": round((bad.provider_calls - bad.jobs)
                                                    / max(bad.jobs, 1), 4),
                      "over_clean_pass": bad.provider_calls - good.provider_calls,
                      "cost_usd": round(cost, 8),
                      "cost_share": round(cost / base, 4) if base else 0.0}}


def run(opts: Options) -> int:
    run_id = uuid.uuid4().hex[:8]
    jobs = make_jobs(opts, run_id)
    agent = f"bench-structured-{run_id}"
    passes = [Pass(f"malformed {opts.malformed_rate:g}", opts.malformed_rate, agent + "-bad"),
              Pass("malformed 0", 0.0, agent + "-clean")]
    phases = [Phase(f"pass 1, malformed_rate {opts.malformed_rate:g}"),
              Phase("pass 2, malformed_rate 0")]
    with rig(agent=agent, tier=opts.tier, concurrency=opts.concurrency,
             sim_config={"malformed_rate": opts.malformed_rate}, latency_ms=opts.latency_ms,
             redis_db=opts.redis_db) as r:
        client = r.client()
        warm = Pass("warm-up", 0.0, agent + "-warm")
        run_pass(r, client, opts, make_jobs(replace_jobs(opts, 2 * opts.in_flight), "w" + run_id),
                 warm, Phase("warm-up"))
        for one, phase in zip(passes, phases, strict=True):
            run_pass(r, client, opts, jobs, one, phase)
        log("checking the ledger")
        for one in passes:
            one.ledger = ledger_rows(r.found, one.agent, one.jobs)
    goals = verdicts(passes)
    table = render(opts, passes, phases, goals)
    if not opts.as_json:
        print(table)
        return 0
    log(table)
    config = {k: v for k, v in asdict(opts).items() if k != "as_json"}
    print(json.dumps({"config": config, "cpus": os.cpu_count(), "goals": goals,
                      "passes": {p.name: p.to_json() for p in passes},
                      "phases": {p.name: p.to_json() for p in phases}}, indent=2, default=str))
    return 0


def replace_jobs(opts: Options, jobs: int) -> Options:
    return Options(**{**asdict(opts), "jobs": jobs})


def parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        epilog=(__doc__ or "").split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--jobs", type=int, default=500, help="jobs per pass")
    add("--malformed-rate", type=float, default=0.1,
        help="the simulator's share of malformed JSON answers in pass 1")
    add("--tools-share", type=float, default=0.2, help="share of jobs with a strict tool")
    add("--in-flight", type=int, default=16, help="client threads, one job in flight each")
    add("--latency-ms", type=float, default=50.0, help="the simulator's answer delay")
    add("--concurrency", type=int, default=64, help="worker pool threads")
    add("--tier", default="simple", help="the tier the jobs go to")
    add("--redis-db", type=int, default=15, help="db used (and flushed) when REDIS_URL is set")
    add("--phase-limit", type=float, default=300.0, help="seconds after which a pass stops")
    add("--json", action="store_true", help="print JSON on stdout (the table on stderr)")
    ns = parser.parse_args(argv)
    for name in ("jobs", "in_flight", "concurrency"):
        if getattr(ns, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= ns.malformed_rate <= 1 or not 0 <= ns.tools_share <= 1:
        parser.error("--malformed-rate and --tools-share are shares, from 0 to 1")
    return Options(jobs=ns.jobs, malformed_rate=ns.malformed_rate, tools_share=ns.tools_share,
                   in_flight=ns.in_flight, latency_ms=ns.latency_ms, concurrency=ns.concurrency,
                   tier=ns.tier, redis_db=ns.redis_db, phase_limit_s=ns.phase_limit,
                   as_json=ns.json)


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    code = interruptible(lambda: run(opts))
    return 130 if code is None else code


if __name__ == "__main__":
    sys.exit(main())
