"""Secrets stay secret: a whole demo run with provider keys set (the simulator standing
in for the providers they belong to, one model failing so that errors are made and
kept) leaves none of them in its output, its processes' logs (JSON lines), its results
in Redis, its ledger rows, its audit rows or its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import redis
from sqlalchemy import text

from workers.devstack.simulator import SimulatorConfig, SimulatorThread
from workers.store.engines import sync_engine

KEYS = {"OPENROUTER_API_KEY": "sk-or-v1-SECRETopenrouter0123456789abcdef",
        "OPENAI_API_KEY": "sk-proj-SECRETopenai0123456789abcdef",
        "ANTHROPIC_API_KEY": "sk-ant-api03-SECRETanthropic0123456789"}


def redis_values(client: redis.Redis) -> Iterator[tuple[str, bytes]]:
    """Every value of every key, whatever its type."""
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        name = key.decode(errors="replace")
        if kind == "string":
            yield name, client.get(key) or b""
        elif kind == "hash":
            for field, value in client.hgetall(key).items():
                yield name, field + b"=" + value
        elif kind == "list":
            for value in client.lrange(key, 0, -1):
                yield name, value
        elif kind == "set":
            for value in client.smembers(key):
                yield name, value
        elif kind == "zset":
            for value in client.zrange(key, 0, -1):
                yield name, value
        elif kind == "stream":
            for _, fields in client.xrange(key):
                yield name, json.dumps({k.decode(): v.decode(errors="replace")
                                        for k, v in fields.items()}).encode()


def leaks(haystack: str) -> list[str]:
    """Which keys (or a long enough piece of one) the text holds."""
    return [name for name, secret in KEYS.items()
            if secret in haystack or secret[-20:] in haystack]


def test_a_demo_with_keys_set_leaks_none_of_them(tmp_path: Path) -> None:
    # Given provider keys set, answered by a simulator that fails one model's calls
    with SimulatorThread(SimulatorConfig(latency_ms=10,
                                         fail_models={"openai/gpt-4o": 500})) as sim:
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        env.update(KEYS, LLMFLEET_DATA_DIR=str(tmp_path), LLMFLEET_SIMULATOR_URL=sim.base_url,
                   LLMFLEET_LOG_FORMAT="json")
        # When the whole demo runs, its servers kept for a look afterwards
        done = subprocess.run([sys.executable, "-m", "workers.cli", "demo", "--jobs", "30",
                               "--latency-ms", "10", "--keep-servers"], env=env,
                              capture_output=True, text=True, timeout=240)
    try:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        stack = json.loads((tmp_path / "stack.json").read_text())
        # Then its output and every log file of its processes hold no key
        assert leaks(done.stdout + done.stderr) == []
        logs = [p for p in (tmp_path / "logs").rglob("*") if p.is_file()]
        assert logs, "the demo's processes left no logs"
        for path in logs:
            assert leaks(path.read_text(errors="replace")) == [], path
        # And nothing in Redis (results, streams, the spool, caches, dead letters)
        with redis.Redis.from_url(stack["redis_url"]) as client:
            values = list(redis_values(client))
        assert len(values) > 30
        for key, value in values:
            assert leaks(value.decode(errors="replace")) == [], key
        # And no ledger row, attempt error or audit row, although errors were made
        with sync_engine(stack["database_url"]).connect() as connection:
            ledger = [str(r) for r in connection.execute(text(
                "SELECT row_to_json(l)::text FROM job_ledger l")).scalars()]
            audit = [str(r) for r in connection.execute(text(
                "SELECT row_to_json(a)::text FROM audit_log a")).scalars()]
        assert len(ledger) >= 30 and any("ProviderError" in row or "500" in row
                                         for row in ledger)
        for row in ledger + audit:
            assert leaks(row) == [], row[:300]
    finally:
        if (tmp_path / "stack.json").exists():
            sync_engine(json.loads((tmp_path / "stack.json").read_text())["database_url"]
                        ).dispose()
        subprocess.run([sys.executable, "-m", "workers.cli", "down"], env=env,
                       capture_output=True, timeout=60)
