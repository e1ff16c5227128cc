"""Drill: two beats on one fleet. One sends the periodic tasks, the other stands by;
the active one killed, the standby takes over within the lock's timeout; no task is
ever sent twice for one tick.

On a Redis database of its own (the broker's queues and RedBeat's keys both), where no
worker consumes: the heartbeats the beats send stay in the admin queue, counted there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
import redis

from tasks.names import ADMIN_QUEUE, BEAT_HEARTBEAT
from tests.conftest import stop_process, wait_until

pytestmark = pytest.mark.timeout(120)

LOCK_S = 3


@pytest.fixture()
def beat_env(fleet_env: dict[str, str], redis_url: str, tmp_path: Path
             ) -> Iterator[tuple[dict[str, str], redis.Redis]]:
    base = resources.files("schemas").joinpath("default_fleet.toml").read_text()
    path = tmp_path / "fleet.toml"
    path.write_text(base + f"""
[beat]
heartbeat_s = 1
enforce_budgets_s = 3600
rollup_metrics_s = 3600
purge_expired_s = 3600
lock_timeout_s = {LOCK_S}
""")
    url = redis_url.rsplit("/", 1)[0] + "/7"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield {**fleet_env, "REDIS_URL": url, "LLMFLEET_CONFIG": str(path)}, client
    client.flushdb()
    client.close()


def start_beat(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "workers.cli", "beat", "--loglevel",
                             "INFO"], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def count(client: redis.Redis) -> int:
    """Heartbeats sent so far: each waits in the admin queue."""
    return sum(json.loads(raw)["headers"]["task"] == BEAT_HEARTBEAT
               for raw in client.lrange(ADMIN_QUEUE, 0, -1))


def test_two_beats_send_once_and_the_standby_takes_over(
        beat_env: tuple[dict[str, str], redis.Redis], tmp_path: Path) -> None:
    env, client = beat_env
    # Given an active beat sending a heartbeat every second
    first = start_beat(env, tmp_path / "first.log")
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: count(client) >= 1, timeout=60, interval=0.2)
        # When a second beat starts beside it
        second = start_beat(env, tmp_path / "second.log")
        time.sleep(3)  # its start-up, then it waits for the lock
        before, started = count(client), time.monotonic()
        time.sleep(6)
        sent = count(client) - before
        rate = sent / (time.monotonic() - started)
        # Then heartbeats still come once a second, not twice
        assert 0.6 <= rate <= 1.4, (sent, (tmp_path / "second.log").read_text()[-2000:])
        # When the active beat is killed without warning
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        killed, left = time.monotonic(), count(client)
        # Then the standby takes over within the lock's timeout (and a tick or two)
        wait_until(lambda: count(client) > left, timeout=30, interval=0.1)
        took_over = time.monotonic() - killed
        assert took_over <= LOCK_S + 4, took_over
        print(f"\nbeat standby drill: {rate:.2f} heartbeats/s with two beats; the standby "
              f"sent its first {took_over:.1f} s after the active beat was killed "
              f"(lock {LOCK_S} s)")
    finally:
        stop_process(first)
        if second is not None:
            stop_process(second)
