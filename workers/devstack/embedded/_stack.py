"""Start-once, join-later bookkeeping for the embedded Redis + Postgres stack.

One data directory holds one stack. ``stack.json`` records what runs where, and an
exclusive ``flock`` on ``stack.lock`` serialises every reader/writer across processes, so
racing callers start at most one server of each kind and the rest join it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from workers.devstack.embedded._postgres import (
    PG_SUBDIR,
    postgres_answers,
    start_postgres,
    stop_postgres,
)
from workers.devstack.embedded._redis import ServerRecord, redis_answers, start_redis, stop_redis

STATE_FILE = "stack.json"
LOCK_FILE = "stack.lock"
REDIS = "redis"
POSTGRES = "postgres"


@dataclass(frozen=True)
class StackInfo:
    """Where the stack's servers answer; ``started`` is True if this call started one.

    A URL is empty when its server was not requested; ``started_servers`` names the
    servers this call started (not those it joined).
    """

    redis_url: str
    database_url: str
    data_dir: Path
    started: bool
    started_servers: tuple[str, ...] = ()


def default_data_dir() -> Path:
    """``$LLMFLEET_DATA_DIR``, else the XDG-style ``~/.local/share/llmfleet``."""
    configured = os.environ.get("LLMFLEET_DATA_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".local" / "share" / "llmfleet"


def _resolve(data_dir: Path | None, *, create: bool = True) -> Path:
    """Pin the directory's real path (servers compare against it), creating it if asked."""
    path = (data_dir or default_data_dir()).expanduser()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


@contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """Exclusive cross-process lock (filelock over flock: released by the kernel even if
    we crash)."""
    with FileLock(data_dir / LOCK_FILE):
        yield


def _valid(entry: Any) -> bool:
    """A hand-edited or truncated stack.json must not crash us; we just restart."""
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("port"), int)
        and isinstance(entry.get("pid"), int)
        and isinstance(entry.get("url"), str)
    )


def _read_state(data_dir: Path) -> dict[str, ServerRecord]:
    """Recorded servers by name; a missing or unreadable file means none."""
    try:
        raw = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {
        name: ServerRecord(port=entry["port"], pid=entry["pid"], url=entry["url"])
        for name, entry in raw.items()
        if name in (REDIS, POSTGRES) and _valid(entry)
    }


def _write_state(data_dir: Path, state: dict[str, ServerRecord]) -> None:
    """Write-then-rename, so a concurrent reader never sees half a file. The top-level
    ``redis_url``/``database_url`` are what agents read to join (tasks._discovery)."""
    document: dict[str, object] = {
        "redis_url": state[REDIS]["url"] if REDIS in state else None,
        "database_url": state[POSTGRES]["url"] if POSTGRES in state else None,
        **state,
    }
    tmp = data_dir / f"{STATE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(tmp, data_dir / STATE_FILE)


def _answers(name: str, record: ServerRecord, data_dir: Path) -> bool:
    """Is the recorded server up, and still ours (not a stranger on a reused port)?"""
    if name == REDIS:
        return redis_answers(record["port"], data_dir)
    return postgres_answers(record["port"], data_dir / PG_SUBDIR)


def ensure_stack(
    data_dir: Path | None = None, *, redis: bool = True, postgres: bool = True
) -> StackInfo:
    """Reuse the recorded servers that answer, start the rest, and return their URLs."""
    root = _resolve(data_dir)
    started: list[str] = []
    with _locked(root):
        state = _read_state(root)
        if redis and not (REDIS in state and _answers(REDIS, state[REDIS], root)):
            state[REDIS] = start_redis(root, state[REDIS]["port"] if REDIS in state else None)
            started.append(REDIS)
            _write_state(root, state)
        if postgres and not (POSTGRES in state and _answers(POSTGRES, state[POSTGRES], root)):
            state[POSTGRES], pg_started = start_postgres(
                root, state[POSTGRES]["port"] if POSTGRES in state else None)
            started.extend([POSTGRES] if pg_started else [])
            _write_state(root, state)
    return StackInfo(
        redis_url=state[REDIS]["url"] if redis else "",
        database_url=state[POSTGRES]["url"] if postgres else "",
        data_dir=root,
        started=bool(started),
        started_servers=tuple(started),
    )


def stop_stack(data_dir: Path | None = None) -> list[str]:
    """Stop whatever runs for ``data_dir`` (recorded or not), wait, and forget it.

    Returns the names of the servers that were running; ``[]`` when none was.
    """
    root = _resolve(data_dir, create=False)
    if not root.is_dir():
        return []
    stopped: list[str] = []
    with _locked(root):
        state = _read_state(root)
        if stop_redis(state.get(REDIS), root):
            stopped.append(REDIS)
        if stop_postgres(root):
            stopped.append(POSTGRES)
        (root / STATE_FILE).unlink(missing_ok=True)
    return stopped


def stack_status(data_dir: Path | None = None) -> dict[str, bool]:
    """Which recorded servers answer right now (read-only, so no lock needed)."""
    root = _resolve(data_dir, create=False)
    state = _read_state(root)
    return {name: _answers(name, record, root) for name, record in state.items()}
