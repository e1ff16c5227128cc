"""What the response cache buys: a hit's latency, throughput with repeats, semantic costs.

    python bench/cache.py [--jobs 3000] [--repeats 0.55] [--in-flight 64] [--latency-ms 50]
                          [--samples 2000] [--json]

Loopback only: an embedded Redis and Postgres in a temp directory, the provider
simulator as its own process, one real worker process (``--concurrency`` threads).

1. Throughput on a workload where ``--repeats`` of the jobs ask a question asked before
   (the rest are new), ``--in-flight`` client threads each ``submit -> get`` in a loop,
   the simulator at ``--latency-ms``: once with the cache off (worker and client), once
   on. The simulator counts provider calls; "answered at submit" counts the client's
   short-circuit, the other hits are the worker's (mostly repeats still in flight,
   coalesced).
2. Hit latency: one answer cached, then ``submit -> get`` of it, one at a time: the
   short-circuit (one Redis script and one RPUSH of the ledger row), p50/p99.
3. The semantic cache: one lookup's time (HGETALL of a scope, a numpy matrix product) by
   scope size, and false hits on near-miss pairs with the simulator's embeddings.

The simulator process and the log line are shared with the other benchmarks
(``bench/_simulator.py``, ``bench/_measure.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from celery import Celery  # noqa: E402

from bench._measure import log  # noqa: E402
from bench._simulator import sim_request, start_simulator  # noqa: E402
from schemas import (  # noqa: E402
    CacheConfig,
    CompletionJob,
    EmbeddingJob,
    EmbeddingResult,
    Settings,
    Usage,
    load_config,
)
from tasks import FleetClient  # noqa: E402
from tasks.celery_config import celery_settings  # noqa: E402
from workers.devstack.supervisor import Supervisor  # noqa: E402

JOB_TIMEOUT_S = 30.0
PROVIDER_KEYS = ("OPENROUTER_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if values else 0.0


def workload(jobs: int, repeats: float, tag: str) -> list[str]:
    """``jobs`` questions; each is, with probability ``repeats``, one asked before."""
    rng = random.Random(7)
    asked: list[str] = []
    out: list[str] = []
    for i in range(jobs):
        if asked and rng.random() < repeats:
            out.append(rng.choice(asked))
        else:
            asked.append(f"Summarise ticket {tag}-{i} in one line.")
            out.append(asked[-1])
    return out


def closed_loop(call: Any, jobs: int, threads: int) -> tuple[float, list[float], int]:
    """Seconds for ``jobs`` calls from ``threads`` threads back to back, each successful
    call's ms, and the number of calls that raised."""
    lock, left, latencies, errors = threading.Lock(), [jobs], list[float](), [0]

    def loop() -> None:
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            started = time.perf_counter()
            try:
                call()
            except Exception as exc:  # counted and shown; the run goes on
                with lock:
                    errors[0] += 1
                log(f"job failed: {type(exc).__name__}: {exc}")
                continue
            with lock:
                latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    pool = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return time.perf_counter() - started, latencies, errors[0]


# -- the fleet ----------------------------------------------------------------------


def one_setting(opts: argparse.Namespace, cache: bool, url: str, env: dict[str, str],
                sim: str, log_dir: Path) -> dict[str, Any]:
    """The workload with the cache on or off, then (on) the hit latency."""
    settings, fleet = load_config(Settings.from_env(env))
    control = Celery("bench-control", set_as_current=False)
    control.conf.update(celery_settings(url, url, fleet))
    sup = Supervisor(env={**env, "ENABLE_LLM_CACHE": str(cache).lower()}, log_dir=log_dir)
    client = FleetClient(redis_url=url, fleet=fleet, agent="bench",
                         settings=replace(settings, enable_llm_cache=cache))
    try:
        log(f"cache {'on' if cache else 'off'}: {opts.jobs} jobs")
        sup.start("worker", ["worker", "--tiers", "simple", "--concurrency",
                             str(opts.concurrency), "--loglevel", "WARNING",
                             "--hostname", f"bench-cache-{cache}@%h"])
        sup.wait_for_workers(control, 1)
        questions = iter(workload(opts.jobs, opts.repeats, f"{cache}-{time.time_ns()}"))
        counts = {"hits": 0, "answered_at_submit": 0}

        def one() -> None:
            handle = client.submit([{"role": "user", "content": next(questions)}],
                                   tier="simple", max_tokens=200)
            result = handle.get(timeout=JOB_TIMEOUT_S)
            counts["hits"] += result.cache_hit
            counts["answered_at_submit"] += handle._result is not None

        sim_request(sim, "/_sim/reset", {})
        seconds, latencies, errors = closed_loop(one, opts.jobs, opts.in_flight)
        figures: dict[str, Any] = {
            "jobs_per_s": round(len(latencies) / seconds, 1), "errors": errors,
            "provider_calls": sim_request(sim, "/_sim/stats")["requests"], **counts,
            "job_p50_ms": round(percentile(latencies, 50), 2),
            "job_p99_ms": round(percentile(latencies, 99), 2)}
        if cache:
            figures["hit"] = hit_latency(client, opts.samples)
        return figures
    finally:
        client.close()
        sup.stop()
        control.close()


def hit_latency(client: FleetClient, samples: int) -> dict[str, Any]:
    """Submit-to-result of a cached question, one at a time, through the short-circuit."""
    question = [{"role": "user", "content": f"the cached question {time.time_ns()}"}]
    client.submit(question, tier="simple", max_tokens=200).get(timeout=JOB_TIMEOUT_S)
    times, misses = [], 0
    for i in range(200 + samples):  # the first 200 warm up
        started = time.perf_counter()
        result = client.submit(question, tier="simple", max_tokens=200).get(timeout=5)
        if i >= 200:
            times.append((time.perf_counter() - started) * 1000)
            misses += not result.cache_hit
    return {"samples": samples, "misses": misses, "p50_ms": round(percentile(times, 50), 3),
            "p99_ms": round(percentile(times, 99), 3)}


# -- the semantic cache ---------------------------------------------------------------


def semantic_scan(url: str, sizes: tuple[int, ...]) -> dict[int, float]:
    """Median ms of one semantic lookup in a scope of each size (an instant embedder)."""
    import redis.asyncio as aioredis

    from workers.caching.response import ResponseCache
    from workers.caching.semantic import DIMENSIONS, SemanticCache, pack
    from workers.pipeline.deadline import Deadline
    from workers.pipeline.steps import JobContext

    async def embed(job: EmbeddingJob) -> EmbeddingResult:
        return EmbeddingResult(job_id=job.job_id, model="e", provider="p", tier="embeddings",
                               usage=Usage(), cost_usd=0.0, latency_ms=0.0,
                               dimensions=DIMENSIONS,
                               vectors=[[random.gauss(0, 1) for _ in range(DIMENSIONS)]])

    _, fleet = load_config(Settings())
    fleet = fleet.model_copy(update={"cache": CacheConfig(semantic_tiers=["simple"])})

    async def measure(size: int) -> float:
        client = aioredis.from_url(url)
        try:
            semantic = SemanticCache(client, fleet, embed,
                                     ResponseCache(client, ttl_s=600, max_size=100_000),
                                     ttl_s=600, max_size=100_000)
            job = CompletionJob(messages=[{"role": "user", "content": f"scan {size}"}],
                                tier="simple")
            ctx = JobContext(job=job, fleet=fleet, tier="simple", chain=fleet.chain("simple"),
                             prompt_tokens=1, max_tokens=1024, deadline=Deadline(at=None))
            scope = semantic._scope(ctx)
            rows = {f"k{i}": pack("|0|", [random.gauss(0, 1) for _ in range(DIMENSIONS)])
                    for i in range(size)}
            await client.hset(scope, mapping=rows)  # type: ignore[arg-type]
            times = []
            for _ in range(15):
                started = time.perf_counter()
                await semantic.find(ctx, await semantic.query(ctx))
                times.append((time.perf_counter() - started) * 1000)
            await client.delete(scope)
            return round(statistics.median(times), 2)
        finally:
            await client.aclose()

    return {size: asyncio.run(measure(size)) for size in sizes}


NEAR = ["Explain why the service owned by {name} {neg}handles more than {n} requests per "
        "second when the cache is warm and the database sits in the same zone",
        "Is it {neg}safe for {name} to take {n} mg of ibuprofen with coffee?",
        "Write a farewell message for my colleague {name} who is {neg}leaving the team in "
        "{n} weeks after five years of working with us on the data platform",
        "Plan a {n} day trip to Lisbon for {name}, who does {neg}like museums, with a budget "
        "for hotels, food and transport"]
ANTONYMS = [("Should the migration run before the deploy when a column is renamed and both "
             "versions of the service read the table during the rollout", "before", "after"),
            ("Write a query that returns the customers with the highest lifetime value in the "
             "last quarter grouped by region and ordered by signup date", "highest", "lowest"),
            ("Explain why latency increases when the connection pool is too small for the "
             "worker threads that share it under sustained load", "increases", "decreases")]


def false_hits(threshold: float) -> dict[str, str]:
    """Near misses matched, guarded as the cache does and by cosine alone."""
    from workers.caching.semantic import DIMENSIONS, cosine, guard_of, pack, unpack
    from workers.devstack.simulator._embeddings import embed

    def match(a: str, b: str, guarded: bool) -> bool:
        (ga, va), (gb, vb) = (unpack(pack(guard_of(t), embed(t, DIMENSIONS))) for t in (a, b))
        return (ga == gb or not guarded) and cosine(va, vb) >= threshold

    base = {"n": 12, "name": "Alice", "neg": ""}
    pairs: dict[str, list[tuple[str, str]]] = {"number": [], "name": [], "negation": []}
    for t in NEAR:
        for kind, change in (("number", {"n": 15}), ("name", {"name": "Bob"}),
                             ("negation", {"neg": "not "})):
            pairs[kind].append((t.format(**base), t.format(**{**base, **change})))
    pairs["antonym (unguarded)"] = [(t, t.replace(a, b)) for t, a, b in ANTONYMS]
    return {kind: f"{sum(match(a, b, True) for a, b in ps)}/{len(ps)} "
                  f"(cosine alone {sum(match(a, b, False) for a, b in ps)}/{len(ps)})"
            for kind, ps in pairs.items()}


def main(argv: list[str] | None = None) -> int:
    from workers.devstack.embedded import ensure_stack, stop_stack

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    for name, kind, default in (("jobs", int, 3000), ("repeats", float, 0.55),
                                ("in-flight", int, 64), ("concurrency", int, 64),
                                ("latency-ms", float, 50.0), ("samples", int, 2000)):
        parser.add_argument(f"--{name}", type=kind, default=default)
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="llmfleet-bench-cache-"))
    figures: dict[str, Any] = {"load average at start": os.getloadavg()[0]}
    try:
        info = ensure_stack(tmp)
        from workers.store.engines import migrate

        migrate(info.database_url)
        env = {k: v for k, v in os.environ.items() if k not in PROVIDER_KEYS}
        env.update(REDIS_URL=info.redis_url, DATABASE_URL=info.database_url,
                   LLMFLEET_DATA_DIR=str(tmp), PYTHONPATH=str(ROOT))
        sim_sup = Supervisor(env=env, log_dir=tmp / "logs")
        try:
            env["LLMFLEET_SIMULATOR_URL"] = sim = start_simulator(sim_sup, opts.latency_ms)
            for cache in (False, True):
                figures[f"cache {'on' if cache else 'off'}"] = one_setting(
                    opts, cache, info.redis_url, env, sim, tmp / "logs")
        finally:
            sim_sup.stop()
        figures["semantic lookup ms by scope size"] = semantic_scan(info.redis_url,
                                                                    (100, 1000, 5000))
    finally:
        stop_stack(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    for threshold in (CacheConfig().semantic_threshold, 0.97):
        figures[f"semantic false hits at {threshold}"] = false_hits(threshold)
    print(json.dumps(figures, indent=2) if opts.json else "\n".join(
        f"{name}: {value}" if not isinstance(value, dict) else
        f"{name}:\n" + "\n".join(f"  {k}: {v}" for k, v in value.items())
        for name, value in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
