"""What the HTTP API costs over using the fleet directly: one run, same fleet.

    python bench/api.py [--jobs 2000] [--in-flight 64] [--latency-ms 50]
                        [--api-workers 2] [--concurrency 64] [--json]

Starts an embedded Redis and Postgres in a temp directory, the provider simulator as its
own process (answering after ``--latency-ms``), one ``llmfleet worker`` for every tier and
``llmfleet api``. Then, with ``--in-flight`` concurrent clients in a closed loop (each
sends its next request when its last is answered), every prompt unique so no cache
answers:

1. direct: ``FleetClient.acomplete`` from one asyncio loop;
2. http: ``POST /v1/chat/completions`` with a fleet key, from aiohttp (httpx's own async
   transport is the slow one at this concurrency, docs/architecture.md);
3. one request at a time through each path: the latency the HTTP layer adds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from bench._measure import log  # noqa: E402
from bench._simulator import free_port  # noqa: E402
from schemas import Settings, load_config  # noqa: E402
from tasks import FleetClient  # noqa: E402


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what} did not come up within {timeout}s")


def _get(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def closed_loop(call: Callable[[int], Awaitable[None]], jobs: int,
                      in_flight: int) -> tuple[float, list[float], int]:
    """(seconds, latencies in ms, errors) of ``jobs`` calls, ``in_flight`` at a time."""
    counter = iter(range(jobs))
    latencies: list[float] = []
    errors = 0

    async def client() -> None:
        nonlocal errors
        for n in counter:
            start = time.perf_counter()
            try:
                await call(n)
            except Exception:  # counted, the run goes on
                errors += 1
                continue
            latencies.append((time.perf_counter() - start) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(in_flight)))
    return time.perf_counter() - start, latencies, errors


def figures(name: str, seconds: float, latencies: list[float], errors: int) -> dict[str, Any]:
    p50 = statistics.median(latencies) if latencies else None
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) > 2 else None
    return {"phase": name, "jobs": len(latencies), "errors": errors,
            "requests_per_s": round(len(latencies) / seconds, 1),
            "p50_ms": round(p50, 2) if p50 else None, "p99_ms": round(p99, 2) if p99 else None}


async def measure(api: str, key: str, env: dict[str, str], args: argparse.Namespace
                  ) -> list[dict[str, Any]]:
    settings, fleet = load_config(Settings.from_env(env))
    run = uuid.uuid4().hex[:8]
    body = {"model": "simple", "max_tokens": 16}
    results = []
    with FleetClient(redis_url=env["REDIS_URL"], fleet=fleet, settings=settings,
                     agent="bench") as client:
        async def direct(n: int) -> None:
            await client.acomplete([{"role": "user", "content": f"d{run}-{n}"}],
                                   tier="simple", max_tokens=16)

        connector = aiohttp.TCPConnector(limit=args.in_flight * 2)
        async with aiohttp.ClientSession(connector=connector, headers={
                "authorization": f"Bearer {key}"}) as session:
            async def http(n: int) -> None:
                payload = {**body, "messages": [{"role": "user", "content": f"h{run}-{n}"}]}
                async with session.post(f"{api}/v1/chat/completions", json=payload) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"HTTP {r.status}")

            for name, call in (("direct", direct), ("http", http)):
                await closed_loop(call, args.in_flight * 2, args.in_flight)  # warm up
                results.append(figures(f"{name}, {args.in_flight} in flight",
                                       *await closed_loop(call, args.jobs, args.in_flight)))
                log(json.dumps(results[-1]))
            for name, call in (("direct", direct), ("http", http)):
                results.append(figures(f"{name}, one at a time",
                                       *await closed_loop(call, args.sequential, 1)))
                log(json.dumps(results[-1]))
    return results


def start(env: dict[str, str], argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *argv], env=env, stdout=log_path.open("ab"),
                            stderr=subprocess.STDOUT, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from workers.api.keys import create_key
    from workers.devstack.embedded import ensure_stack, stop_stack
    from workers.store.engines import migrate, sync_engine

    data = Path(tempfile.mkdtemp(prefix="llmfleet-bench-api-"))
    info = ensure_stack(data, redis=True, postgres=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        assert info.database_url is not None
        migrate(info.database_url)
        sim_port, api_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        env.update(REDIS_URL=info.redis_url, DATABASE_URL=info.database_url,
                   LLMFLEET_DATA_DIR=str(data),
                   LLMFLEET_SIMULATOR_URL=f"http://127.0.0.1:{sim_port}")
        procs.append(start(env, ["-m", "workers.cli", "simulator", "--port", str(sim_port),
                                 "--latency-ms", str(args.latency_ms)], data / "sim.log"))
        procs.append(start(env, ["-m", "workers.cli", "worker", "--concurrency",
                                 str(args.concurrency), "--loglevel", "WARNING"],
                           data / "worker.log"))
        procs.append(start(env, ["-c", "from workers.cli.api import api_command; "
                                 "api_command()", "--port", str(api_port), "--workers",
                                 str(args.api_workers)], data / "api.log"))
        api = f"http://127.0.0.1:{api_port}"
        wait_for(lambda: _get(f"{api}/api/admin/ml-ops/health") == 200, "the fleet and API")
        key = create_key(sync_engine(info.database_url), "bench", "bench")[1]
        results = asyncio.run(measure(api, key, env, args))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(20)
        stop_stack(data)
    direct, http, direct1, http1 = results
    summary = {"http_over_direct_throughput": round(
        http["requests_per_s"] / direct["requests_per_s"], 3),
        "added_p50_ms_in_flight": round(http["p50_ms"] - direct["p50_ms"], 2),
        "added_p50_ms_one_at_a_time": round(http1["p50_ms"] - direct1["p50_ms"], 2)}
    if args.json:
        print(json.dumps({"phases": results, "summary": summary}, indent=2))
    else:
        for row in results:
            print(f"{row['phase']:<28} {row['requests_per_s']:>8} req/s  p50 {row['p50_ms']} ms"
                  f"  p99 {row['p99_ms']} ms  errors {row['errors']}")
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
