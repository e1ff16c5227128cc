"""Where a single job's cost goes: Redis commands per job by name, and the worker's CPU
by function (py-spy), for one job at a time and for many in flight.

    python bench/single_job.py [--jobs 400] [--in-flight 32] [--profile-s 15] [--json]

One worker process (``--concurrency 64``), the simulator at 0 ms, cache and accounting
on, every prompt unique. Phases: ``--jobs`` jobs one at a time (submit, get), then the
same number from ``--in-flight`` threads. For each: Redis' ``INFO commandstats`` before
and after, divided by the jobs (every command the client, the worker and the flusher
sent); and, for the in-flight phase, a py-spy sample of the worker (when py-spy is on
the PATH and may attach), its hottest functions by own time and by total time.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bench._measure import log  # noqa: E402
from bench._rig import rig  # noqa: E402


def commandstats(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def per_job(before: dict[str, int], after: dict[str, int], jobs: int) -> dict[str, float]:
    diff = {k: (after.get(k, 0) - before.get(k, 0)) / jobs for k in after}
    return dict(sorted(((k, round(v, 2)) for k, v in diff.items() if v >= 0.01),
                       key=lambda kv: -kv[1]))


def one_at_a_time(client: Any, jobs: int, run: str) -> list[float]:
    latencies = []
    for n in range(jobs):
        started = time.perf_counter()
        client.submit(f"single {run} {n}", tier="simple", max_tokens=8).get(30)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def in_flight(client: Any, jobs: int, threads: int, run: str,
              stop: threading.Event | None = None) -> float:
    counter = iter(range(jobs))
    lock = threading.Lock()

    def loop() -> None:
        while stop is None or not stop.is_set():
            with lock:
                n = next(counter, None)
            if n is None:
                return
            client.submit(f"flight {run} {n}", tier="simple", max_tokens=8).get(30)

    started = time.perf_counter()
    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return jobs / (time.perf_counter() - started)


def profile(pid: int, seconds: float, out: Path) -> dict[str, Any] | None:
    """py-spy's raw samples of ``pid`` (all threads), as hottest functions."""
    if shutil.which("py-spy") is None:
        return None
    done = subprocess.run(["py-spy", "record", "--pid", str(pid), "--duration",
                           str(int(seconds)), "--format", "raw", "--output", str(out),
                           "--nonblocking", "--gil", "--rate", "200"],
                          capture_output=True, text=True)
    if done.returncode != 0 or not out.exists():
        log(f"py-spy: {done.stderr.strip()[-300:]}")
        return None
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in out.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        idle = any(marker in frames[-1] for marker in ("select", "poll", "wait", "sleep",
                                                       "acquire", "_worker (concurrent"))
        if idle:
            continue
        samples += count
        own[_short(frames[-1])] += count
        for frame in set(map(_short, frames)):
            total[frame] += count
    if not samples:
        return None
    return {"busy_samples": samples,
            "own": [(f, round(100 * c / samples, 1)) for f, c in own.most_common(25)],
            "total": [(f, round(100 * c / samples, 1)) for f, c in total.most_common(40)]}


def _short(frame: str) -> str:
    """``fn (path/to/module.py:12)`` -> ``fn (module.py)``"""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.rstrip(')').split(':')[0]).name})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--profile-s", type=float, default=15.0)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    report: dict[str, Any] = {}
    with rig(agent="bench-single", tier="simple", concurrency=64, sim_config={},
             latency_ms=0.0) as stack:
        client = stack.client()
        raw = redis.Redis.from_url(stack.found.redis_url)
        run = uuid.uuid4().hex[:8]
        one_at_a_time(client, 50, run + "w")  # warm up
        before = commandstats(raw)
        latencies = one_at_a_time(client, options.jobs, run)
        report["one_at_a_time"] = {
            "p50_ms": round(sorted(latencies)[len(latencies) // 2], 2),
            "redis_per_job": per_job(before, commandstats(raw), options.jobs)}
        before = commandstats(raw)
        rate = in_flight(client, options.jobs * 5, options.in_flight, run)
        report["in_flight"] = {"jobs_per_s": round(rate, 1),
                               "redis_per_job": per_job(before, commandstats(raw),
                                                        options.jobs * 5)}
        if options.profile_s > 0:
            pid = stack.sup.children["worker"].pid
            out = Path(tempfile.mkdtemp()) / "worker.raw"
            stop = threading.Event()
            spinning = threading.Thread(
                target=in_flight, args=(client, 10**7, options.in_flight, run + "p", stop))
            spinning.start()
            time.sleep(1)
            report["profile"] = profile(pid, options.profile_s, out)
            stop.set()
            spinning.join()
        raw.close()
    if options.json:
        print(json.dumps(report, indent=2))
        return 0
    for phase in ("one_at_a_time", "in_flight"):
        data = report[phase]
        head = (f"p50 {data['p50_ms']} ms" if "p50_ms" in data
                else f"{data['jobs_per_s']} jobs/s")
        total = sum(data["redis_per_job"].values())
        print(f"\n{phase}: {head}; Redis commands per job {total:.1f}")
        for name, count in data["redis_per_job"].items():
            print(f"  {name:<24} {count:6.2f}")
    if report.get("profile"):
        print(f"\nworker CPU by function ({report['profile']['busy_samples']} busy samples)")
        print("  own time:")
        for name, share in report["profile"]["own"]:
            print(f"    {share:5.1f}%  {name}")
        print("  total time:")
        for name, share in report["profile"]["total"]:
            print(f"    {share:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
