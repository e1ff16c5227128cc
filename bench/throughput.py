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
import itertools
import json
import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the project and bench importable
    sys.path.insert(0, str(ROOT))

from celery import Celery  # noqa: E402

from bench._fleet import (  # noqa: E402
    Ledger,
    Services,
    check_ledger,
    child_env,
    services,
    tail_logs,
    wait_flushed,
)
from bench._measure import (  # noqa: E402
    Observer,
    Phase,
    closed_loop,
    interruptible,
    log,
    round_trips,
)
from bench._noop_app import NOOP, QUEUE, make_app  # noqa: E402
from bench._simulator import sim_request, start_simulator  # noqa: E402
from bench._throughput_report import Options, render, verdicts  # noqa: E402
from schemas import CompletionResult, Settings, load_config  # noqa: E402
from tasks import FleetClient  # noqa: E402
from tasks.celery_config import celery_settings  # noqa: E402
from workers.devstack.supervisor import Supervisor  # noqa: E402

JOB_TIMEOUT_S = 30.0


# -- the system under test ----------------------------------------------------------------


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
        log(f"fleet: ledger spool flushed in {wait_flushed(url):.1f} s")
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
    add("--concurrency", type=int, default=64,
        help="jobs in flight per worker process (the baseline's pool threads)")
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
    opts = parse(argv)
    code = interruptible(lambda: run(opts))
    return 130 if code is None else code


if __name__ == "__main__":
    sys.exit(main())
