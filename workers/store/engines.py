"""Postgres access for the workers: engines, migrations, and the check that the
database is migrated before a worker relies on it."""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from schemas import ConfigError, sqlalchemy_url

__all__ = ["alembic_config", "async_engine", "migrate", "migration_state", "require_migrated",
           "safe_url", "sync_engine"]

_MIGRATIONS = Path(__file__).parent / "migrations"
_lock = threading.Lock()


def safe_url(url: str) -> str:
    """The URL with any password masked, for logs and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a URL SQLAlchemy cannot parse still must not leak
        return "<unparseable database URL>"


#: Every session of ours asks Postgres to end it when its client goes quiet: a worker
#: whose host is cut off mid-transaction (its ledger flush) would otherwise hold its row
#: locks until the kernel's keepalive notices, two hours by default, and every other
#: worker's flush of the same rows would wait on them (infra/drills/multihost.py saw the
#: fleet's ledger stop). Our transactions are short: 20 s idle in one is a dead client.
SESSION_OPTIONS = ("-c idle_in_transaction_session_timeout=20000 -c tcp_keepalives_idle=10 "
                   "-c tcp_keepalives_interval=5 -c tcp_keepalives_count=3")
#: And the client side: a server gone silent is found in about 25 s.
_CONNECT_ARGS = {"options": SESSION_OPTIONS, "keepalives": 1, "keepalives_idle": 10,
                 "keepalives_interval": 5, "keepalives_count": 3}


@lru_cache(maxsize=8)
def sync_engine(database_url: str) -> Engine:
    return create_engine(sqlalchemy_url(database_url), pool_pre_ping=True, pool_size=5,
                         connect_args=_CONNECT_ARGS)


def async_engine(database_url: str) -> AsyncEngine:
    """A new async engine: bound to the event loop that first uses it."""
    return create_async_engine(sqlalchemy_url(database_url), pool_pre_ping=True, pool_size=5,
                               connect_args=_CONNECT_ARGS)


def alembic_config(database_url: str) -> Config:
    """Alembic's configuration for the shipped migrations on ``database_url``."""
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    # Alembic's ini interpolation would read a '%' in a password as a variable.
    config.set_main_option("sqlalchemy.url",
                           sqlalchemy_url(database_url).replace("%", "%%"))
    return config


def migration_state(database_url: str) -> tuple[str | None, str]:
    """(the database's revision, the newest shipped revision)."""
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    assert head is not None
    with sync_engine(database_url).connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    return current, head


def migrate(database_url: str) -> tuple[str | None, str]:
    """Bring the database to the newest revision; (revision before, revision after)."""
    with _lock:
        before, head = migration_state(database_url)
        if before != head:
            command.upgrade(alembic_config(database_url), "head")
        return before, head


def require_migrated(database_url: str) -> bool:
    """True when migrated; False when Postgres cannot be reached (the ledger spools
    meanwhile). Raises ConfigError when it answers but is not migrated."""
    try:
        current, head = migration_state(database_url)
    except SQLAlchemyError:
        return False
    if current != head:
        raise ConfigError(
            f"the database at {safe_url(database_url)} is at revision {current or 'none'}, "
            f"not {head}: run `llmfleet migrate`", key="DATABASE_URL")
    return True
