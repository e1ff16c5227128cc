"""Measuring a benchmark phase: closed loops of calls, round trips, and what each
phase cost in CPU, Redis commands and worker log lines. Used by ``throughput.py``."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import redis

CPU_GROUPS = ("client", "workers", "simulator", "redis", "postgres", "other")
_LOG_LINE = re.compile(r" (WARNING|ERROR|CRITICAL) (.*)$")
_IDS = re.compile(r"[0-9a-f]{16,}")
T = TypeVar("T")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def interruptible(body: Callable[[], T]) -> T | None:
    """``body()``, stopped by Ctrl-C or SIGTERM alike: None then (each benchmark's own
    clean-up has stopped what it started by the time this returns)."""
    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        return body()
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped")
        return None


@dataclass
class Phase:
    """One measured phase: jobs, errors, wall time, latencies, and what it cost."""

    name: str
    jobs: int = 0
    errors: int = 0
    seconds: float = 0.0
    cut: bool = False  # stopped by --phase-limit before its jobs were done
    latencies_ms: list[float] = field(default_factory=list)  # per call (a job or a batch)
    error_kinds: Counter[str] = field(default_factory=Counter)
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core
    redis_commands: int = 0
    worker_log: Counter[str] = field(default_factory=Counter)  # warnings and errors

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_job(self) -> float:
        """CPU of the processes under test per job: steadier than jobs/s on a busy box."""
        ours = sum(v for k, v in self.cpu.items() if k != "other")
        return ours * self.seconds * 10 / max(self.jobs, 1)

    def group_ms_per_job(self, group: str) -> float:
        """CPU of one group of processes (``CPU_GROUPS``) per job."""
        return self.cpu.get(group, 0.0) * self.seconds * 10 / max(self.jobs, 1)

    def percentile(self, q: int) -> float | None:
        if len(self.latencies_ms) < 2:
            return self.latencies_ms[0] if self.latencies_ms else None
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[q - 1]

    def to_json(self) -> dict[str, Any]:
        return {"jobs": self.jobs, "errors": self.errors, "error_kinds": dict(self.error_kinds),
                "seconds": round(self.seconds, 3), "jobs_per_s": round(self.rate, 1),
                "cut": self.cut, "p50_ms": round_or_none(self.percentile(50)),
                "p99_ms": round_or_none(self.percentile(99)),
                "redis_commands_per_job": round(self.redis_commands / max(self.jobs, 1), 2),
                "cpu_ms_per_job": round(self.cpu_ms_per_job, 3),
                "worker_log": dict(self.worker_log.most_common(10)),
                "cpu_pct": {k: round(v, 1) for k, v in self.cpu.items()}}


def round_or_none(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class Observer:
    """What a phase cost: CPU seconds of this process, the children, Redis (its INFO)
    and Postgres, the rest of the machine; Redis commands; the workers' log lines."""

    def __init__(self, redis_url: str, postgres_pid: int, log_dir: Path) -> None:
        self._redis = redis.Redis.from_url(redis_url)
        self._postgres = postgres_pid
        self._log_dir = log_dir
        self.pids: dict[str, list[int]] = {"workers": [], "simulator": []}
        self._tick = os.sysconf("SC_CLK_TCK")

    def _proc(self, pid: int, reaped: bool = False) -> float:
        """CPU seconds of ``pid`` (and of the children it has reaped, if ``reaped``)."""
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return 0.0
        return sum(int(v) for v in fields[11:15 if reaped else 13]) / self._tick

    def _postgres_tree(self) -> float:
        """The postmaster and its backends (live ones here, gone ones in its counts)."""
        if not self._postgres:
            return 0.0
        try:
            kids = Path(f"/proc/{self._postgres}/task/{self._postgres}/children").read_text()
        except OSError:
            kids = ""
        backends = sum(map(self._proc, map(int, kids.split())))
        return self._proc(self._postgres, reaped=True) + backends

    def _machine(self) -> float:
        try:
            values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return 0.0
        return (sum(values) - values[3] - values[4]) / self._tick  # minus idle and iowait

    def _cpu(self) -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        try:
            info = self._redis.info("cpu")
            redis_s = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        except redis.RedisError:
            redis_s = 0.0
        known = {"client": usage.ru_utime + usage.ru_stime,
                 "workers": sum(map(self._proc, self.pids["workers"])),
                 "simulator": sum(map(self._proc, self.pids["simulator"])),
                 "redis": redis_s, "postgres": self._postgres_tree()}
        return {**known, "other": self._machine() - sum(known.values())}

    def _commands(self) -> int:
        try:
            stats = self._redis.info("commandstats")
        except redis.RedisError:
            return 0
        return sum(int(v["calls"]) for v in stats.values())

    def _log_sizes(self) -> dict[Path, int]:
        return {p: p.stat().st_size for p in self._log_dir.glob("*.log")}

    def _new_log_lines(self, sizes: dict[Path, int]) -> Counter[str]:
        found: Counter[str] = Counter()
        for path in self._log_dir.glob("*.log"):
            with path.open("rb") as handle:
                handle.seek(sizes.get(path, 0))
                for line in handle.read().decode("utf-8", "replace").splitlines():
                    match = _LOG_LINE.search(line)
                    if match:
                        found[f"{match[1]} {_IDS.sub('…', match[2])[:110]}"] += 1
        return found

    @contextlib.contextmanager
    def measure(self, phase: Phase) -> Iterator[None]:
        cpu, commands, sizes = self._cpu(), self._commands(), self._log_sizes()
        started = time.perf_counter()
        try:
            yield
        finally:
            wall = time.perf_counter() - started
            after = self._cpu()
            phase.cpu = {k: 100 * (after[k] - cpu[k]) / wall for k in CPU_GROUPS if wall}
            phase.redis_commands = self._commands() - commands
            phase.worker_log = self._new_log_lines(sizes)


Call = Callable[[], tuple[int, int]]  # one unit (a job or a batch): (ok, failed) jobs


def _timed(phase: Phase, call: Call, lock: threading.Lock) -> None:
    started = time.perf_counter()
    try:
        ok, failed = call()
    except Exception as exc:  # counted and shown; the phase goes on
        ok, failed = 0, 1
        with lock:
            phase.error_kinds[type(exc).__name__] += 1
    elapsed_ms = (time.perf_counter() - started) * 1000
    with lock:
        phase.jobs += ok
        phase.errors += failed
        if ok:
            phase.latencies_ms.append(elapsed_ms)


def closed_loop(phase: Phase, call: Call, units: int, threads: int, limit_s: float) -> Phase:
    """``threads`` threads run ``call`` back to back until ``units`` have run: a constant
    number of units in flight, as agents that wait for their answers keep them."""
    lock, stop = threading.Lock(), threading.Event()
    left = [units]
    end = time.monotonic() + limit_s

    def take() -> bool:
        with lock:
            if left[0] <= 0 or stop.is_set():
                return False
            left[0] -= 1
            return True

    def loop() -> None:
        while take():
            _timed(phase, call, lock)
            if time.monotonic() > end:
                phase.cut = True
                stop.set()

    started = time.perf_counter()
    pool = [threading.Thread(target=loop, daemon=True, name=f"bench-{i}") for i in range(threads)]
    for thread in pool:
        thread.start()
    try:
        for thread in pool:
            while thread.is_alive():  # a timed join, so that Ctrl-C gets through
                thread.join(0.2)
    finally:
        stop.set()
    phase.seconds = time.perf_counter() - started
    return phase


def round_trips(phase: Phase, call: Call, samples: int, limit_s: float) -> Phase:
    """One job at a time, submit to result: the latency of an idle system."""
    lock, started = threading.Lock(), time.perf_counter()
    for _ in range(samples):
        _timed(phase, call, lock)
        if time.perf_counter() - started > limit_s:
            phase.cut = True
            break
    phase.seconds = time.perf_counter() - started
    return phase
