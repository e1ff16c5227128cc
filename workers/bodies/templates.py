"""Task bodies behind ``client.templates``: Postgres reads and writes on the admin queue.

Templates need the database whatever ``ENABLE_COST_TRACKING`` says (unlike the ledger's
housekeeping). Each returns an envelope
(``{"ok": ...}``) so that a missing template reaches the agent as its typed error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from schemas import TemplateError
from tasks.names import TEMPLATES_GET, TEMPLATES_LIST, TEMPLATES_PUT
from workers.bodies.database import database_envelope
from workers.store import templates as templates_store

__all__ = ["TEMPLATE_BODIES", "templates_get", "templates_list", "templates_put"]


_NO_DATABASE = TemplateError("templates need DATABASE_URL; none is set")


def templates_put(name: str, body: str, category: str | None = None) -> dict[str, Any]:
    return database_envelope(
        lambda engine: templates_store.put(engine, name, body, category), missing=_NO_DATABASE)


def templates_get(name: str, version: int | None = None) -> dict[str, Any]:
    return database_envelope(
        lambda engine: templates_store.get(engine, name, version), missing=_NO_DATABASE)


def templates_list(category: str | None = None) -> dict[str, Any]:
    return database_envelope(
        lambda engine: templates_store.list_templates(engine, category), missing=_NO_DATABASE)


#: Bound by ``workers.bodies.bind_tasks``.
TEMPLATE_BODIES: dict[str, Callable[..., Any]] = {
    TEMPLATES_PUT: templates_put, TEMPLATES_GET: templates_get, TEMPLATES_LIST: templates_list,
}
