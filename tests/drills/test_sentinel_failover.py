"""Drill: the fleet's Redis behind Sentinel (a master, an asynchronous replica and three
sentinels, on loopback), the master killed with SIGKILL while an agent submits jobs and
the worker runs them; the sentinels promote the replica and the fleet carries on with it.

Everything goes through the one Sentinel URL (REDIS_URL): the broker, the result backend,
the result waiter, the cache, budgets, limits and the ledger's spool (tasks/_redis.py).

What a failover can lose (docs/sentinel.md): replication is asynchronous, so the writes
the master acknowledged in its last instant but had not yet shipped to the replica are
gone with it: a job message pushed (the job never runs), a stored outcome (its agent
times out), a ledger row spooled (the job ran, unrecorded). The drill counts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import redis

from schemas import FleetError, FleetUnavailableError
from tests.drills.conftest import DrillStack, ledger_rows, running_worker

REDIS_SERVER = shutil.which("redis-server")
MASTER = "llmfleet-drill"
JOBS = 200
#: Jobs submitted once the replica is the master: all of them must be answered.
AFTER = 50
#: Seconds between submits: the kill comes while jobs are being sent and run.
PACE_S = 0.01
WAIT_S = 25
#: The most jobs submitted before the kill the drill lets the failover lose. Replication
#: is asynchronous: what the master acknowledged in the last moment before it died, not
#: yet shipped to the replica, is lost (on loopback, a lag well under a millisecond: one
#: or two writes in flight, rarely more). One lost write costs at most one job (its
#: message, its outcome or its ledger row), and kombu's BRPOP-then-record window
#: (docs/architecture.md) at most one more; the bound leaves room for a loaded machine.
MAX_LOST = 10

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]


@dataclass
class SentinelSet:
    """A master, its replica and three sentinels, as processes on loopback."""

    master_port: int
    replica_port: int
    sentinel_ports: list[int]
    processes: list[subprocess.Popen[bytes]]

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{port}" for port in self.sentinel_ports)

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2, decode_responses=True)

    def master_address(self) -> set[str]:
        """Where each sentinel says the master is."""
        seen = set()
        for port in self.sentinel_ports:
            with self.sentinel(port) as client:
                host, master_port = client.sentinel_get_master_addr_by_name(MASTER)
                seen.add(f"{host}:{master_port}")
        return seen

    def ready(self) -> bool:
        """Every sentinel sees the master, the replica and the other two sentinels."""
        for port in self.sentinel_ports:
            with self.sentinel(port) as client:
                state = client.sentinel_master(MASTER)
                if (int(state["num-slaves"]), int(state["num-other-sentinels"])) != (1, 2):
                    return False
        with redis.Redis(port=self.replica_port) as replica:
            return bool(replica.info("replication")["master_link_status"] == "up")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _server(directory: Path, port: int, *options: str, conf: Path | None = None
            ) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    assert REDIS_SERVER is not None
    return subprocess.Popen(
        [REDIS_SERVER, *([str(conf)] if conf else []), "--port", str(port),
         "--bind", "127.0.0.1", "--dir", str(directory),
         "--logfile", str(directory / "log"), *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def _wait_until(predicate: Any, timeout: float, what: str) -> float:
    """Seconds it took ``predicate`` to hold (errors count as not yet)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with contextlib.suppress(redis.RedisError, OSError):
            if predicate():
                return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s")


@pytest.fixture()
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    master, replica = _free_port(), _free_port()
    ports = [_free_port() for _ in range(3)]
    # No persistence: what the replica holds when the master dies is all there is.
    plain = ("--appendonly", "no", "--save", "")
    processes = [_server(tmp_path / "master", master, *plain),
                 _server(tmp_path / "replica", replica, *plain,
                         "--replicaof", "127.0.0.1", str(master))]
    for port in ports:
        directory = tmp_path / f"sentinel-{port}"
        directory.mkdir()
        conf = directory / "sentinel.conf"  # the sentinel rewrites it: one each
        conf.write_text(f"sentinel monitor {MASTER} 127.0.0.1 {master} 2\n"
                        f"sentinel down-after-milliseconds {MASTER} 1000\n"
                        f"sentinel failover-timeout {MASTER} 5000\n"
                        f"sentinel parallel-syncs {MASTER} 1\n")
        processes.append(_server(directory, port, "--sentinel", conf=conf))
    found = SentinelSet(master, replica, ports, processes)
    try:
        _wait_until(found.ready, 30, "sentinels ready")
        yield found
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()


def test_the_fleet_carries_on_after_a_sentinel_failover(
        drill_stack: DrillStack, sim: Any, sentinels: SentinelSet, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a worker and an agent whose REDIS_URL names the three sentinels only
    monkeypatch.setenv("LLMFLEET_SENTINEL_MASTER", MASTER)
    stack = replace(drill_stack, redis_url=sentinels.url,
                    env={**drill_stack.env, "REDIS_URL": sentinels.url,
                         "LLMFLEET_SENTINEL_MASTER": MASTER})
    sim.configure(latency_ms=300)
    run = uuid.uuid4().hex[:8]
    with running_worker(stack, "sentinel", tmp_path / "worker.log", concurrency=64) \
            as (worker, client):
        def submit(i: int) -> tuple[Any, int]:
            """The job's handle, and the times the fleet refused it (as an agent does,
            it tries again)."""
            refused = 0
            while True:
                try:
                    return client.submit([{"role": "user", "content": f"sentinel {run} {i}"}],
                                         tier="simple", max_tokens=16, timeout=60), refused
                except FleetUnavailableError:
                    refused += 1
                    time.sleep(0.1)

        # When the master is killed halfway through 200 submits, jobs running
        before: list[Any] = []
        during: list[Any] = []
        refusals = 0
        replica_info = redis.Redis(port=sentinels.replica_port)
        master_info = redis.Redis(port=sentinels.master_port)
        ahead = 0
        new_master = f"127.0.0.1:{sentinels.replica_port}"
        promoted: list[float] = []
        for i in range(JOBS):
            if i == JOBS // 2:
                master_offset = master_info.info("replication")["master_repl_offset"]
                os.kill(master_info.info("server")["process_id"], signal.SIGKILL)
                killed = time.monotonic()
                # >= 0: the replica had every write the master had made when read
                ahead = replica_info.info("replication")["slave_repl_offset"] - master_offset
                watching = threading.Thread(target=lambda: promoted.append(_wait_until(
                    lambda: sentinels.master_address() == {new_master}, 30, "failover")))
                watching.start()
            handle, refused = submit(i)
            refusals += refused
            if i == JOBS // 2:
                accepted_again = time.monotonic() - killed
            (before if i < JOBS // 2 else during).append(handle)
            time.sleep(PACE_S)
        # And the sentinels promote the replica
        watching.join()
        assert promoted, "no failover"
        master_info.close()
        replica_info.close()
        outcomes = _wait_all(before + during, WAIT_S)
        # Then jobs submitted after the failover all complete
        after = [submit(JOBS + i)[0] for i in range(AFTER)]
        after_outcomes = _wait_all(after, WAIT_S)
        ids = {h.job_id for h in before + during + after}
        rows = _rows_of(stack, ids, len(ids), timeout=20)
        assert worker.poll() is None, "the worker died"

    answered = {h.job_id for h, o in zip(before + during, outcomes, strict=True)
                if not isinstance(o, Exception)}
    lost_answer = [h.job_id for h in before if h.job_id not in answered]
    lost_row = [h.job_id for h in before if h.job_id not in rows]
    lost = set(lost_answer) | set(lost_row)
    kinds = Counter(type(o).__name__ for o in outcomes)
    print(f"\nsentinel failover drill: {JOBS} jobs, master SIGKILLed after {JOBS // 2}; "
          f"replica offset {ahead:+d} bytes from the master's read just before the kill; "
          f"promoted {promoted[0]:.1f} s after it; "
          f"submits accepted again {accepted_again:.1f} s after it "
          f"({refusals} refused meanwhile, FleetUnavailableError); "
          f"outcomes {dict(kinds)}; of the {len(before)} jobs submitted before the kill, "
          f"{len(lost_answer)} unanswered, {len(lost_row)} without a ledger row "
          f"({len(lost)} lost); {len(after)} jobs after the failover: "
          f"{sum(not isinstance(o, Exception) for o in after_outcomes)} answered, "
          f"{sum(h.job_id in rows for h in after)} ledger rows; "
          f"{sim.stats()['requests']} provider calls")
    # Jobs submitted once the master was gone were refused at submit (their agent knew)
    # or went to the new master: none of them is lost
    assert all(h.job_id in answered and h.job_id in rows for h in during), kinds
    # The fleet carries on: every job submitted after the failover is answered and billed
    assert all(not isinstance(o, Exception) for o in after_outcomes), after_outcomes
    assert all(h.job_id in rows for h in after)
    # What the asynchronous replica lost is small and bounded (see MAX_LOST), and a job
    # it lost is one the agent saw time out or one the ledger lacks, never a wrong answer
    assert len(lost) <= MAX_LOST, (lost_answer, lost_row)
    assert not any(isinstance(o, FleetError) and not isinstance(o, FleetUnavailableError)
                   and type(o).__name__ != "JobTimeoutError" for o in outcomes), kinds


def _wait_all(handles: list[Any], timeout: float) -> list[Any]:
    """Each job's result, or the error its wait ended in, waited on together."""
    outcomes: list[Any] = []

    async def wait_all() -> None:
        async def one(handle: Any) -> Any:
            try:
                return await handle.wait(timeout=timeout)
            except FleetError as exc:
                return exc
        outcomes.extend(await asyncio.gather(*(one(h) for h in handles)))

    waiting = threading.Thread(target=lambda: asyncio.run(wait_all()))
    waiting.start()
    waiting.join(timeout + 30)
    assert not waiting.is_alive(), "waits still hanging"
    return outcomes


def _rows_of(stack: DrillStack, ids: set[str], count: int, timeout: float
             ) -> dict[str, dict[str, Any]]:
    """The ledger rows of ``ids``, once there are ``count`` (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = {r["job_id"]: r for r in ledger_rows(stack, "sentinel") if r["job_id"] in ids}
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)

