"""Jobs that can wait: 10,000 deferrable jobs through the providers' batch APIs, with
every fleet process killed and restarted once while batches are in flight.

    python bench/batch.py [--jobs 10000] [--stalled 200] [--completion-s 8]

One worker and one beat (the batcher runs on the worker's admin queue) on an embedded
Redis and Postgres, the simulator as its own process (``bench/_rig.py``). Phases:

1. ``--jobs`` jobs submitted with a deadline of two minutes (``submit_many``, 500 a
   message); once a batch is at the simulator, the worker and beat are killed with
   SIGKILL and started again; every job is waited for.
2. ``--stalled`` jobs whose batch would take far too long (the simulator's
   ``batch_completion_s`` huge): each must be answered live before its deadline.

Figures: jobs answered, ledger rows per job, cost in the ledger against the same
answers at live prices, provider calls (batch items and live), jobs sent live.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the project and bench importable
    sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from bench._measure import log  # noqa: E402
from bench._rig import Rig, rig  # noqa: E402
from bench._simulator import sim_request  # noqa: E402
from workers.store.engines import sync_engine  # noqa: E402

AGENT = "bench-batch"
DEADLINE_S = 120
STALLED_DEADLINE_S = 40
FLEET_BATCH = """
[batch]
min_deadline_s = 30
margin_s = 15
gather_s = 1
poll_s = 1
max_items = 5000
"""


def _fleet_file() -> Path:
    from importlib import resources

    base = resources.files("schemas").joinpath("default_fleet.toml").read_text()
    path = Path(tempfile.mkdtemp(prefix="llmfleet-batch-")) / "fleet.toml"
    path.write_text(base + FLEET_BATCH)
    return path


def _submit(made: Rig, label: str, count: int, deadline: float) -> list[Any]:
    client = made.client()
    run = uuid.uuid4().hex[:8]
    handles = []
    for start in range(0, count, 500):
        specs = [{"messages": [{"role": "user", "content": f"{label} {run} {i}"}],
                  "tier": "simple", "max_tokens": 16, "deadline": deadline}
                 for i in range(start, min(count, start + 500))]
        handles.append(client.submit_many(specs))
    return handles


def _query(made: Rig, sql: str, **params: Any) -> Any:
    with sync_engine(made.found.database_url).connect() as connection:
        return connection.execute(text(sql), params).one()


def _kill_and_restart(made: Rig, generation: int) -> None:
    for name in ("worker", "beat"):
        process = made.sup.children[name]
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    log("killed the worker and beat (SIGKILL) with batches in flight; starting them again")
    made.sup.start("worker", ["worker", "--tiers", "simple", "--concurrency", "32",
                              "--loglevel", "WARNING", "--hostname", f"bench-{generation}@%h"])
    made.sup.start("beat", ["beat", "--loglevel", "WARNING"])


def _wait(handles: list[Any], limit_s: float) -> int:
    answered = 0
    for handle in handles:
        answered += sum(1 for r in handle.get(timeout=limit_s) if r.content)
    return answered


def phase_batches(made: Rig, jobs: int) -> dict[str, Any]:
    started = time.monotonic()
    handles = _submit(made, "batch bench", jobs, DEADLINE_S)
    log(f"{jobs} jobs submitted in {time.monotonic() - started:.1f} s")
    end = time.monotonic() + 60
    while _query(made, "SELECT count(*) FROM provider_batches WHERE status = 'in_progress'")[0] \
            == 0:
        if time.monotonic() > end:
            raise TimeoutError("no batch reached the simulator")
        time.sleep(0.2)
    _kill_and_restart(made, 2)
    answered = _wait(handles, DEADLINE_S + 30)
    took = time.monotonic() - started
    return {"answered": answered, "seconds": took, **_ledger(made, "batch bench")}


def phase_stalled(made: Rig, jobs: int) -> dict[str, Any]:
    sim_request(made.sim, "/_sim/config", {"batch_completion_s": 1e6})
    started = time.monotonic()
    handles = _submit(made, "stalled bench", jobs, STALLED_DEADLINE_S)
    answered = _wait(handles, STALLED_DEADLINE_S + 30)
    took = time.monotonic() - started
    return {"answered": answered, "seconds": took, "in_time": took < STALLED_DEADLINE_S,
            **_ledger(made, "stalled bench")}


def _ledger(made: Rig, label: str) -> dict[str, Any]:
    end = time.monotonic() + 30
    while True:
        rows, distinct, batch, cost, saved = _query(
            made, "SELECT count(*), count(DISTINCT l.job_id), count(*) FILTER (WHERE batch), "
            "coalesce(sum(cost_usd), 0), coalesce(sum(cost_saved_usd) FILTER (WHERE batch), 0) "
            "FROM job_ledger l WHERE agent = :agent "
            "AND job_id IN (SELECT job_id FROM provider_batch_jobs WHERE "
            "payload->'messages'->0->>'content' LIKE :label)",
            agent=AGENT, label=f"{label} %")
        waiting = _query(made, "SELECT count(*) FROM provider_batch_jobs WHERE "
                         "payload->'messages'->0->>'content' LIKE :label", label=f"{label} %")[0]
        if rows >= waiting or time.monotonic() > end:
            break
        time.sleep(0.5)
    live = _query(made, "SELECT count(*) FROM provider_batch_jobs WHERE state = 'live' AND "
                  "payload->'messages'->0->>'content' LIKE :label", label=f"{label} %")[0]
    return {"rows": rows, "distinct": distinct, "batch_rows": batch, "cost": float(cost),
            "live_cost": float(cost) + float(saved), "sent_live": live}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000,
                        help="deferrable jobs sent through provider batches (default 10,000)")
    parser.add_argument("--stalled", type=int, default=200,
                        help="jobs whose batch never ends: they must be answered live "
                        "before their deadline (default 200)")
    parser.add_argument("--completion-s", type=float, default=8.0,
                        help="how long the simulator takes to end a batch, s (default 8)")
    opts = parser.parse_args()
    sim = {"batch_completion_s": opts.completion_s, "batch_item_error_rate": 0.0}
    with rig(agent=AGENT, tier="simple", concurrency=32, sim_config=sim, latency_ms=50,
             env_extra={"LLMFLEET_CONFIG": str(_fleet_file())}) as made:
        made.sup.start("beat", ["beat", "--loglevel", "WARNING"])
        first = phase_batches(made, opts.jobs)
        stats = made.sim_stats()
        second = phase_stalled(made, opts.stalled)
        late = made.sim_stats()
    print(f"\n{opts.jobs} deferrable jobs, worker and beat killed once mid-batch:")
    print(f"  answered {first['answered']}/{opts.jobs} in {first['seconds']:.1f} s; "
          f"ledger rows {first['rows']} ({first['distinct']} distinct jobs), "
          f"{first['batch_rows']} at batch prices; charged twice: "
          f"{first['rows'] - first['distinct']}")
    print(f"  cost in the ledger ${first['cost']:.6f}; the same answers live "
          f"${first['live_cost']:.6f} (ratio {first['cost'] / max(first['live_cost'], 1e-12):.3f})")
    print(f"  provider calls: {stats['batch_requests']} batch items, {stats['requests']} live; "
          f"jobs sent live: {first['sent_live']}")
    print(f"{opts.stalled} jobs whose batch stalls (deadline {STALLED_DEADLINE_S} s):")
    print(f"  answered {second['answered']}/{opts.stalled} in {second['seconds']:.1f} s "
          f"({'within' if second['in_time'] else 'PAST'} the deadline); deadline fallbacks "
          f"{second['sent_live']}; ledger rows {second['rows']} ({second['distinct']} distinct), "
          f"live calls {late['requests'] - stats['requests']}")


if __name__ == "__main__":
    main()
