"""What a Prometheus scrape of ``/metrics`` costs with a long ledger.

    python bench/metrics.py [--rows 1000000] [--days 30] [--scrapes 200] [--json]

Everything listens on loopback only: an embedded Redis and Postgres in a temp directory
(or REDIS_URL with a dedicated db, ``--redis-db``, flushed before and after, and only it;
DATABASE_URL is refused: the run writes a million ledger rows and rebuilds the counters
tables). Steps:

1. Postgres is migrated to the revision before the counters (0005), and ``job_ledger``
   is filled with ``--rows`` rows by ``INSERT ... SELECT`` from ``generate_series``:
   eight agents (skewed), 200 users, the fleet file's tiers (55/25/13/7%) and their
   models (5% on a fallback), 95% succeeded, 3% failed, 2% rejected, 15% cache hits,
   tokens and cost at the models' prices, created over the last ``--days`` days.
2. The migration to the newest revision runs its backfill (0006_metric_counters), timed,
   and the counters are checked against the ledger (jobs, cost).
3. ``llmfleet api`` (one process) starts with a metrics token; after 10 warm-up scrapes,
   ``--scrapes`` scrapes of ``GET /metrics`` one at a time over one keep-alive connection,
   each timed from request to last byte.
4. For comparison, the aggregate the former collector ran over the ledger at every scrape
   (its ledger part alone), timed three times.

It prints the scrapes' p50, p95 and max, the ledger's row count, and whether the goal,
under 50 ms per scrape (p95) with 1,000,000 ledger rows, is met.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the project and bench importable
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from alembic import command  # noqa: E402
from sqlalchemy import Engine, text  # noqa: E402

from bench._fleet import child_env, services, tail_logs  # noqa: E402
from bench._measure import log  # noqa: E402
from bench._simulator import free_port  # noqa: E402
from schemas import FleetConfig, load_config  # noqa: E402
from workers.devstack.supervisor import Supervisor  # noqa: E402
from workers.store.engines import alembic_config, migrate, sync_engine  # noqa: E402

GOAL_MS = 50.0
GOAL_ROWS = 1_000_000
CHUNK = 100_000
AGENTS = ("coder", "planner", "reviewer", "researcher", "summarizer", "triage", "support",
          "writer")
TIER_SHARES = {"simple": 0.55, "medium": 0.25, "complex": 0.13, "embeddings": 0.07}

# One row per generate_series value; r1 picks the route (tier and model), r2 the status.
_FILL = """
INSERT INTO job_ledger (job_id, kind, agent, user_id, tier, requested_model, model, provider,
    status, cache_hit, attempts, fallback_used, prompt_tokens, completion_tokens,
    cached_tokens, usage_estimated, cost_usd, cost_saved_usd, latency_ms, error,
    error_message, metadata, created_at, finished_at)
SELECT 'bench-' || g, r.kind, (CAST(:agents AS text[]))[1 + floor(r5 * r5 * :n_agents)::int],
       'user-' || (g % 200), r.tier, NULL,
       CASE WHEN status = 'rejected' THEN NULL ELSE r.model END,
       CASE WHEN status = 'rejected' THEN NULL ELSE r.provider END,
       status, hit, CASE WHEN status = 'rejected' THEN 0 ELSE 1 END, r.fallback,
       prompt, o.tokens, 0, false,
       CASE WHEN status = 'succeeded' AND NOT hit
            THEN (prompt * r.pin + o.tokens * r.pout) / 1e6 ELSE 0 END,
       CASE WHEN hit THEN (prompt * r.pin + o.tokens * r.pout) / 1e6 ELSE 0 END,
       CASE WHEN status = 'rejected' THEN 0 WHEN hit THEN 1 + r4 * 4
            ELSE exp(4 + r4 * 4) END,
       CASE status WHEN 'failed' THEN 'AllModelsFailedError'
                   WHEN 'rejected' THEN 'BudgetExceededError' END,
       NULL, '{{}}'::jsonb, created, created
FROM (
    SELECT g, r1, r4, r5, status,
           status = 'succeeded' AND r2 < 0.15 AS hit,
           CASE WHEN status = 'rejected' THEN 0 ELSE 50 + floor(r4 * 1950)::int END AS prompt,
           CASE WHEN status = 'succeeded' THEN 10 + floor(r3 * 490)::int ELSE 0 END
               AS completion,
           now() - r3 * (CAST(:days AS int) * interval '1 day') AS created
    FROM (SELECT g, random() AS r1, random() AS r2, random() AS r3, random() AS r4,
                 random() AS r5,
                 CASE WHEN random() < 0.95 THEN 'succeeded'
                      WHEN random() < 0.6 THEN 'failed' ELSE 'rejected' END AS status
          FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) g) drawn
) j
JOIN (VALUES {routes}) AS r(lo, hi, kind, tier, model, provider, fallback, pin, pout)
  ON j.r1 >= r.lo AND j.r1 < r.hi
CROSS JOIN LATERAL (SELECT CASE WHEN r.kind = 'embedding' THEN 0 ELSE j.completion END
                    AS tokens) o
"""

# What the former collector aggregated over the ledger at each scrape (its ledger part).
_FORMER = [
    """SELECT agent, coalesce(model, ''), coalesce(tier, ''), status, count(*),
              count(*) FILTER (WHERE cache_hit), coalesce(sum(prompt_tokens), 0),
              coalesce(sum(completion_tokens), 0), coalesce(sum(cost_usd), 0)
       FROM job_ledger WHERE created_at >= now() - interval '31 days' GROUP BY 1, 2, 3, 4""",
    "SELECT coalesce(tier, ''), " + ", ".join(
        f"count(*) FILTER (WHERE latency_ms <= {b * 1000})"
        for b in (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0))
    + """, count(*), coalesce(sum(latency_ms), 0) FROM job_ledger
       WHERE created_at >= now() - interval '31 days' AND status <> 'rejected' GROUP BY 1""",
]


def routes(fleet: FleetConfig) -> str:
    """VALUES rows (lo, hi, kind, tier, model, provider, fallback, prices): each tier's
    share, 95% to its first model and 5% to its second when it has one."""
    parts: list[tuple[float, str, str, bool]] = []
    for tier, share in TIER_SHARES.items():
        chain = fleet.tiers[tier].models
        parts += [(share * 0.95, tier, chain[0], False), (share * 0.05, tier, chain[1], True)] \
            if len(chain) > 1 else [(share, tier, chain[0], False)]
    rows, lo = [], 0.0
    for i, (width, tier, model, fallback) in enumerate(parts):
        hi = 1.0 if i == len(parts) - 1 else lo + width  # random() < 1: every row a route
        kind = "embedding" if tier == "embeddings" else "completion"
        price = fleet.models[model]
        rows.append(f"({lo!r}::float8, {hi!r}::float8, '{kind}', '{tier}', '{model}', "
                    f"'{price.provider}', {str(fallback).lower()}, "
                    f"{price.input_per_mtok!r}::numeric, {price.output_per_mtok!r}::numeric)")
        lo = hi
    return ", ".join(rows)


def fill(engine: Engine, fleet: FleetConfig, rows: int, days: int) -> float:
    """Seconds to write ``rows`` ledger rows, in chunks (progress on stderr)."""
    statement = text(_FILL.format(routes=routes(fleet)))
    start = time.perf_counter()
    for lo in range(1, rows + 1, CHUNK):
        hi = min(rows, lo + CHUNK - 1)
        with engine.begin() as connection:
            connection.execute(statement, {"agents": list(AGENTS), "n_agents": len(AGENTS),
                                           "days": days, "lo": lo, "hi": hi})
        log(f"ledger: {hi:,} rows")
    seconds = time.perf_counter() - start
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE job_ledger"))  # settle it, as autovacuum would
    return seconds


def check(engine: Engine) -> dict[str, Any]:
    with engine.connect() as connection:
        ledger = connection.execute(text(
            "SELECT count(*), coalesce(sum(cost_usd), 0) FROM job_ledger")).one()
        counted = connection.execute(text(
            "SELECT coalesce(sum(jobs), 0), coalesce(sum(cost_usd), 0), count(*) "
            "FROM metric_counters")).one()
        latency = connection.execute(text("SELECT count(*) FROM metric_latency")).scalar_one()
    return {"ledger_rows": int(ledger[0]), "counter_rows": int(counted[2]),
            "latency_rows": int(latency),
            "equal": int(ledger[0]) == int(counted[0]) and ledger[1] == counted[1]}


def former(engine: Engine) -> float:
    """Median ms of three runs of the former collector's ledger aggregates."""
    runs = []
    with engine.connect() as connection:
        for _ in range(3):
            start = time.perf_counter()
            for query in _FORMER:
                connection.execute(text(query)).all()
            runs.append((time.perf_counter() - start) * 1000)
    return statistics.median(runs)


def scrape(base: str, token: str, n: int) -> tuple[list[float], int]:
    """(ms per scrape, body bytes) of ``n`` scrapes after 10 untimed ones."""
    headers = {"authorization": f"Bearer {token}"}
    latencies, size = [], 0
    with httpx.Client(base_url=base, timeout=30) as client:
        assert client.get("/metrics").status_code == 401  # the token is needed
        for i in range(10 + n):
            start = time.perf_counter()
            response = client.get("/metrics", headers=headers)
            elapsed = (time.perf_counter() - start) * 1000
            response.raise_for_status()
            size = len(response.content)
            if i >= 10:
                latencies.append(elapsed)
    return latencies, size


def start_api(sup: Supervisor, token: str) -> str:
    port = free_port()
    sup.start("api", ["api", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"])
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        sup.check_alive()
        try:
            if httpx.get(f"{base}/metrics", timeout=5,
                         headers={"authorization": f"Bearer {token}"}).status_code == 200:
                return base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the API did not answer on {base}")
        time.sleep(0.2)


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="llmfleet-bench-metrics-"))
    token = secrets.token_hex(24)
    try:
        with services(tmp, args.redis_db) as found:
            env = child_env(found, tmp, {"LLMFLEET_METRICS_TOKEN": token,
                                         "DAILY_BUDGET_LIMIT": "100",
                                         "MONTHLY_BUDGET_LIMIT": "2000"})
            fleet = load_config()[1]
            engine = sync_engine(found.database_url)
            command.downgrade(alembic_config(found.database_url), "0005_rollup_watermark")
            log(f"ledger: filling {args.rows:,} rows over {args.days} days")
            fill_s = fill(engine, fleet, args.rows, args.days)
            log("migrating: the counters' backfill")
            start = time.perf_counter()
            migrate(found.database_url)
            backfill_s = time.perf_counter() - start
            counters = check(engine)
            sup = Supervisor(env=env, log_dir=tmp / "logs")
            try:
                base = start_api(sup, token)
                log(f"/metrics: {args.scrapes} scrapes")
                latencies, size = scrape(base, token, args.scrapes)
            except Exception:
                tail_logs(tmp / "logs")
                raise
            finally:
                sup.stop()
            former_ms = former(engine)
            engine.dispose()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    p95 = statistics.quantiles(latencies, n=100, method="inclusive")[94]
    return {"rows": args.rows, "days": args.days, "fill_s": round(fill_s, 1),
            "backfill_s": round(backfill_s, 2), **counters, "body_bytes": size,
            "scrapes": len(latencies), "p50_ms": round(statistics.median(latencies), 2),
            "p95_ms": round(p95, 2), "max_ms": round(max(latencies), 2),
            "former_aggregate_ms": round(former_ms, 1),
            "goal_met": p95 < GOAL_MS and counters["ledger_rows"] >= GOAL_ROWS}


def render(r: dict[str, Any]) -> str:
    goal = "met" if r["goal_met"] else (
        "NOT met" if r["ledger_rows"] >= GOAL_ROWS else "not judged (fewer rows)")
    return "\n".join([
        f"ledger rows           {r['ledger_rows']:,} over {r['days']} days "
        f"(filled in {r['fill_s']} s)",
        f"counters backfill     {r['backfill_s']} s (migration 0006): "
        f"{r['counter_rows']} counter rows, {r['latency_rows']} latency rows, "
        f"equal to the ledger: {'yes' if r['equal'] else 'NO'}",
        f"/metrics              {r['scrapes']} scrapes, one at a time, with the token; "
        f"body {r['body_bytes'] / 1000:.1f} kB",
        f"  p50 / p95 / max     {r['p50_ms']} / {r['p95_ms']} / {r['max_ms']} ms",
        f"former aggregate      {r['former_aggregate_ms']} ms per scrape (the ledger part "
        "the old collector ran; median of 3)",
        f"goal: under {GOAL_MS:g} ms per scrape (p95) with {GOAL_ROWS:,} ledger rows: {goal}"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=GOAL_ROWS, help="ledger rows to write")
    parser.add_argument("--days", type=int, default=30, help="the rows' spread, days back")
    parser.add_argument("--scrapes", type=int, default=200, help="timed scrapes")
    parser.add_argument("--redis-db", type=int, default=15,
                        help="db used (and flushed) when REDIS_URL is set")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")
    args = parser.parse_args(argv)
    if os.environ.get("DATABASE_URL"):
        parser.error("DATABASE_URL is set: this bench writes a million rows and rebuilds "
                     "the counters tables; unset it to run on an embedded Postgres")
    if args.rows < 1 or args.scrapes < 2 or args.days < 1:
        parser.error("--rows and --days must be at least 1, --scrapes at least 2")
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
