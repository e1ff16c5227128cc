"""The pgvector store: insert rate, and query latency at recall@10 >= 0.95, beside exact search.

    python bench/vectors.py [--n 100000] [--dims 384] [--queries 200] [--data clustered,random]
                            [--ef 40,100,200,400,800] [--exact-queries 30] [--json]

Against the embedded Postgres (a temp directory, stopped at the end) unless DATABASE_URL
is set. For each data set: ``PgVectorStore.upsert`` in batches of ``--batch`` one-chunk
documents into a fresh collection (its HNSW index is maintained as rows arrive, as in
service), then ``--queries`` held-out vectors searched at each ``ef_search``: recall@10
against the true ten nearest (numpy, exact), p50/p95 of one search; then exact search
in SQL (index off) for ``--exact-queries`` of them. Random unit vectors are the hard
case for HNSW (no structure to exploit); clustered points are closer to text embeddings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.vectors import Document, PgVectorStore


def make_data(kind: str, n: int, dims: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "random":
        data = rng.standard_normal((n, dims), dtype=np.float32)
    else:
        centres = rng.standard_normal((max(10, n // 1000), dims), dtype=np.float32)
        data = centres[rng.integers(0, len(centres), n)] + \
            0.6 * rng.standard_normal((n, dims), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    return data


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_set(store: PgVectorStore, kind: str, args: argparse.Namespace) -> dict[str, Any]:
    data = make_data(kind, args.n + args.queries, args.dims, seed=11)
    base, queries = data[:args.n], data[args.n:]
    truth = np.argsort(-(queries @ base.T), axis=1)[:, :10]
    name = f"bench-{kind}-{uuid.uuid4().hex[:6]}"
    started = time.perf_counter()
    for start in range(0, args.n, args.batch):
        store.upsert(name, [Document(id=str(i), chunks=[""], embeddings=[base[i].tolist()])
                            for i in range(start, min(args.n, start + args.batch))])
    insert_s = time.perf_counter() - started
    out: dict[str, Any] = {"data": kind, "n": args.n, "dims": args.dims,
                           "insert_s": round(insert_s, 1),
                           "insert_rows_per_s": round(args.n / insert_s), "ef": []}
    try:
        for ef in args.ef:
            found, times = 0, []
            for q, expected in zip(queries, truth, strict=True):
                t0 = time.perf_counter()
                hits = store.search(name, q.tolist(), top_k=10, ef_search=ef)
                times.append((time.perf_counter() - t0) * 1000)
                found += len({int(h.id) for h in hits} & set(expected.tolist()))
            out["ef"].append({"ef_search": ef, "recall": round(found / truth.size, 4),
                              "p50_ms": round(statistics.median(times), 2),
                              "p95_ms": round(percentile(times, 0.95), 2)})
            print(f"  {kind}: ef_search={ef}: {out['ef'][-1]}", file=sys.stderr)
        times = []
        for q in queries[:args.exact_queries]:
            t0 = time.perf_counter()
            store.search(name, q.tolist(), top_k=10, exact=True)
            times.append((time.perf_counter() - t0) * 1000)
        out["exact"] = {"p50_ms": round(statistics.median(times), 2),
                        "p95_ms": round(percentile(times, 0.95), 2)}
        good = [e for e in out["ef"] if e["recall"] >= 0.95]
        out["at_recall_95"] = good[0] if good else None
    finally:
        store.drop_collection(name)
    return out


def report(results: list[dict[str, Any]]) -> None:
    for r in results:
        print(f"\n{r['data']}: {r['n']:,} vectors x {r['dims']} dims, inserted in "
              f"{r['insert_s']} s ({r['insert_rows_per_s']:,} rows/s, HNSW kept up to date)")
        print(f"  {'ef_search':>9} {'recall@10':>9} {'p50 ms':>8} {'p95 ms':>8}")
        for e in r["ef"]:
            print(f"  {e['ef_search']:>9} {e['recall']:>9.4f} {e['p50_ms']:>8} {e['p95_ms']:>8}")
        print(f"  {'exact':>9} {1.0:>9.4f} {r['exact']['p50_ms']:>8} {r['exact']['p95_ms']:>8}")
        best = r["at_recall_95"]
        print("  at recall >= 0.95: " + (f"ef_search={best['ef_search']}, p50 {best['p50_ms']} "
                                         f"ms, p95 {best['p95_ms']} ms" if best else "not reached"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--exact-queries", type=int, default=30)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--data", default="clustered,random")
    parser.add_argument("--ef", default="40,100,200,400,800")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.ef = [int(x) for x in args.ef.split(",")]
    url = os.environ.get("DATABASE_URL")
    tmp = None
    if not url:
        from workers.devstack.embedded import ensure_stack

        tmp = tempfile.mkdtemp(prefix="llmfleet-bench-vectors-")
        url = ensure_stack(Path(tmp), redis=False).database_url
    try:
        with PgVectorStore(url) as store:
            results = [run_set(store, kind, args) for kind in args.data.split(",")]
    finally:
        if tmp is not None:
            from workers.devstack.embedded import stop_stack

            stop_stack(Path(tmp))
    report(results)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
