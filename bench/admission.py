"""Admission: provider quotas, fleet-wide rate limits, priorities and parked jobs: one run.

    python bench/admission.py [--phase quota|exact|priority|threads ...] [--jobs 2000]
                              [--backlog 5000] [--no-api] [--json]

Everything listens on loopback only, as in the other benchmarks (``bench/_rig.py``): per
phase, an embedded Redis and Postgres in a temp directory (or REDIS_URL with a dedicated
db, ``--redis-db``, flushed before and after; or DATABASE_URL, already migrated), the
provider simulator as its own process enforcing quotas as a provider does (a sliding
window, 429 with Retry-After past it), real worker processes, and a fleet file of the
phase's own (``LLMFLEET_CONFIG``): one OpenAI-format provider, models with or without an
``rpm`` quota, ``[[limits]]``. Phases, each its own fleet (``--phase`` picks):

quota     The simulator holds a model to ``--quota-rpm`` (600) requests over a sliding
          ``--quota-window`` (60 s); the fleet file gives the model the same ``rpm``
          (or ``--fleet-rpm``, to try some headroom).
          ``--jobs`` (2,000) jobs from ``--agents`` (4) agents, each submitting its share
          at once, through ``--quota-workers`` (3) worker processes. Goals: 0 provider
          429s; throughput at least 95% of the quota; every job answered; one ledger row
          per job. Beside them: when the 429s came, the most requests the simulator
          admitted in any 60 s (1 s samples), the fleet's limit counters ("not yet":
          a parked job asking again), Redis commands and CPU per job.
exact     A ``[[limits]]`` of ``--exact-rpm`` (10) requests per minute, mode reject, on
          one agent; ``--exact-jobs`` (64) jobs at once through two worker processes,
          half with ``FleetClient`` and half through two ``llmfleet api`` processes with
          a fleet key of that agent (``--no-api``: all through the client). Goal:
          exactly ``--exact-rpm`` admitted, the rest RateLimitedError (client) or 429
          (API), nothing else.
priority  One tier, the simulator at ``--latency-ms`` (50), one worker of
          ``--priority-concurrency`` (64) threads. ``--high-samples`` (50) high-priority
          jobs one at a time on the idle fleet; again while as many agents as threads
          keep a low job in flight each (the worker busy, nothing queued: the control);
          then ``--backlog`` (5,000) low-priority jobs submitted at once, and the same
          high jobs one at a time while the backlog drains. Goal: their p95 behind the
          backlog within 1.5x of the idle p95.
threads   A model with a small quota (``--threads-rpm``, 120) and one without, one
          worker of ``--threads-concurrency`` (8) threads. ``--threads-jobs`` (100) jobs
          on the quota model at once; while they wait, every second: the worker's
          threads (psutil), Celery's active tasks (``inspect().active()``), the parked
          jobs, and one job on the model without quota, timed. Goals: the waiting jobs
          hold no thread (active tasks below the concurrency; at most 2 threads more
          than before, which the fleet starts once, not one per waiting job), the
          unlimited job answered promptly (p95 under 1 s; its idle p50 beside it), then
          every quota job answered with 0 provider 429s.

Beside each phase: CPU of every process in % of one core ("other" is the rest of the
machine: above 25%, timings are low bounds), Redis commands per job, and the warnings
and errors the workers logged. About 6 minutes with the defaults (the quota phase alone
takes ``--jobs`` x 60 / ``--quota-rpm`` seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the project and bench importable
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
import redis  # noqa: E402
from celery import Celery  # noqa: E402

from bench._measure import Phase, closed_loop, interruptible, log  # noqa: E402
from bench._rig import GROUPS, Rig, ledger_rows, percentile, rig  # noqa: E402
from schemas import FleetError  # noqa: E402
from schemas.keys import LIMIT_STATS, PARKED  # noqa: E402
from tasks import FleetClient  # noqa: E402
from tasks.celery_config import celery_settings  # noqa: E402
from tasks.handles import JobHandle  # noqa: E402
from tasks.names import queue_for  # noqa: E402

PHASES = ("quota", "exact", "priority", "threads")
GOAL_QUOTA_SHARE = 0.95
GOAL_PRIORITY_RATIO = 1.5
GOAL_PROMPT_S = 1.0
#: Threads a worker may start once for its own work (the parked jobs' mover sends
#: through a thread of the loop's executor), against one per waiting job if they held any.
GOAL_EXTRA_THREADS = 2
BUSY_OTHER_PCT = 25.0
_TOPICS = ("release notes", "login timeouts", "billing export", "search ranking",
           "cache warm-up", "nightly backups", "audit trail", "webhook retries")


@dataclass
class Options:
    phases: list[str]
    jobs: int
    agents: int
    quota_rpm: int
    fleet_rpm: int
    quota_window_s: float
    quota_workers: int
    concurrency: int
    exact_jobs: int
    exact_rpm: int
    api: bool
    backlog: int
    high_samples: int
    latency_ms: float
    priority_concurrency: int
    threads_jobs: int
    threads_rpm: int
    threads_concurrency: int
    redis_db: int
    as_json: bool


@dataclass
class Result:
    """One phase: its figures (for --json), the lines that show them, its goals."""

    name: str
    title: str
    figures: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    goals: list[dict[str, Any]] = field(default_factory=list)
    phase: Phase | None = None

    def goal(self, what: str, value: str, goal: str, met: bool) -> None:
        self.goals.append({"what": what, "value": value, "goal": goal, "met": met})

    def to_json(self) -> dict[str, Any]:
        cost = None if self.phase is None else {
            "seconds": round(self.phase.seconds, 2),
            "cpu_pct": {k: round(v, 1) for k, v in self.phase.cpu.items()},
            "redis_commands": self.phase.redis_commands,
            "worker_log": dict(self.phase.worker_log.most_common(10))}
        return {"title": self.title, "figures": self.figures, "goals": self.goals,
                "cost": cost}


# -- the fleet ------------------------------------------------------------------------------


def fleet_file(directory: Path, name: str, tiers: dict[str, list[str]],
               quotas: dict[str, int] | None = None,
               limits: list[dict[str, Any]] | None = None) -> Path:
    """A fleet file of one OpenAI-format provider (the simulator stands in for it), the
    tiers' models (``rpm`` from ``quotas``) and ``limits``; the first tier is the default."""
    quotas = quotas or {}
    lines = [f"default_tier = {json.dumps(next(iter(tiers)))}", "default_max_tokens = 64", "",
             "[providers.sim]", 'kind = "openai"',
             'base_url = "http://127.0.0.1:9/v1"  # LLMFLEET_SIMULATOR_URL replaces it', ""]
    for model in sorted({m for chain in tiers.values() for m in chain}):
        lines += [f"[models.{json.dumps(model)}]", 'provider = "sim"', "input_per_mtok = 0.15",
                  "output_per_mtok = 0.60", "context_window = 128000"]
        if model in quotas:
            lines.append(f"rpm = {quotas[model]}")
        lines.append("")
    for tier, chain in tiers.items():
        lines += [f"[tiers.{tier}]", f"models = {json.dumps(chain)}", ""]
    for limit in limits or []:
        lines += ["[[limits]]", *(f"{k} = {json.dumps(v)}" for k, v in limit.items()), ""]
    path = directory / f"{name}.toml"
    path.write_text("\n".join(lines), "utf-8")
    return path


def add_workers(r: Rig, tiers: str, count: int, concurrency: int) -> None:
    """``count`` more worker processes beside the rig's one; stopped with the rig."""
    for i in range(2, count + 2):
        r.sup.start(f"worker-{i}", ["worker", "--tiers", tiers, "--concurrency",
                                    str(concurrency), "--loglevel", "WARNING",
                                    "--hostname", f"bench-admission-{i}@%h"])
    with control_app(r) as control:
        r.sup.wait_for_workers(control, count + 1, timeout=90)
    r.observer.pids["workers"] = [p.pid for n, p in r.sup.children.items()
                                  if n.startswith("worker")]


@contextlib.contextmanager
def control_app(r: Rig) -> Iterator[Celery]:
    control = Celery("bench-admission-control", set_as_current=False)
    control.conf.update(celery_settings(r.found.redis_url, r.found.redis_url, r.fleet))
    try:
        yield control
    finally:
        control.close()


def prompt(run: str, kind: str, n: int) -> list[dict[str, str]]:
    text = f"Job {run}-{kind}{n}: summarise the {_TOPICS[n % len(_TOPICS)]} of component {n}."
    return [{"role": "user", "content": text}]


def fleet_counters(r: Rig) -> dict[str, int]:
    """The fleet's limit and quota counters (``<name>:admitted|delayed|rejected``)."""
    client = redis.Redis.from_url(r.found.redis_url, decode_responses=True)
    with contextlib.closing(client):
        return {str(k): int(v) for k, v in sorted(client.hgetall(LIMIT_STATS).items())}


def parked_now(r: Rig) -> int:
    client = redis.Redis.from_url(r.found.redis_url)
    with contextlib.closing(client):
        return int(client.zcard(PARKED))


def warm_up(client: FleetClient, tier: str, run: str, jobs: int = 8,
            threads: int = 4) -> None:
    """``jobs`` jobs from ``threads`` agents at once (so that many pool threads start)."""
    def one() -> tuple[int, int]:
        n = next(serial)
        client.submit(prompt(run, "w", n), tier=tier, agent="bench-warm",
                      cache="skip").get(timeout=60)
        return 1, 0

    serial = iter(range(jobs))
    closed_loop(Phase("warm-up"), one, jobs, min(jobs, threads), 60)


@dataclass
class Tally:
    """Answers and errors of jobs waited for from many threads; when the last came."""

    answered: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    last: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self, handles: list[JobHandle], timeout: float) -> None:
        for handle in handles:
            error = None
            try:
                handle.get(timeout=timeout)
            except FleetError as exc:
                error = type(exc).__name__
            with self.lock:
                self.answered += error is None
                if error is not None:
                    self.errors[error] += 1
                self.last = time.perf_counter()

    def line(self, jobs: int) -> str:
        return f"answered {self.answered} of {jobs}; errors {dict(self.errors) or 'none'}"


class SimSampler:
    """What the simulator admitted and what its quotas refused (429), every second."""

    def __init__(self, r: Rig) -> None:
        self._r, self._stop = r, threading.Event()
        self.samples: list[tuple[float, int, int]] = []  # (when, admitted, refused)
        self._thread = threading.Thread(target=self._run, daemon=True, name="sim-sampler")

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, ValueError):
                stats = self._r.sim_stats()
                refused = sum(stats["quota_rejected"].values())
                self.samples.append((time.monotonic(), stats["requests"] - refused, refused))
            self._stop.wait(1.0)

    def __enter__(self) -> SimSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, window_s: float) -> int:
        """The most requests admitted within any ``window_s`` (at the samples' grain)."""
        best, start = 0, 0
        for t_end, n_end, _ in self.samples:
            while self.samples[start][0] < t_end - window_s:
                start += 1
            best = max(best, n_end - self.samples[start][1])
        return best

    def refusals(self) -> str:
        """When the 429s came: the first and the last second, and how many per minute."""
        if not self.samples or not self.samples[-1][2]:
            return "none"
        t0 = self.samples[0][0]
        seen = [(t - t0, n) for t, _, n in self.samples]
        first = next(t for t, n in seen if n)
        last = next(t for t, n in seen if n == seen[-1][1])
        minutes = [max((n for t, n in seen if t <= 60 * (m + 1)), default=0)
                   for m in range(int(seen[-1][0] // 60) + 1)]
        per_minute = [b - a for a, b in zip([0, *minutes], minutes, strict=False)]
        return (f"the first by {first:.0f} s, the last by {last:.0f} s; per minute of the "
                f"run {per_minute}")


# -- phase: quota ---------------------------------------------------------------------------


def phase_quota(opts: Options, directory: Path) -> Result:
    model, tier, run = "bench-quota", "quota", uuid.uuid4().hex[:8]
    rate_s = opts.quota_rpm / 60
    expected_s = opts.jobs / rate_s
    timeout = min(3600.0, expected_s * 1.5 + 60)
    out = Result("quota", f"{opts.jobs} jobs from {opts.agents} agents, {opts.quota_workers} "
                 f"worker processes x {opts.concurrency} threads; the provider's quota "
                 f"{opts.quota_rpm}/min over a sliding {opts.quota_window_s:g} s, rpm "
                 f"{opts.fleet_rpm} in the fleet file; simulator {opts.latency_ms:g} ms")
    path = fleet_file(directory, "quota", {tier: [model]}, quotas={model: opts.fleet_rpm})
    sim = {"quota_rpm": {model: opts.quota_rpm}, "quota_window_s": opts.quota_window_s}
    agents = [f"bench-quota-{run}-{i}" for i in range(opts.agents)]
    shares = [range(i, opts.jobs, opts.agents) for i in range(opts.agents)]
    tally = Tally()
    with rig(agent=agents[0], tier=tier, concurrency=opts.concurrency, sim_config=sim,
             latency_ms=opts.latency_ms, redis_db=opts.redis_db,
             env_extra={"LLMFLEET_CONFIG": str(path)}) as r:
        add_workers(r, tier, opts.quota_workers - 1, opts.concurrency)
        r.sim_reset()

        def agent(i: int) -> None:
            client = r.client()
            tally.wait([client.submit(prompt(run, f"a{i}-", n), tier=tier, agent=agents[i],
                                      timeout=timeout, cache="skip") for n in shares[i]],
                       timeout + 30)

        log(f"quota: {opts.jobs} jobs at {opts.quota_rpm}/min: about {expected_s:.0f} s")
        phase = Phase("quota")
        with r.observer.measure(phase), SimSampler(r) as sampler:
            started = time.perf_counter()
            pool = [threading.Thread(target=agent, args=(i,), daemon=True)
                    for i in range(opts.agents)]
            for thread in pool:
                thread.start()
            for thread in pool:
                while thread.is_alive():
                    thread.join(0.5)
                    r.check_alive()
        stats, counters, parked = r.sim_stats(), fleet_counters(r), parked_now(r)
        rows = [ledger_rows(r.found, a, len(shares[i])) for i, a in enumerate(agents)]
    out.phase = phase
    elapsed = tally.last - started
    rejected = int(stats["quota_rejected"].get(model, 0))
    share = tally.answered / elapsed / rate_s if elapsed > 0 else 0.0
    peak, asked = sampler.peak(60.0), counters.get(f"model:{model}:delayed", 0)
    out.figures = {"answered": tally.answered, "errors": dict(tally.errors),
                   "seconds": round(elapsed, 2), "share_of_quota": round(share, 4),
                   "provider_429s": rejected, "provider_by_status": stats["by_status"],
                   "provider_429s_when": sampler.refusals(),
                   "peak_admitted_in_60s": peak, "fleet_counters": counters,
                   "parked_at_end": parked,
                   "redis_commands_per_job": round(phase.redis_commands / opts.jobs, 1),
                   "ledger": [{"rows": x.rows, "ok": x.ok, "by_status": x.by_status}
                              for x in rows]}
    out.lines += [
        tally.line(opts.jobs),
        f"first submit to last answer {elapsed:.1f} s: {tally.answered / elapsed:.2f} jobs/s "
        f"= {100 * share:.1f}% of the quota ({rate_s:.2f}/s)",
        f"provider: by status {stats['by_status']}; quota 429s {rejected}: "
        f"{sampler.refusals()}",
        f"the most the provider admitted in any 60 s (1 s samples): {peak} (quota "
        f"{opts.quota_rpm})",
        f"the fleet: {asked} decisions 'not yet' ({asked / opts.jobs:.1f} per job), "
        f"{phase.redis_commands / opts.jobs:.0f} Redis commands per job; counters {counters};"
        f" parked at the end {parked}",
        *(f"agent {i}: {row.line()}" for i, row in enumerate(rows))]
    out.goal("provider 429s", str(rejected), "0", rejected == 0)
    out.goal("throughput, share of the quota", f"{100 * share:.1f}%",
             f">= {100 * GOAL_QUOTA_SHARE:g}%", share >= GOAL_QUOTA_SHARE)
    out.goal("every job answered", f"{tally.answered}/{opts.jobs}", "all",
             tally.answered == opts.jobs)
    out.goal("ledger, one row per job", f"{sum(x.rows for x in rows)} rows", f"{opts.jobs}",
             all(x.ok for x in rows))
    return out


# -- phase: exact ---------------------------------------------------------------------------


def phase_exact(opts: Options, directory: Path) -> Result:
    tier, run = "exact", uuid.uuid4().hex[:8]
    agent = f"bench-exact-{run}"
    via_api = opts.exact_jobs // 2 if opts.api else 0
    out = Result("exact", f"[[limits]] rpm {opts.exact_rpm}, mode reject, scope agent; "
                 f"{opts.exact_jobs} jobs at once ({opts.exact_jobs - via_api} FleetClient, "
                 f"{via_api} HTTP API on 2 processes), 2 worker processes x 32 threads")
    limit = {"name": "bench-exact", "scope": f"agent:{agent}", "rpm": opts.exact_rpm,
             "mode": "reject"}
    path = fleet_file(directory, "exact", {tier: ["bench-free"]}, limits=[limit])
    outcomes: Counter[str] = Counter()
    retry_after: list[float] = []  # RateLimitedError's
    api_retry_after: list[float] = []  # the API's 429s' header
    with rig(agent=agent, tier=tier, concurrency=32, sim_config={}, latency_ms=opts.latency_ms,
             api_processes=2 if via_api else 0, redis_db=opts.redis_db,
             env_extra={"LLMFLEET_CONFIG": str(path)}) as r:
        add_workers(r, tier, 1, 32)
        client = r.client()
        warm_up(client, tier, run)
        r.sim_reset()
        gate = threading.Barrier(opts.exact_jobs)
        lock = threading.Lock()

        def by_client(n: int) -> None:
            gate.wait()
            try:
                client.submit(prompt(run, "c", n), tier=tier, agent=agent,
                              cache="skip").get(timeout=60)
                seen = "admitted"
            except FleetError as exc:
                seen = f"client {type(exc).__name__}"
                if type(exc).__name__ == "RateLimitedError":
                    with lock:
                        retry_after.append(float(getattr(exc, "retry_after", None) or 0))
            with lock:
                outcomes[seen] += 1

        def by_api(n: int, http: httpx.Client) -> None:
            body = {"model": tier, "messages": prompt(run, "h", n), "max_tokens": 64}
            gate.wait()
            try:
                answer = http.post("/v1/chat/completions", json=body)
                code = (answer.json().get("error") or {}).get("code") \
                    if answer.status_code != 200 else None
                seen = "admitted" if answer.status_code == 200 else \
                    f"API {answer.status_code} {code}"
                waits = answer.headers.get("retry-after")
            except (httpx.HTTPError, ValueError) as exc:
                seen, waits = f"API {type(exc).__name__}", None
            with lock:
                outcomes[seen] += 1
                if waits is not None:
                    api_retry_after.append(float(waits))

        log(f"exact: {opts.exact_jobs} jobs at once against a limit of {opts.exact_rpm}/min")
        phase = Phase("exact")
        headers = {"Authorization": f"Bearer {r.key}"} if r.key else {}
        with r.observer.measure(phase), httpx.Client(base_url=r.api or "http://127.0.0.1:9",
                                                     headers=headers, timeout=90,
                                                     limits=httpx.Limits(max_connections=128)
                                                     ) as http:
            pool = [threading.Thread(target=by_client, args=(n,), daemon=True)
                    for n in range(opts.exact_jobs - via_api)]
            pool += [threading.Thread(target=by_api, args=(n, http), daemon=True)
                     for n in range(via_api)]
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join(120)
        stats, counters = r.sim_stats(), fleet_counters(r)
        rows = ledger_rows(r.found, agent, opts.exact_jobs)
    out.phase = phase
    admitted = outcomes["admitted"]
    refused = sum(v for k, v in outcomes.items()
                  if k == "client RateLimitedError" or k.startswith("API 429"))
    other = opts.exact_jobs - admitted - refused
    out.figures = {"outcomes": dict(outcomes), "admitted": admitted, "refused": refused,
                   "other": other, "provider_requests": stats["requests"],
                   "retry_after_s": [min(retry_after, default=None),
                                     max(retry_after, default=None)],
                   "api_retry_after_s": sorted(set(api_retry_after)),
                   "fleet_counters": counters,
                   "ledger": {"rows": rows.rows, "ok": rows.ok, "by_status": rows.by_status}}
    out.lines += [
        f"outcomes {dict(sorted(outcomes.items()))}",
        f"provider requests {stats['requests']} (by status {stats['by_status']}); "
        f"RateLimitedError retry_after {min(retry_after, default=0):.1f} to "
        f"{max(retry_after, default=0):.1f} s; the API's Retry-After "
        f"{sorted(set(api_retry_after)) or 'none'}",
        f"fleet counters {counters}",
        rows.line()]
    out.goal("admitted", str(admitted), f"exactly {opts.exact_rpm}", admitted == opts.exact_rpm)
    out.goal("refused (RateLimitedError / 429)", str(refused),
             str(opts.exact_jobs - opts.exact_rpm), refused == opts.exact_jobs - opts.exact_rpm)
    out.goal("any other outcome", str(other), "0", other == 0)
    out.goal("ledger, one row per job", f"{rows.rows} rows", str(opts.exact_jobs), rows.ok)
    return out


# -- phase: priority ------------------------------------------------------------------------


def high_jobs(client: FleetClient, tier: str, run: str, agent: str, samples: int,
              during: Callable[[], bool] = lambda: True) -> tuple[list[float], int]:
    """The same ``samples`` high-priority jobs one at a time, submit to answer, in ms; and
    how many were sent while ``during()`` held (checked before each)."""
    latencies, held = [], 0
    for n in range(samples):
        held += during()
        started = time.perf_counter()
        client.submit(prompt(run, "high", n), tier=tier, priority="high", agent=agent,
                      cache="skip").get(timeout=60)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies, held


def with_busy_worker(client: FleetClient, tier: str, run: str, threads: int,
                     measure: Callable[[], list[float]]) -> list[float]:
    """``measure()`` while ``threads`` agents keep a low job in flight each: the worker
    as busy as in the backlog, with (almost) nothing queued; the control figure."""
    stop = threading.Event()

    def loop(i: int) -> None:
        n = 0
        while not stop.is_set():
            with contextlib.suppress(FleetError):
                client.submit(prompt(run, f"busy{i}-", n), tier=tier, priority="low",
                              agent="bench-busy", cache="skip").get(timeout=60)
            n += 1

    pool = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    try:
        time.sleep(2.0)  # every agent's first job in
        return measure()
    finally:
        stop.set()
        for thread in pool:
            thread.join(60)


def spread(values: list[float]) -> str:
    return (f"p50 {percentile(values, 50) or 0:.1f} ms, p95 {percentile(values, 95) or 0:.1f} "
            f"ms, max {max(values):.1f} ms")


def phase_priority(opts: Options, directory: Path) -> Result:
    tier, run = "prio", uuid.uuid4().hex[:8]
    agent, high = f"bench-priority-{run}", f"bench-priority-high-{run}"
    out = Result("priority", f"{opts.backlog} low-priority jobs, then {opts.high_samples} "
                 f"high ones one at a time; 1 worker x {opts.priority_concurrency} threads, "
                 f"simulator {opts.latency_ms:g} ms")
    path = fleet_file(directory, "priority", {tier: ["bench-free"]})
    low_queue, samples = queue_for(tier, "low"), opts.high_samples
    with rig(agent=agent, tier=tier, concurrency=opts.priority_concurrency, sim_config={},
             latency_ms=opts.latency_ms, redis_db=opts.redis_db,
             env_extra={"LLMFLEET_CONFIG": str(path)}) as r:
        client = r.client()
        warm_up(client, tier, run, 2 * opts.priority_concurrency, opts.priority_concurrency)
        high_jobs(client, tier, "w" + run, high, 10)
        log(f"priority: {samples} high jobs on the idle fleet, then on a busy one")
        idle, _ = high_jobs(client, tier, run, high, samples)
        busy = with_busy_worker(client, tier, run, opts.priority_concurrency,
                                lambda: high_jobs(client, tier, run, high, samples)[0])
        queues = redis.Redis.from_url(r.found.redis_url)
        log(f"priority: {opts.backlog} low jobs, then the same high jobs")
        phase = Phase("priority")
        with r.observer.measure(phase), contextlib.closing(queues):
            started = time.perf_counter()
            lows = [client.submit(prompt(run, "low", n), tier=tier, priority="low",
                                  agent=agent, cache="skip", timeout=600)
                    for n in range(opts.backlog)]
            submitted_s = time.perf_counter() - started
            queued = [int(queues.llen(low_queue))]
            loaded, held = high_jobs(client, tier, run, high, samples,
                                     lambda: int(queues.llen(low_queue)) > 0)
            queued.append(int(queues.llen(low_queue)))
            low = Tally()
            low.wait(lows, 600)
            drained_s = time.perf_counter() - started
        rows = [ledger_rows(r.found, agent, opts.backlog),
                ledger_rows(r.found, high, 10 + 3 * samples)]
    out.phase = phase
    p95_idle, p95_loaded = percentile(idle, 95) or 0.0, percentile(loaded, 95) or 0.0
    ratio = p95_loaded / p95_idle if p95_idle else 0.0
    out.figures = {
        **{f"{name}_ms": {q: round(percentile(v, n) or 0, 2) for q, n in (("p50", 50),
                                                                          ("p95", 95))}
           for name, v in (("idle", idle), ("busy", busy), ("loaded", loaded))},
        "ratio_p95": round(ratio, 3), "samples_under_backlog": held,
        "low_queue_at_first_and_last_high": queued,
        "backlog_submit_s": round(submitted_s, 2), "backlog_drained_s": round(drained_s, 2),
        "low_answered": low.answered, "low_errors": dict(low.errors),
        "ledger": [{"rows": x.rows, "ok": x.ok, "by_status": x.by_status} for x in rows]}
    out.lines += [
        f"high jobs, idle fleet:          {spread(idle)}",
        f"high jobs, busy, none queued:   {spread(busy)} (control: {opts.priority_concurrency}"
        " low jobs in flight, no backlog)",
        f"high jobs, behind the backlog:  {spread(loaded)} ({held} of {len(loaded)} sent with "
        "low jobs queued)",
        f"low queue: {queued[0]} waiting at the first high job, {queued[1]} at the last; "
        f"{opts.backlog} submitted in {submitted_s:.1f} s, all done after {drained_s:.1f} s "
        f"({opts.backlog / drained_s:.0f} jobs/s); {low.line(opts.backlog)}",
        *(x.line() for x in rows)]
    out.goal("high p95 behind the backlog / idle", f"{ratio:.2f}x",
             f"<= {GOAL_PRIORITY_RATIO:g}x", 0 < ratio <= GOAL_PRIORITY_RATIO)
    out.goal("high jobs sent while low ones waited", f"{held}/{len(loaded)}", "all",
             held == len(loaded))
    out.goal("ledger, one row per job", f"{sum(x.rows for x in rows)} rows",
             str(sum(x.expected for x in rows)), all(x.ok for x in rows))
    return out


# -- phase: threads -------------------------------------------------------------------------


def phase_threads(opts: Options, directory: Path) -> Result:
    run = uuid.uuid4().hex[:8]
    agent = f"bench-threads-{run}"
    slow, free = "bench-slow", "bench-free"
    out = Result("threads", f"{opts.threads_jobs} jobs on a model with rpm "
                 f"{opts.threads_rpm}, one worker x {opts.threads_concurrency} threads; "
                 "a model without quota beside it")
    path = fleet_file(directory, "threads", {"slow": [slow], "free": [free]},
                      quotas={slow: opts.threads_rpm})
    sim = {"quota_rpm": {slow: opts.threads_rpm}, "quota_window_s": 60.0}
    timeout = min(3600.0, opts.threads_jobs * 60 / opts.threads_rpm * 1.5 + 60)
    with rig(agent=agent, tier="slow,free", concurrency=opts.threads_concurrency,
             sim_config=sim, latency_ms=opts.latency_ms, redis_db=opts.redis_db,
             env_extra={"LLMFLEET_CONFIG": str(path)}) as r, control_app(r) as control:
        client = r.client()
        warm_up(client, "free", run, 2 * opts.threads_concurrency, opts.threads_concurrency)
        worker = psutil.Process(r.sup.children["worker"].pid)
        baseline_threads = worker.num_threads()
        idle = free_latencies(client, run, "idle", 5)
        r.sim_reset()
        samples: list[dict[str, Any]] = []
        phase = Phase("threads")
        log(f"threads: {opts.threads_jobs} jobs on a quota of {opts.threads_rpm}/min")
        with r.observer.measure(phase):
            started = time.perf_counter()
            handles = [client.submit(prompt(run, "slow", n), tier="slow", agent=agent,
                                     timeout=timeout, cache="skip")
                       for n in range(opts.threads_jobs)]
            for n in range(10):
                time.sleep(max(0.0, started + 1.0 + n - time.perf_counter()))
                active = control.control.inspect(timeout=0.5).active() or {}
                samples.append({
                    "t_s": round(time.perf_counter() - started, 1),
                    "threads": worker.num_threads(),
                    "active": sum(len(tasks) for tasks in active.values()),
                    "parked": parked_now(r),
                    "free_ms": round(free_latencies(client, run, f"s{n}-", 1)[0], 1)})
            tally = Tally()
            tally.wait(handles, timeout + 30)
            done_s = time.perf_counter() - started
        stats, counters = r.sim_stats(), fleet_counters(r)
    out.phase = phase
    rejected = int(stats.get("quota_rejected", {}).get(slow, 0))
    active_max = max(s["active"] for s in samples)
    threads_max = max(s["threads"] for s in samples)
    waiting = [s for s in samples if s["parked"] > 0]
    free_ms = [s["free_ms"] for s in samples]
    free_p95 = percentile(free_ms, 95) or 0.0
    out.figures = {"baseline_threads": baseline_threads, "samples": samples,
                   "idle_free_ms": [round(v, 1) for v in idle], "free_p95_ms": round(free_p95, 1),
                   "answered": tally.answered, "errors": dict(tally.errors),
                   "seconds": round(done_s, 1), "provider_429s": rejected,
                   "provider_by_status": stats["by_status"], "fleet_counters": counters}
    out.lines += [f"worker threads before: {baseline_threads}; the free model idle: "
                  f"{', '.join(f'{v:.0f}' for v in idle)} ms",
                  f"{'t s':>6}{'threads':>9}{'active':>8}{'parked':>8}{'free ms':>9}"]
    out.lines += [f"{s['t_s']:>6}{s['threads']:>9}{s['active']:>8}{s['parked']:>8}"
                  f"{s['free_ms']:>9}" for s in samples]
    asked = counters.get(f"model:{slow}:delayed", 0)
    out.lines += [f"{tally.line(opts.threads_jobs)}, the last after {done_s:.1f} s; provider by "
                  f"status {stats['by_status']}, quota 429s {rejected}",
                  f"the fleet: {asked} decisions 'not yet' ({asked / opts.threads_jobs:.1f} per "
                  f"job), {phase.redis_commands / opts.threads_jobs:.0f} Redis commands per job"]
    out.goal("samples with jobs parked", f"{len(waiting)}/{len(samples)}", "all",
             len(waiting) == len(samples))
    out.goal("active tasks while they wait (max)", str(active_max),
             f"< {opts.threads_concurrency}", active_max < opts.threads_concurrency)
    out.goal("worker threads (max) over before", f"+{threads_max - baseline_threads}",
             f"<= +{GOAL_EXTRA_THREADS}", threads_max - baseline_threads <= GOAL_EXTRA_THREADS)
    out.goal("job without quota meanwhile, p95", f"{free_p95:.0f} ms",
             f"< {GOAL_PROMPT_S * 1000:.0f} ms", free_p95 < GOAL_PROMPT_S * 1000)
    out.goal("every quota job answered", f"{tally.answered}/{opts.threads_jobs}", "all",
             tally.answered == opts.threads_jobs)
    out.goal("provider 429s", str(rejected), "0", rejected == 0)
    return out


def free_latencies(client: FleetClient, run: str, kind: str, count: int) -> list[float]:
    found = []
    for n in range(count):
        started = time.perf_counter()
        client.submit(prompt(run, f"free{kind}", n), tier="free", cache="skip").get(timeout=60)
        found.append((time.perf_counter() - started) * 1000)
    return found


# -- the report -----------------------------------------------------------------------------


def render(opts: Options, results: list[Result]) -> str:
    lines = [f"llmfleet admission: {os.cpu_count()} CPUs, loopback"]
    for one in results:
        lines += ["", f"phase {one.name}: {one.title}"]
        lines += [f"    {line}" for line in one.lines]
        if one.phase is not None:
            cpu = "/".join(f"{one.phase.cpu.get(k, 0):.0f}" for k in GROUPS)
            lines.append(f"    {one.phase.seconds:.1f} s, {one.phase.redis_commands} Redis "
                         f"commands; cpu % {'/'.join(GROUPS)}: {cpu}")
            for message, count in one.phase.worker_log.most_common(3):
                lines.append(f"    worker log x{count}: {message}")
            if one.phase.cpu.get("other", 0) > BUSY_OTHER_PCT:
                lines.append("    note: other work used "
                             f"{one.phase.cpu['other']:.0f}% of a core: timings are low bounds")
        for goal in one.goals:
            lines.append(f"  {goal['what']:<40}{goal['value']:>12}   goal {goal['goal']:<12}"
                         f"  {'met' if goal['met'] else 'NOT met'}")
    return "\n".join(lines)


RUNNERS: dict[str, Callable[[Options, Path], Result]] = {
    "quota": phase_quota, "exact": phase_exact, "priority": phase_priority,
    "threads": phase_threads}


def run(opts: Options) -> int:
    directory = Path(tempfile.mkdtemp(prefix="llmfleet-bench-admission-"))
    results: list[Result] = []
    failed = False
    try:
        for name in opts.phases:
            log(f"== phase {name}")
            try:
                results.append(RUNNERS[name](opts, directory))
            except Exception as exc:  # shown with the others' figures; the next phase runs
                failed = True
                log(f"phase {name} failed: {type(exc).__name__}: {exc}")
                results.append(Result(name, f"FAILED: {type(exc).__name__}: {exc}"))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    table = render(opts, results)
    if not opts.as_json:
        print(table)
        return int(failed)
    log(table)
    config = {k: v for k, v in asdict(opts).items() if k != "as_json"}
    print(json.dumps({"config": config, "cpus": os.cpu_count(),
                      "phases": {r.name: r.to_json() for r in results}}, indent=2, default=str))
    return int(failed)


def parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        epilog=(__doc__ or "").split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--phase", action="append", choices=PHASES, help="run only these (repeatable)")
    add("--jobs", type=int, default=2000, help="quota: jobs")
    add("--agents", type=int, default=4, help="quota: agents, each submitting its share")
    add("--quota-rpm", type=int, default=600, help="quota: the model's requests per minute")
    add("--fleet-rpm", type=int, help="quota: the model's rpm in the fleet file "
        "(default: --quota-rpm)")
    add("--quota-window", type=float, default=60.0, help="quota: the simulator's window, s")
    add("--quota-workers", type=int, default=3, help="quota: worker processes")
    add("--concurrency", type=int, default=16, help="quota: threads per worker")
    add("--exact-jobs", type=int, default=64, help="exact: jobs at once")
    add("--exact-rpm", type=int, default=10, help="exact: the limit, requests per minute")
    add("--no-api", dest="api", action="store_false", help="exact: no HTTP API jobs")
    add("--backlog", type=int, default=5000, help="priority: low-priority jobs queued")
    add("--high-samples", type=int, default=50, help="priority: high jobs, one at a time")
    add("--latency-ms", type=float, default=50.0, help="the simulator's answer delay")
    add("--priority-concurrency", type=int, default=64, help="priority: worker threads")
    add("--threads-jobs", type=int, default=100, help="threads: jobs on the quota model")
    add("--threads-rpm", type=int, default=120, help="threads: that model's quota")
    add("--threads-concurrency", type=int, default=8, help="threads: worker threads")
    add("--redis-db", type=int, default=15, help="db used (and flushed) when REDIS_URL is set")
    add("--json", action="store_true", help="print JSON on stdout (the table on stderr)")
    ns = parser.parse_args(argv)
    if not 0 < ns.quota_window <= 3600 or (ns.fleet_rpm is not None and ns.fleet_rpm < 1):
        parser.error("--quota-window is from 0 to 3600 s, --fleet-rpm at least 1")
    for name in ("jobs", "agents", "quota_rpm", "quota_workers", "concurrency", "exact_jobs",
                 "exact_rpm", "backlog", "high_samples", "priority_concurrency",
                 "threads_jobs", "threads_rpm", "threads_concurrency"):
        if getattr(ns, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if ns.exact_rpm >= ns.exact_jobs:
        parser.error("--exact-jobs must be more than --exact-rpm")
    chosen = ns.phase or list(PHASES)
    return Options(phases=[p for p in PHASES if p in chosen], jobs=ns.jobs, agents=ns.agents,
                   quota_rpm=ns.quota_rpm, fleet_rpm=ns.fleet_rpm or ns.quota_rpm,
                   quota_window_s=ns.quota_window,
                   quota_workers=ns.quota_workers, concurrency=ns.concurrency,
                   exact_jobs=ns.exact_jobs, exact_rpm=ns.exact_rpm, api=ns.api,
                   backlog=ns.backlog, high_samples=ns.high_samples, latency_ms=ns.latency_ms,
                   priority_concurrency=ns.priority_concurrency, threads_jobs=ns.threads_jobs,
                   threads_rpm=ns.threads_rpm, threads_concurrency=ns.threads_concurrency,
                   redis_db=ns.redis_db, as_json=ns.json)


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    code = interruptible(lambda: run(opts))
    return 130 if code is None else code


if __name__ == "__main__":
    sys.exit(main())
