"""Where the fleet's servers are: the environment's, else the embedded ones."""

from __future__ import annotations

import os
from dataclasses import dataclass

from schemas import Settings

__all__ = ["Services", "export_service_env", "resolve_services"]


@dataclass(frozen=True, slots=True)
class Services:
    redis_url: str
    database_url: str | None
    #: Names of the embedded servers this call started (not those it joined).
    started: tuple[str, ...] = ()
    embedded: bool = False


def resolve_services(settings: Settings, *, postgres: bool = True) -> Services:
    """REDIS_URL and DATABASE_URL when set; the rest from the embedded stack, which is
    started once under LLMFLEET_DATA_DIR and joined by every later caller."""
    need_redis = settings.redis_url is None
    need_pg = postgres and settings.database_url is None
    if not (need_redis or need_pg):
        assert settings.redis_url is not None
        return Services(settings.redis_url, settings.database_url)
    from workers.devstack.embedded import ensure_stack

    info = ensure_stack(settings.resolved_data_dir, redis=need_redis, postgres=need_pg)
    return Services(
        redis_url=settings.redis_url or info.redis_url,
        database_url=settings.database_url or (info.database_url if need_pg else None),
        started=info.started_servers,
        embedded=True,
    )


def export_service_env(services: Services) -> None:
    """Put the URLs in this process's environment, for the runtime and for children."""
    os.environ["REDIS_URL"] = services.redis_url
    if services.database_url:
        os.environ["DATABASE_URL"] = services.database_url
