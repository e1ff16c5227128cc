"""The fleet's servers for a benchmark, on loopback: an embedded Redis and Postgres in a
temp directory (or REDIS_URL with a dedicated db, DATABASE_URL already migrated), the
environment of its child processes, their logs, and the ledger check that every job left
its row."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

from bench._measure import log
from schemas import Settings

__all__ = ["Ledger", "Services", "check_ledger", "child_env", "services", "tail_logs",
           "wait_flushed"]

ROOT = Path(__file__).resolve().parent.parent
PROVIDER_KEYS = ("OPENROUTER_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")


@dataclass(frozen=True)
class Services:
    redis_url: str
    database_url: str
    postgres_pid: int  # 0 when not ours


@contextlib.contextmanager
def services(tmp: Path, db: int) -> Iterator[Services]:
    """Redis: REDIS_URL with db ``db`` (flushed before and after, and only it), else an
    embedded one in ``tmp``. Postgres (the ledger): DATABASE_URL, else an embedded one
    in ``tmp``, migrated here. Embedded servers are stopped afterwards."""
    from workers.devstack.embedded import ensure_stack, stop_stack
    from workers.store.engines import migrate

    external_redis, external_pg = os.environ.get("REDIS_URL"), os.environ.get("DATABASE_URL")
    flush: redis.Redis | None = None
    try:
        info = ensure_stack(tmp, redis=not external_redis, postgres=not external_pg)
        redis_url = info.redis_url
        if external_redis:
            redis_url = urlunsplit(urlsplit(external_redis)._replace(path=f"/{db}"))
            flush = redis.Redis.from_url(redis_url)
            flush.flushdb()
        pg_pid = 0
        if not external_pg:
            migrate(info.database_url)
            pg_pid = json.loads((tmp / "stack.json").read_text())["postgres"]["pid"]
        yield Services(redis_url, external_pg or info.database_url, pg_pid)
    finally:
        if flush is not None:
            flush.flushdb()
            flush.close()
        stop_stack(tmp)


def child_env(found: Services, tmp: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROVIDER_KEYS}
    path = env.get("PYTHONPATH")
    env.update(REDIS_URL=found.redis_url, DATABASE_URL=found.database_url,
               LLMFLEET_DATA_DIR=str(tmp),
               PYTHONPATH=f"{ROOT}{os.pathsep}{path}" if path else str(ROOT))
    env.update(extra)
    return env


def tail_logs(log_dir: Path, lines: int = 15) -> None:
    for path in sorted(log_dir.glob("*.log")):
        text = path.read_text("utf-8", "replace").strip().splitlines()[-lines:]
        log(f"--- {path.name}\n" + "\n".join(text))


# -- the phases -----------------------------------------------------------------------------


@dataclass
class Ledger:
    """The accounting check: a row per fleet job this run submitted."""

    jobs: int
    rows: int | None  # None: accounting is off
    spooled: int


def wait_flushed(redis_url: str, timeout_s: float = 60.0) -> float:
    """Wait until the workers' flusher has emptied the ledger spool; the seconds it took."""
    from schemas.keys import LEDGER_SPOOL

    started = time.monotonic()
    with contextlib.closing(redis.Redis.from_url(redis_url)) as client:
        while client.llen(LEDGER_SPOOL) and time.monotonic() - started < timeout_s:
            time.sleep(0.2)
    return time.monotonic() - started


def check_ledger(settings: Settings, found: Services, agent: str, jobs: int) -> Ledger:
    """Wait (a little) for the workers' flusher to drain the spool, then count rows."""
    if not settings.enable_cost_tracking:
        return Ledger(jobs, None, 0)
    from sqlalchemy import func, select

    from schemas.keys import LEDGER_SPOOL
    from schemas.tables import job_ledger
    from workers.store.engines import sync_engine

    client = redis.Redis.from_url(found.redis_url)
    query = select(func.count()).select_from(job_ledger).where(job_ledger.c.agent == agent)
    deadline, rows, spooled = time.monotonic() + 15, 0, 0
    with contextlib.closing(client):
        while time.monotonic() < deadline:
            spooled = int(client.llen(LEDGER_SPOOL))
            with sync_engine(found.database_url).connect() as connection:
                rows = int(connection.execute(query).scalar_one())
            if rows >= jobs or (spooled == 0 and rows):
                break
            time.sleep(0.5)
    sync_engine(found.database_url).dispose()
    return Ledger(jobs, rows, spooled)
