"""Scale-out: jobs per second with 1, 2, 4 worker processes, until the machine's cores bind.

    python bench/scaleout.py [--sizes 1,2,4] [--concurrency 16] [--latency-ms 500]
                             [--seconds 30] [--warm-up 8] [--in-flight-per-slot 2]
                             [--shared-client] [--json]

Everything listens on loopback only, as in the other benchmarks (``bench/_rig.py``): an
embedded Redis and Postgres in a temp directory (or REDIS_URL with a dedicated db,
``--redis-db``, flushed before and after; or DATABASE_URL, already migrated), the
provider simulator as its own process answering after ``--latency-ms``, and real worker
processes (``llmfleet worker --tiers simple --concurrency C``) started as an operator
starts them, with the fleet's defaults (cache and accounting on). One fleet for the whole
run: for each size, in ascending order, worker processes are added until there are that
many.

Each process holds ``--concurrency`` jobs in flight, so a process is slot-bound at
C / latency jobs/s (16 / 0.5 s = 32): doubling the processes should double throughput
until something else binds, and on a small machine that is its cores. Per size, a closed
loop of ``FleetClient.submit -> handle.get`` from ``--in-flight-per-slot`` x slots client
threads keeps the queue from running dry; after ``--warm-up`` untimed seconds, the
answers that arrive during ``--seconds`` are counted (and the provider calls the
simulator counted). Single jobs: each thread has a FleetClient of its own, as an agent
process would, because one FleetClient shared by many threads sends the jobs submitted
while a message is on its way together as one batch message, which a worker runs in one
slot, so that slots would no longer bound a process (``--shared-client`` measures that
case). Every prompt is unique: no cache or coalescing answers. Beside the rate: the CPU
seconds of the worker processes (psutil, their children included) and of every other
process of ours (this client, the simulator, Redis, Postgres), per job; the whole
machine's busy share (psutil.cpu_times, all cores, other people's work included), ours
and the rest.

It prints a row per size (workers, slots, jobs/s, share of the slot bound, speed-up over
the previous size, CPU ms per job of the workers and of all our processes, machine CPU
busy %, ours and not ours), the first size at which the machine was at least 90% busy
(from there the cores, not the fleet, are the limit) or that it was not reached, where
the cores would bind were the machine ours alone (cores / CPU per job, against the slot
bound), and the goal: at least 1.8x per doubling of workers before that first size. Then
the ledger check (one row per job submitted). About (warm-up + seconds + 10) s per size
plus 20 s of set-up; 2.5 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the project and bench importable
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from celery import Celery  # noqa: E402

from bench._measure import Phase, interruptible, log  # noqa: E402
from bench._rig import Rig, ledger_rows, rig  # noqa: E402
from schemas import CompletionResult  # noqa: E402
from tasks import FleetClient  # noqa: E402
from tasks.celery_config import celery_settings  # noqa: E402

GOAL_PER_DOUBLING = 1.8
CORES_BOUND_PCT = 90.0
BUSY_OTHER_PCT = 25.0  # of the machine: above it, figures are low bounds
JOB_TIMEOUT_S = 60.0


@dataclass
class Options:
    sizes: list[int]
    concurrency: int
    latency_ms: float
    seconds: float
    warm_up_s: float
    in_flight_per_slot: float
    shared_client: bool
    tier: str
    redis_db: int
    as_json: bool


@dataclass
class Size:
    """One fleet size, measured over its window."""

    workers: int
    slots: int
    in_flight: int
    seconds: float = 0.0
    jobs: int = 0  # answered within the window
    errors: int = 0
    provider_calls: int = 0  # the simulator's count over the window
    error_kinds: Counter[str] = field(default_factory=Counter)
    worker_cpu_s: float = 0.0  # psutil: the worker processes and their children
    machine_busy_pct: float = 0.0  # of all cores
    cpu_pct: dict[str, float] = field(default_factory=dict)  # by group, % of one core

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds else 0.0

    def share_of_bound(self, latency_ms: float) -> float:
        return self.rate / (self.slots / (latency_ms / 1000)) if latency_ms else 0.0

    @property
    def worker_ms_per_job(self) -> float:
        return 1000 * self.worker_cpu_s / max(self.jobs, 1)

    @property
    def ours_ms_per_job(self) -> float:
        ours = sum(v for k, v in self.cpu_pct.items() if k not in ("other", "workers"))
        return self.worker_ms_per_job + ours * self.seconds * 10 / max(self.jobs, 1)

    @property
    def ours_pct(self) -> float:
        """Our processes' CPU, % of all cores."""
        if not self.seconds:
            return 0.0
        cpus = os.cpu_count() or 1
        return self.ours_ms_per_job * self.jobs / self.seconds / 10 / cpus

    @property
    def other_pct(self) -> float:
        """The machine's busy share not ours, % of all cores."""
        return self.cpu_pct.get("other", 0.0) / (os.cpu_count() or 1)

    def to_json(self, latency_ms: float) -> dict[str, Any]:
        return {"workers": self.workers, "slots": self.slots, "in_flight": self.in_flight,
                "seconds": round(self.seconds, 2), "jobs": self.jobs, "errors": self.errors,
                "provider_calls": self.provider_calls, "error_kinds": dict(self.error_kinds),
                "jobs_per_s": round(self.rate, 2),
                "share_of_slot_bound": round(self.share_of_bound(latency_ms), 4),
                "worker_cpu_ms_per_job": round(self.worker_ms_per_job, 3),
                "all_ours_cpu_ms_per_job": round(self.ours_ms_per_job, 3),
                "machine_busy_pct": round(self.machine_busy_pct, 1),
                "ours_pct_of_machine": round(self.ours_pct, 1),
                "other_pct_of_machine": round(self.other_pct, 1),
                "cpu_pct_of_one_core": {k: round(v, 1) for k, v in self.cpu_pct.items()}}


# -- the load --------------------------------------------------------------------------------


class Load:
    """``in_flight`` threads, each ``submit -> get`` back to back: a closed loop that
    counts answers and errors as they arrive. Each thread has a ``FleetClient`` of its
    own (an agent process each), so that every job is a message of its own; with
    ``shared``, all use one, whose publisher sends the jobs that come while a message is
    on its way together, as one batch message (``tasks._publisher``)."""

    def __init__(self, make: Callable[[], FleetClient], shared: bool, tier: str,
                 run: str) -> None:
        self._make, self._shared, self._tier, self._run = make, shared, tier, run
        self._clients: list[FleetClient] = []
        self._serial = itertools.count()
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._pool: list[threading.Thread] = []
        self.submitted = self.answered = self.errors = 0
        self.error_kinds: Counter[str] = Counter()

    def _one(self, client: FleetClient) -> None:
        text = f"Summarise ticket {self._run}-{next(self._serial)} in one line."
        with self._lock:
            self.submitted += 1
        try:
            result = client.submit(text, tier=self._tier, max_tokens=64,
                                         timeout=JOB_TIMEOUT_S).get(timeout=JOB_TIMEOUT_S)
            kind = None if isinstance(result, CompletionResult) else type(result).__name__
        except Exception as exc:  # counted and shown; the load goes on
            kind = type(exc).__name__
        with self._lock:
            if kind is None:
                self.answered += 1
            else:
                self.errors += 1
                self.error_kinds[kind] += 1

    def _loop(self, client: FleetClient) -> None:
        while not self._stop.is_set():
            self._one(client)

    def start(self, in_flight: int) -> None:
        self._stop.clear()
        while len(self._clients) < (1 if self._shared else in_flight):
            self._clients.append(self._make())
        self._pool = [threading.Thread(target=self._loop, daemon=True, name=f"load-{i}",
                                       args=(self._clients[i % len(self._clients)],))
                      for i in range(in_flight)]
        for thread in self._pool:
            thread.start()

    def counts(self) -> tuple[int, int, Counter[str]]:
        with self._lock:
            return self.answered, self.errors, Counter(self.error_kinds)

    def stop(self, drain: bool = True) -> None:
        """No new jobs; with ``drain``, wait for those in flight (each ends by its
        timeout). Without (an error or Ctrl-C), the threads are left to die with us."""
        self._stop.set()
        for thread in self._pool if drain else ():
            while thread.is_alive():  # a timed join, so that Ctrl-C gets through
                thread.join(0.2)
        self._pool = []


# -- measuring -------------------------------------------------------------------------------


def tree_cpu_s(pids: list[int]) -> float:
    """CPU seconds of these processes, their live descendants and the children they reaped."""
    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
            for kid in process.children(recursive=True):
                kid_times = kid.cpu_times()
                total += kid_times.user + kid_times.system
        except psutil.NoSuchProcess:
            continue
    return total


def machine_times() -> tuple[float, float]:
    """(busy, total) CPU seconds of all cores so far (guest time is inside user already)."""
    t = psutil.cpu_times()
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    return total - t.idle - getattr(t, "iowait", 0.0), total


def wait(r: Rig, seconds: float) -> None:
    """Sleep ``seconds``, checking every half second that every child still runs."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(0.5, left))
        r.check_alive()


def measure(r: Rig, load: Load, size: Size, opts: Options) -> Size:
    log(f"{size.workers} worker(s), {size.slots} slots: {size.in_flight} client threads, "
        f"{opts.warm_up_s:g} s warm-up, {opts.seconds:g} s measured")
    load.start(size.in_flight)
    wait(r, opts.warm_up_s)
    phase = Phase(f"{size.workers} workers")
    workers = r.observer.pids["workers"]
    with r.observer.measure(phase):
        answered, errors, kinds = load.counts()
        cpu, (busy, total) = tree_cpu_s(workers), machine_times()
        calls = int(r.sim_stats()["requests"])
        started = time.perf_counter()
        wait(r, opts.seconds)
        size.seconds = time.perf_counter() - started
        answered_after, errors_after, kinds_after = load.counts()
        size.worker_cpu_s = tree_cpu_s(workers) - cpu
        busy_after, total_after = machine_times()
        size.provider_calls = int(r.sim_stats()["requests"]) - calls
    load.stop()
    size.jobs, size.errors = answered_after - answered, errors_after - errors
    size.error_kinds = kinds_after - kinds
    size.machine_busy_pct = 100 * (busy_after - busy) / max(total_after - total, 1e-9)
    size.cpu_pct = phase.cpu
    log(f"  {size.rate:.1f} jobs/s, machine {size.machine_busy_pct:.0f}% busy")
    return size


def grow(r: Rig, control: Celery, count: int, concurrency: int, tier: str) -> None:
    """Worker processes beside the rig's own until there are ``count``."""
    have = [n for n in r.sup.children if n.startswith("worker")]
    for i in range(len(have) + 1, count + 1):
        r.sup.start(f"worker-{i}", ["worker", "--tiers", tier, "--concurrency",
                                    str(concurrency), "--loglevel", "WARNING",
                                    "--hostname", f"bench-scaleout-{i}@%h"])
    r.sup.wait_for_workers(control, count, timeout=90)
    r.observer.pids["workers"] = [p.pid for n, p in r.sup.children.items()
                                  if n.startswith("worker")]


def run_sizes(opts: Options) -> tuple[list[Size], str]:
    run = uuid.uuid4().hex[:8]
    agent = f"bench-scaleout-{run}"
    sizes: list[Size] = []
    with rig(agent=agent, tier=opts.tier, concurrency=opts.concurrency, sim_config={},
             latency_ms=opts.latency_ms, redis_db=opts.redis_db) as r:
        control = Celery("bench-scaleout-control", set_as_current=False)
        control.conf.update(celery_settings(r.found.redis_url, r.found.redis_url, r.fleet))
        load = Load(r.client, opts.shared_client, opts.tier, run)
        try:
            for count in opts.sizes:
                grow(r, control, count, opts.concurrency, opts.tier)
                slots = count * opts.concurrency
                in_flight = max(1, math.ceil(slots * opts.in_flight_per_slot))
                sizes.append(measure(r, load, Size(count, slots, in_flight), opts))
        except BaseException:
            load.stop(drain=False)
            raise
        finally:
            control.close()
        log("checking the ledger")
        ledger = ledger_rows(r.found, agent, load.submitted).line()
    return sizes, ledger


# -- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """From one size to the next: the speed-up, and per doubling of the workers."""

    before: int
    after: int
    speed_up: float
    per_doubling: float
    judged: bool  # the cores did not yet bind at ``after``


def verdicts(sizes: list[Size]) -> tuple[int | None, list[Step], bool]:
    """The first size with the machine >= 90% busy (None: not reached), the steps, and
    whether every step before it scaled by at least 1.8x per doubling."""
    bound = next((s.workers for s in sizes if s.machine_busy_pct >= CORES_BOUND_PCT), None)
    steps = []
    for a, b in itertools.pairwise(sizes):
        speed_up = b.rate / a.rate if a.rate else 0.0
        per_doubling = speed_up ** (1 / math.log2(b.workers / a.workers))
        steps.append(Step(a.workers, b.workers, speed_up, per_doubling,
                          bound is None or b.workers < bound))
    judged = [s for s in steps if s.judged]
    return bound, steps, bool(judged) and all(
        s.per_doubling >= GOAL_PER_DOUBLING for s in judged)


def table(opts: Options, sizes: list[Size], steps: list[Step]) -> list[str]:
    lines = [f"{'workers':>7} {'slots':>5} {'jobs/s':>8} {'of bound':>8} {'speed-up':>8} "
             f"{'worker ms/job':>13} {'all ms/job':>10} {'machine busy':>12} {'ours':>5} "
             f"{'not ours':>8}"]
    into = {s.after: s for s in steps}
    for size in sizes:
        step = into.get(size.workers)
        speed = f"{step.speed_up:.2f}x" if step else "-"
        lines.append(f"{size.workers:>7} {size.slots:>5} {size.rate:>8.1f} "
                     f"{100 * size.share_of_bound(opts.latency_ms):>7.0f}% {speed:>8} "
                     f"{size.worker_ms_per_job:>13.2f} {size.ours_ms_per_job:>10.2f} "
                     f"{size.machine_busy_pct:>11.0f}% {size.ours_pct:>4.0f}% "
                     f"{size.other_pct:>7.0f}%")
    lines.append("")
    for size in sizes:
        cpu = ", ".join(f"{k} {v:.0f}" for k, v in size.cpu_pct.items() if k != "api")
        errors = f"; errors {dict(size.error_kinds)}" if size.errors else ""
        lines.append(f"  {size.workers} worker(s): {size.jobs} jobs, {size.provider_calls} "
                     f"provider calls in {size.seconds:.1f} s; "
                     f"cpu % of one core: {cpu}{errors}")
        if size.other_pct > BUSY_OTHER_PCT:
            lines.append(f"    note: work not ours used {size.other_pct:.0f}% of the machine")
    return lines


def conclusions(opts: Options, sizes: list[Size]) -> list[str]:
    bound, steps, met = verdicts(sizes)
    lines = [f"cores the limit: from {bound} worker(s) on (machine >= {CORES_BOUND_PCT:g}% "
             "busy, other work on it included)" if bound else
             f"cores the limit: not reached (machine < {CORES_BOUND_PCT:g}% busy at every size)"]
    last = sizes[-1]
    if last.jobs and last.ours_ms_per_job:
        capacity = (os.cpu_count() or 1) * 1000 / last.ours_ms_per_job
        per_worker = opts.concurrency / (opts.latency_ms / 1000) if opts.latency_ms else 0
        at = f"{capacity / per_worker:.1f} workers" if per_worker else "-"
        lines.append(f"projected, the machine ours alone: {last.ours_ms_per_job:.1f} ms of CPU "
                     f"per job (all our processes, at {last.workers} worker(s)) -> at most "
                     f"{capacity:.0f} jobs/s on {os.cpu_count()} cores; the slot bound "
                     f"({per_worker:.0f} jobs/s per worker) reaches it at about {at}")
    every = ", ".join(f"{s.before}->{s.after} {s.per_doubling:.2f}x"
                      f"{'' if s.judged else ' (cores bound, not judged)'}" for s in steps)
    judged = [s for s in steps if s.judged]
    lines.append(f"goal >= {GOAL_PER_DOUBLING:g}x per doubling before the cores bind: "
                 f"{every or 'one size only'}: "
                 f"{('met' if met else 'NOT met') if judged else 'no step to judge'}")
    return lines


def render(opts: Options, sizes: list[Size], ledger: str) -> str:
    how = ("one shared FleetClient (concurrent submits gathered into batch messages)"
           if opts.shared_client else "single jobs, a FleetClient per thread (submit -> get)")
    head = (f"llmfleet scale-out: {os.cpu_count()} CPUs, loopback, simulator at "
            f"{opts.latency_ms:g} ms, {opts.concurrency} slots per worker, "
            f"{opts.in_flight_per_slot:g} client threads per slot, {opts.seconds:g} s per "
            f"size, {how}")
    _, steps, _ = verdicts(sizes)
    return "\n".join([head, "", *table(opts, sizes, steps), "", *conclusions(opts, sizes),
                      ledger])


def parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        epilog=(__doc__ or "").split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--sizes", default="1,2,4", help="worker processes per step, comma-separated; run "
        "in ascending order")
    add("--concurrency", type=int, default=16, help="slots (pool threads) per worker process")
    add("--latency-ms", type=float, default=500.0, help="the simulator's answer delay")
    add("--seconds", type=float, default=30.0, help="measured window per size")
    add("--warm-up", type=float, default=8.0, help="untimed seconds of load before each window")
    add("--in-flight-per-slot", type=float, default=2.0,
        help="client threads per slot (more than 1, so that the queue never runs dry)")
    add("--shared-client", action="store_true",
        help="one FleetClient for every client thread: jobs submitted at the same moment "
        "travel together as batch messages, so --concurrency no longer bounds a process")
    add("--tier", default="simple", help="the tier the jobs go to")
    add("--redis-db", type=int, default=15, help="db used (and flushed) when REDIS_URL is set")
    add("--json", action="store_true", help="print JSON on stdout (the table on stderr)")
    ns = parser.parse_args(argv)
    try:
        sizes = sorted({int(v) for v in ns.sizes.split(",") if v.strip()})
    except ValueError:
        parser.error("--sizes takes whole numbers, e.g. 1,2,4")
    if not sizes or sizes[0] < 1:
        parser.error("--sizes needs at least one size, each at least 1")
    if ns.concurrency < 1 or ns.seconds <= 0 or ns.warm_up < 0 or ns.in_flight_per_slot <= 0:
        parser.error("--concurrency at least 1, --seconds and --in-flight-per-slot over 0")
    return Options(sizes=sizes, concurrency=ns.concurrency, latency_ms=ns.latency_ms,
                   seconds=ns.seconds, warm_up_s=ns.warm_up,
                   in_flight_per_slot=ns.in_flight_per_slot,
                   shared_client=ns.shared_client, tier=ns.tier,
                   redis_db=ns.redis_db, as_json=ns.json)


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    done = interruptible(lambda: run_sizes(opts))
    if done is None:
        return 130
    sizes, ledger = done
    table = render(opts, sizes, ledger)
    if not opts.as_json:
        print(table)
        return 0
    log(table)
    config = {k: v for k, v in asdict(opts).items() if k != "as_json"}
    bound, steps, met = verdicts(sizes)
    goals = {"cores_bound_at": bound, "goal_met": met, "goal_per_doubling": GOAL_PER_DOUBLING,
             "steps": [asdict(s) for s in steps]}
    print(json.dumps({"config": config, "cpus": os.cpu_count(), "goals": goals,
                      "ledger": ledger,
                      "sizes": [s.to_json(opts.latency_ms) for s in sizes]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
