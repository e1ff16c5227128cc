"""End-to-end throughput of the fleet beside plain Celery: same broker, same machine, one run.

    python bench/throughput.py [--jobs 3000] [--in-flight 64] [--latency-ms 50]
                               [--workers 1] [--concurrency 64] [--json]

Everything listens on loopback only: an embedded Redis and Postgres in a temp directory
(or REDIS_URL with a dedicated db, ``--redis-db``, flushed before and after, and only
it; or DATABASE_URL, already migrated), the provider simulator as its own process (so
that it does not share the client's GIL), and real worker processes started as an
operator starts them, with the fleet's defaults (cache and accounting on) unless
``--env`` says otherwise. Phases, in this order:

1. Plain Celery, a no-op task (``bench/_noop_app.py``) on its own worker processes, as
   many as the fleet's, with the same pool, concurrency and Celery settings: the
   ceiling of one Celery message per job on this broker and machine.
   a. throughput: ``--in-flight`` client threads, each ``send_task -> get`` in a loop,
      so exactly that many jobs are always in flight (agents waiting for answers);
   b. round trip: one job at a time, submit to result, p50/p99: the latency floor.
2. The fleet, one job per message: ``FleetClient.submit -> handle.get`` from the same
   number of threads, the simulator answering after ``--latency-ms``. Same closed
   loop as 1a, so single/celery is the fleet's cost per job over a bare message. Then
   the round trip one job at a time with the simulator set to 0 ms: fleet p50 minus
   Celery p50 is the latency the fleet adds (validation, cache lookup, pipeline, one
   HTTP call, accounting, its result waiter).
3. The fleet, batches: ``submit_many`` of ``--batch-size`` jobs from
   ``--batches-in-flight`` threads, each waiting for its batch: the fast path, where a
   message carries many jobs and what is left to saturate is CPU.

Throughput phases warm up first (untimed), then time their jobs from the first submit
to the last result. Every prompt is unique (a run token and a serial number), so no
cache or coalescing answers for a provider. Beside each phase: Redis commands per job,
warnings and errors the workers logged, and the CPU of every process in % of one core
(2 cores = 200%; "other" is the rest of the machine). At the end the ledger is checked:
one row per fleet job, or the accounting lost some under load.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the project and bench importable
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from celery import Celery  # noqa: E402

from bench._measure import (  # noqa: E402
    CPU_GROUPS,
    Observer,
    Phase,
    closed_loop,
    log,
    round_or_none,
    round_trips,
)
from bench._noop_app import NOOP, QUEUE, make_app  # noqa: E402
from bench._simulator import sim_request, start_simulator  # noqa: E402
from schemas import CompletionResult, Settings, load_config  # noqa: E402
from tasks import FleetClient  # noqa: E402
from tasks.celery_config import celery_settings  # noqa: E402
from workers.devstack.supervisor import Supervisor  # noqa: E402

GOAL_BATCH_JOBS_S = 500.0
GOAL_SINGLE_RATIO = 0.8
GOAL_ADDED_P50_MS = 2.0
PROVIDER_KEYS = ("OPENROUTER_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")
JOB_TIMEOUT_S = 30.0
BUSY_OTHER_PCT = 25.0  # more than this elsewhere on the machine: the figures are low bounds


# -- the system under test ----------------------------------------------------------------


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


@dataclass(frozen=True)
class Services:
    redis_url: str
    database_url: str
    postgres_pid: int  # 0 when not ours


@contextlib.contextmanager
def services(tmp: Path, db: int) -> Iterator[Services]:
    """Redis: REDIS_URL with db ``db`` (flushed before and after, and only it), else an
    embedded one in ``tmp``. Postgres (the ledger): DATABASE_URL, else an embedded one
    in ``tmp``, migrated here. Embedded servers are stopped afterwards."""
    from workers.devstack.embedded import ensure_stack, stop_stack
    from workers.store.engines import migrate

    external_redis, external_pg = os.environ.get("REDIS_URL"), os.environ.get("DATABASE_URL")
    flush: redis.Redis | None = None
    try:
        info = ensure_stack(tmp, redis=not external_redis, postgres=not external_pg)
        redis_url = info.redis_url
        if external_redis:
            redis_url = urlunsplit(urlsplit(external_redis)._replace(path=f"/{db}"))
            flush = redis.Redis.from_url(redis_url)
            flush.flushdb()
        pg_pid = 0
        if not external_pg:
            migrate(info.database_url)
            pg_pid = json.loads((tmp / "stack.json").read_text())["postgres"]["pid"]
        yield Services(redis_url, external_pg or info.database_url, pg_pid)
    finally:
        if flush is not None:
            flush.flushdb()
            flush.close()
        stop_stack(tmp)


def child_env(found: Services, tmp: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROVIDER_KEYS}
    path = env.get("PYTHONPATH")
    env.update(REDIS_URL=found.redis_url, DATABASE_URL=found.database_url,
               LLMFLEET_DATA_DIR=str(tmp),
               PYTHONPATH=f"{ROOT}{os.pathsep}{path}" if path else str(ROOT))
    env.update(extra)
    return env


def tail_logs(log_dir: Path, lines: int = 15) -> None:
    for path in sorted(log_dir.glob("*.log")):
        text = path.read_text("utf-8", "replace").strip().splitlines()[-lines:]
        log(f"--- {path.name}\n" + "\n".join(text))


# -- the phases -----------------------------------------------------------------------------


def run_celery(opts: Options, url: str, env: dict[str, str], log_dir: Path,
               observer: Observer) -> tuple[Phase, Phase]:
    app = make_app(url)
    sup = Supervisor(env={**env, "BENCH_REDIS_URL": url}, log_dir=log_dir)
    try:
        log(f"plain celery: starting {opts.workers} no-op worker(s)")
        for i in range(1, opts.workers + 1):
            sup.start_exec(f"noop-{i}", [
                sys.executable, "-m", "celery", "-A", "bench._noop_app:app", "worker",
                "--pool", "threads", "--concurrency", str(opts.concurrency), "--queues", QUEUE,
                "--loglevel", "WARNING", "--hostname", f"bench-noop-{i}@%h",
                "--without-mingle", "--without-gossip"])
        sup.wait_for_workers(app, opts.workers, timeout=60)
        observer.pids["workers"] = [p.pid for p in sup.children.values()]

        def one() -> tuple[int, int]:
            app.send_task(NOOP, queue=QUEUE).get(timeout=JOB_TIMEOUT_S)
            return 1, 0

        closed_loop(Phase("warm-up"), one, 2 * opts.in_flight, opts.in_flight, 30)
        throughput = Phase(f"plain celery no-op, {opts.in_flight} in flight")
        log(f"plain celery: {opts.jobs} jobs, {opts.in_flight} in flight")
        with observer.measure(throughput):
            closed_loop(throughput, one, opts.jobs, opts.in_flight, opts.phase_limit_s)
        round_trips(Phase("warm-up"), one, 20, 30)
        latency = Phase("plain celery no-op, round trip")
        log(f"plain celery: {opts.samples} round trips")
        with observer.measure(latency):
            round_trips(latency, one, opts.samples, opts.phase_limit_s)
        return throughput, latency
    finally:
        sup.stop()
        app.close()


@dataclass
class Ledger:
    """The accounting check: a row per fleet job this run submitted."""

    jobs: int
    rows: int | None  # None: accounting is off
    spooled: int


def check_ledger(settings: Settings, found: Services, agent: str, jobs: int) -> Ledger:
    """Wait (a little) for the workers' flusher to drain the spool, then count rows."""
    if not settings.enable_cost_tracking:
        return Ledger(jobs, None, 0)
    from sqlalchemy import func, select

    from schemas.keys import LEDGER_SPOOL
    from schemas.tables import job_ledger
    from workers.store.engines import sync_engine

    client = redis.Redis.from_url(found.redis_url)
    query = select(func.count()).select_from(job_ledger).where(job_ledger.c.agent == agent)
    deadline, rows, spooled = time.monotonic() + 15, 0, 0
    with contextlib.closing(client):
        while time.monotonic() < deadline:
            spooled = int(client.llen(LEDGER_SPOOL))
            with sync_engine(found.database_url).connect() as connection:
                rows = int(connection.execute(query).scalar_one())
            if rows >= jobs or (spooled == 0 and rows):
                break
            time.sleep(0.5)
    sync_engine(found.database_url).dispose()
    return Ledger(jobs, rows, spooled)


def run_fleet(opts: Options, found: Services, env: dict[str, str], log_dir: Path,
              observer: Observer) -> tuple[tuple[Phase, Phase, Phase], Ledger]:
    url = found.redis_url
    settings, fleet = load_config(Settings.from_env(env))
    control = Celery("bench-control", set_as_current=False)
    control.conf.update(celery_settings(url, url, fleet))
    sup = Supervisor(env=env, log_dir=log_dir)
    run, serial = uuid.uuid4().hex[:8], itertools.count()
    agent = f"bench-{run}"
    client: FleetClient | None = None
    try:
        log(f"fleet: starting the simulator ({opts.latency_ms:g} ms) and "
            f"{opts.workers} worker(s)")
        sim = start_simulator(sup, opts.latency_ms)
        observer.pids["simulator"] = [sup.children["simulator"].pid]
        sup.env = {**env, "LLMFLEET_SIMULATOR_URL": sim}
        for i in range(1, opts.workers + 1):
            sup.start(f"worker-{i}", [
                "worker", "--tiers", opts.tier, "--concurrency", str(opts.concurrency),
                "--loglevel", "WARNING", "--hostname", f"bench-fleet-{i}@%h"])
        sup.wait_for_workers(control, opts.workers, timeout=60)
        observer.pids["workers"] = [p.pid for n, p in sup.children.items() if n != "simulator"]
        client = fleet_client = FleetClient(redis_url=url, fleet=fleet, settings=settings,
                                            agent=agent)

        def spec() -> dict[str, Any]:  # unique: no cache or coalescing answers for a provider
            text = f"Summarise ticket {run}-{next(serial)} in one line."
            return {"messages": [{"role": "user", "content": text}], "tier": opts.tier,
                    "max_tokens": 64}

        def one() -> tuple[int, int]:
            job = spec()
            result = fleet_client.submit(job.pop("messages"), **job).get(timeout=JOB_TIMEOUT_S)
            return (1, 0) if isinstance(result, CompletionResult) else (0, 1)

        def batch() -> tuple[int, int]:
            handle = fleet_client.submit_many([spec() for _ in range(opts.batch_size)])
            results = handle.get(timeout=JOB_TIMEOUT_S, return_exceptions=True)
            failed = sum(not isinstance(r, CompletionResult) for r in results)
            return len(results) - failed, failed

        closed_loop(Phase("warm-up"), one, 2 * opts.in_flight, opts.in_flight, 30)
        single = Phase(f"fleet submit+get, {opts.in_flight} in flight")
        log(f"fleet single: {opts.jobs} jobs, {opts.in_flight} in flight")
        with observer.measure(single):
            closed_loop(single, one, opts.jobs, opts.in_flight, opts.phase_limit_s)

        closed_loop(Phase("warm-up"), batch, opts.batches_in_flight, opts.batches_in_flight, 30)
        batches = max(1, -(-opts.batch_jobs // opts.batch_size))
        many = Phase(f"fleet submit_many, {opts.batches_in_flight}x{opts.batch_size} in flight")
        log(f"fleet batch: {batches * opts.batch_size} jobs, {opts.batches_in_flight} batches "
            f"of {opts.batch_size} in flight")
        with observer.measure(many):
            closed_loop(many, batch, batches, opts.batches_in_flight, opts.phase_limit_s)

        sim_request(sim, "/_sim/config", {"latency_ms": 0})
        round_trips(Phase("warm-up"), one, 20, 30)
        latency = Phase("fleet round trip, simulator at 0 ms")
        log(f"fleet: {opts.samples} round trips, simulator at 0 ms")
        with observer.measure(latency):
            round_trips(latency, one, opts.samples, opts.phase_limit_s)
        log("fleet: checking the ledger")
        ledger = check_ledger(settings, found, agent, next(serial))
        return (single, many, latency), ledger
    finally:
        if client is not None:
            client.close()
        sup.stop()
        control.close()


# -- the report -------------------------------------------------------------------------


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


def run(opts: Options) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="llmfleet-bench-"))
    log_dir = tmp / "logs"
    log_dir.mkdir()
    try:
        with services(tmp, opts.redis_db) as found:
            log(f"redis: {found.redis_url}, postgres: {found.database_url}")
            env = child_env(found, tmp, opts.env)
            observer = Observer(found.redis_url, found.postgres_pid, log_dir)
            celery, celery_rt = run_celery(opts, found.redis_url, env, log_dir, observer)
            (single, batch, fleet_rt), ledger = run_fleet(opts, found, env, log_dir, observer)
    except Exception:
        tail_logs(log_dir)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    phases = {"celery": celery, "single": single, "batch": batch, "celery_rt": celery_rt,
              "fleet_rt": fleet_rt}
    goals = verdicts(phases)
    table = render(opts, phases, goals, ledger)
    if not opts.as_json:
        print(table)
        return 0
    log(table)
    config = {k: v for k, v in asdict(opts).items() if k != "as_json"}
    print(json.dumps({"config": config, "cpus": os.cpu_count(), "goals": goals,
                      "ledger": asdict(ledger),
                      "phases": {k: p.to_json() for k, p in phases.items()}}, indent=2))
    return 0


def parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    add = parser.add_argument
    add("--jobs", type=int, default=3000, help="jobs per single-job throughput phase")
    add("--batch-jobs", type=int, default=None, help="jobs of the batch phase (3x --jobs)")
    add("--in-flight", type=int, default=64, help="client threads, one job in flight each")
    add("--latency-ms", type=float, default=50.0, help="the simulator's answer delay")
    add("--workers", type=int, default=1, help="worker processes (fleet and baseline)")
    add("--concurrency", type=int, default=64, help="pool threads per worker process")
    add("--batch-size", type=int, default=256, help="jobs per submit_many call")
    add("--batches-in-flight", type=int, default=4, help="submit_many calls in flight")
    add("--samples", type=int, default=300, help="round trips per latency phase")
    add("--tier", default="simple", help="the tier the fleet's jobs go to")
    add("--redis-db", type=int, default=15, help="db used (and flushed) when REDIS_URL is set")
    add("--phase-limit", type=float, default=60.0, help="seconds after which a phase stops")
    add("--env", action="append", default=[], metavar="NAME=VALUE",
        help="fleet setting for the workers and the client, e.g. ENABLE_LLM_CACHE=false")
    add("--json", action="store_true", help="print JSON on stdout (the table on stderr)")
    ns = parser.parse_args(argv)
    for name in ("jobs", "in_flight", "workers", "concurrency", "batch_size",
                 "batches_in_flight", "samples"):
        if getattr(ns, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if any("=" not in item for item in ns.env):
        parser.error("--env takes NAME=VALUE")
    return Options(jobs=ns.jobs, batch_jobs=ns.batch_jobs or 3 * ns.jobs,
                   in_flight=ns.in_flight, latency_ms=ns.latency_ms, workers=ns.workers,
                   concurrency=ns.concurrency, batch_size=ns.batch_size,
                   batches_in_flight=ns.batches_in_flight, samples=ns.samples, tier=ns.tier,
                   redis_db=ns.redis_db, phase_limit_s=ns.phase_limit,
                   env=dict(item.split("=", 1) for item in ns.env), as_json=ns.json)


def main(argv: list[str] | None = None) -> int:
    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    opts = parse(argv)
    try:
        return run(opts)
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
