"""The embedded stack: a real Redis and a real Postgres + pgvector, started once per data
directory, joined by other processes, and stopped only by ``stop_stack``."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from schemas import sqlalchemy_url
from workers.devstack.embedded import (
    StackInfo,
    default_data_dir,
    ensure_stack,
    stack_status,
    stop_stack,
)

REPO = Path(__file__).resolve().parents[3]

# Runs ensure_stack in a separate process, optionally waiting for a wall-clock instant so
# that two such processes race for real, and prints what it got as JSON.
CHILD = """
import json, sys, time
from pathlib import Path
from workers.devstack.embedded import ensure_stack
start_at = float(sys.argv[3])
while time.time() < start_at:
    time.sleep(0.001)
info = ensure_stack(Path(sys.argv[1]), postgres=sys.argv[2] == "1")
print(json.dumps({"redis_url": info.redis_url, "database_url": info.database_url,
                  "started": info.started}))
"""


def _spawn(
    data_dir: Path, *, postgres: bool = True, start_at: float = 0.0
) -> subprocess.Popen[str]:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    args = [sys.executable, "-c", CHILD, str(data_dir), "1" if postgres else "0", str(start_at)]
    return subprocess.Popen(args, cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    with proc:
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def _redis(url: str) -> redis.Redis:
    """A client that fails at once on a refused port instead of retrying for seconds."""
    return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=2)


def _redis_daemons(data_dir: Path) -> int:
    """How many redis-server processes serve this data dir (redis chdirs into ``--dir``)."""
    count = 0
    for proc in Path("/proc").iterdir():
        try:
            comm = (proc / "comm").read_text().strip()
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        count += comm.startswith("redis-server") and Path(cwd) == data_dir.resolve() / "redis"
    return count


@pytest.fixture()
def data_dir(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh data dir whose servers are always stopped, whatever the test did."""
    request.addfinalizer(lambda: stop_stack(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    """Both servers, started once for the tests that only use them."""
    root = tmp_path_factory.mktemp("stack")
    try:
        yield ensure_stack(root)
    finally:
        stop_stack(root)


def test_started_stack_serves_redis_and_pgvector(stack: StackInfo) -> None:
    # Given a freshly started stack
    assert stack.started
    assert stack.redis_url.startswith("redis://127.0.0.1:")
    assert stack.database_url.startswith("postgresql://")
    assert stack.database_url.endswith("/llmfleet")
    # When we use Redis and Postgres through their usual clients
    with _redis(stack.redis_url) as client:
        client.set("greeting", "hello")
        value = client.get("greeting")
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        row = conn.execute("SELECT '[1,2,3]'::vector <=> '[1,2,4]'::vector").fetchone()
    # Then both work, pgvector included
    assert value == b"hello"
    assert row is not None
    assert row[0] == pytest.approx(1 - 17 / math.sqrt(14 * 21))
    assert stack_status(stack.data_dir) == {"redis": True, "postgres": True}


def test_another_process_joins_the_running_servers(stack: StackInfo) -> None:
    # Given a running stack
    # When a separate process asks for the same data dir
    joined = _result(_spawn(stack.data_dir))
    # Then it gets the same servers and starts nothing
    assert joined == {"redis_url": stack.redis_url, "database_url": stack.database_url,
                      "started": False}


def test_simultaneous_callers_start_one_redis(data_dir: Path) -> None:
    # Given two processes that call ensure_stack at the same instant
    start_at = time.time() + 1.5
    procs = [_spawn(data_dir, postgres=False, start_at=start_at) for _ in range(2)]
    # When both return
    results = [_result(proc) for proc in procs]
    # Then exactly one started Redis, both got its URL, and one daemon runs
    assert sorted(r["started"] for r in results) == [False, True]
    assert results[0]["redis_url"] == results[1]["redis_url"]
    assert _redis_daemons(data_dir) == 1


def test_stop_then_restart_keeps_queued_data(data_dir: Path) -> None:
    # Given a running stack with a Redis key and a Postgres row
    info = ensure_stack(data_dir)
    with _redis(info.redis_url) as client:
        client.set("queued-job", "42")
    with psycopg.connect(info.database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (7)")
    # When the stack is stopped
    assert stop_stack(data_dir) == ["redis", "postgres"]
    # Then both refuse connections and nothing is recorded any more
    with pytest.raises(redis.ConnectionError), _redis(info.redis_url) as client:
        client.ping()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(info.database_url, connect_timeout=2).close()
    assert not (data_dir / "stack.json").exists()
    assert stack_status(data_dir) == {}
    # When it is ensured again
    again = ensure_stack(data_dir)
    # Then both start afresh and the data survived (Redis thanks to its append-only file)
    assert again.started_servers == ("redis", "postgres")
    with _redis(again.redis_url) as client:
        assert client.get("queued-job") == b"42"
    with psycopg.connect(again.database_url) as conn:
        assert conn.execute("SELECT n FROM kept").fetchall() == [(7,)]


def test_redis_only_and_restart_after_a_crash(data_dir: Path) -> None:
    # Given a caller that needs only Redis
    info = ensure_stack(data_dir, redis=True, postgres=False)
    # Then only Redis starts
    assert info.started_servers == ("redis",)
    assert info.database_url == ""
    assert stack_status(data_dir) == {"redis": True}
    assert not (data_dir / "pg").exists()
    # When that Redis dies without a goodbye
    pid = json.loads((data_dir / "stack.json").read_text())["redis"]["pid"]
    os.kill(pid, signal.SIGKILL)
    # Then the next caller notices and starts a new one
    again = ensure_stack(data_dir, postgres=False)
    assert again.started_servers == ("redis",)
    with _redis(again.redis_url) as client:
        assert client.ping()


def test_stop_is_safe_when_nothing_runs(tmp_path: Path) -> None:
    # Given an empty data dir / When it is stopped / Then nothing happens
    assert stop_stack(tmp_path) == []
    assert stack_status(tmp_path) == {}


def test_sqlalchemy_url_selects_psycopg3() -> None:
    # Given libpq URLs / When converted / Then SQLAlchemy gets the psycopg 3 dialect
    url = "postgresql://postgres@127.0.0.1:5555/llmfleet"
    assert sqlalchemy_url(url) == "postgresql+psycopg://postgres@127.0.0.1:5555/llmfleet"
    assert sqlalchemy_url("postgres://h/db") == "postgresql+psycopg://h/db"
    assert sqlalchemy_url("postgresql+asyncpg://h/db") == "postgresql+asyncpg://h/db"
    with pytest.raises(ValueError):
        sqlalchemy_url("redis://127.0.0.1:6379/0")


def test_default_data_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given LLMFLEET_DATA_DIR set, then unset / Then it wins, else the XDG-style default
    monkeypatch.setenv("LLMFLEET_DATA_DIR", "/srv/fleet")
    assert default_data_dir() == Path("/srv/fleet")
    monkeypatch.delenv("LLMFLEET_DATA_DIR")
    assert default_data_dir() == Path.home() / ".local" / "share" / "llmfleet"
