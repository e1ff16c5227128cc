"""Task bodies behind ``client.templates``: Postgres reads and writes on the admin queue.

Templates need the database whatever ``ENABLE_COST_TRACKING`` says (unlike the ledger's
housekeeping), so these bodies resolve it themselves. Each returns an envelope
(``{"ok": ...}``) so that a missing template reaches the agent as its typed error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from schemas import FleetError, TemplateError, WorkerError, encode_error
from tasks.names import TEMPLATES_GET, TEMPLATES_LIST, TEMPLATES_PUT
from workers.runtime import get_runtime
from workers.store import templates as templates_store
from workers.store.engines import sync_engine

__all__ = ["TEMPLATE_BODIES", "database_envelope", "templates_get", "templates_list",
           "templates_put"]


def database_envelope(work: Callable[[Engine], Any]) -> dict[str, Any]:
    """Run ``work`` against the fleet's database; every outcome an envelope."""
    url = get_runtime().settings.database_url
    if not url:
        return encode_error(TemplateError("templates need DATABASE_URL; none is set"))
    try:
        return {"ok": True, "result": work(sync_engine(url))}
    except FleetError as exc:
        return encode_error(exc)
    except SQLAlchemyError as exc:
        return encode_error(WorkerError(f"template store failed: {type(exc).__name__}"))


def templates_put(name: str, body: str, category: str | None = None) -> dict[str, Any]:
    return database_envelope(lambda engine: templates_store.put(engine, name, body, category))


def templates_get(name: str, version: int | None = None) -> dict[str, Any]:
    return database_envelope(lambda engine: templates_store.get(engine, name, version))


def templates_list(category: str | None = None) -> dict[str, Any]:
    return database_envelope(lambda engine: templates_store.list_templates(engine, category))


#: Merged into ``workers.bodies.jobs.bind_tasks``'s bodies.
TEMPLATE_BODIES: dict[str, Callable[..., Any]] = {
    TEMPLATES_PUT: templates_put, TEMPLATES_GET: templates_get, TEMPLATES_LIST: templates_list,
}
