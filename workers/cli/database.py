"""The fleet's servers as a command reaches them: the settings, the fleet file, the
ledger's engine (migrated, so that a fresh embedded database answers too) and the Redis
URL. A server that does not answer is one line naming it, never a traceback (and never
its URL: it may carry a password). And who the command's user is, for the audit log."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import click
from redis.exceptions import RedisError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from schemas import FleetConfig, Settings, load_config

__all__ = ["FleetServers", "cli_actor", "database_engine", "fleet_servers"]


@dataclass(frozen=True, slots=True)
class FleetServers:
    settings: Settings
    fleet: FleetConfig
    engine: Engine
    redis_url: str


@contextmanager
def fleet_servers() -> Iterator[FleetServers]:
    """The servers, for the length of a command; their failures as one-line errors."""
    from workers.devstack.services import export_service_env, resolve_services
    from workers.store.engines import migrate, sync_engine

    settings, fleet = load_config()
    services = resolve_services(settings)
    export_service_env(services)
    assert services.database_url is not None
    try:
        migrate(services.database_url)
        yield FleetServers(settings, fleet, sync_engine(services.database_url),
                           services.redis_url)
    except (RedisError, OSError) as exc:
        raise click.ClickException(f"Redis does not answer ({type(exc).__name__}): start it "
                                   "or point REDIS_URL at one") from None
    except SQLAlchemyError as exc:
        raise click.ClickException(f"Postgres does not answer ({type(exc).__name__}): start "
                                   "it or point DATABASE_URL at one") from None


def cli_actor() -> str:
    """The audit log's actor of a command: ``cli:<os user>@<host>``."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def database_engine() -> Engine:
    """The ledger's engine, migrated, for commands that need only the database."""
    with fleet_servers() as servers:
        return servers.engine
