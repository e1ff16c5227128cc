"""The HTTP API's files and batches in Postgres (``api_files``, ``api_batches``,
``api_batch_jobs``): any API process answers for any of them, and a restart loses
nothing. Every read names the fleet key, so a key sees its own files and batches only."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.engine import RowMapping

from schemas.tables import api_batch_jobs, api_batches, api_files

__all__ = ["add_file", "batch_jobs", "create_batch", "delete_file", "get_batch", "get_file",
           "list_batches", "new_id", "set_batch"]


def new_id(prefix: str) -> str:
    """``file-…`` or ``batch_…``: OpenAI's prefixes, 24 random hex characters."""
    return f"{prefix}{secrets.token_hex(12)}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def add_file(engine: Engine, key_id: str, purpose: str, filename: str, content: bytes
             ) -> dict[str, Any]:
    """Store a file of ``key_id``; its row without the content."""
    row = {"id": new_id("file-"), "key_id": key_id, "purpose": purpose,
           "filename": filename[:255], "bytes": len(content), "created_at": _now()}
    with engine.begin() as connection:
        connection.execute(insert(api_files).values(content=content, **row))
    return row


def get_file(engine: Engine, key_id: str, file_id: str, *, content: bool = False
             ) -> RowMapping | None:
    """A file of ``key_id`` (with its content if asked), else None."""
    columns = [c for c in api_files.c if content or c.name != "content"]
    query = select(*columns).where(api_files.c.id == file_id, api_files.c.key_id == key_id)
    with engine.connect() as connection:
        return connection.execute(query).mappings().first()


def delete_file(engine: Engine, key_id: str, file_id: str) -> bool:
    with engine.begin() as connection:
        done = connection.execute(delete(api_files).where(
            api_files.c.id == file_id, api_files.c.key_id == key_id))
    return bool(done.rowcount)


def create_batch(engine: Engine, batch: dict[str, Any], jobs: list[dict[str, Any]]) -> None:
    """The batch and its lines (each with its job id) in one transaction, before any
    job is sent."""
    with engine.begin() as connection:
        connection.execute(insert(api_batches).values(**batch))
        if jobs:
            connection.execute(insert(api_batch_jobs), jobs)


def get_batch(engine: Engine, key_id: str, batch_id: str) -> RowMapping | None:
    query = select(api_batches).where(api_batches.c.id == batch_id,
                                      api_batches.c.key_id == key_id)
    with engine.connect() as connection:
        return connection.execute(query).mappings().first()


def list_batches(engine: Engine, key_id: str, after: str | None, limit: int
                 ) -> list[RowMapping]:
    """The key's batches, newest first, those older than ``after`` when named."""
    query = select(api_batches).where(api_batches.c.key_id == key_id)
    if after is not None:
        anchor = get_batch(engine, key_id, after)
        if anchor is not None:
            query = query.where(
                (api_batches.c.created_at < anchor["created_at"])
                | ((api_batches.c.created_at == anchor["created_at"])
                   & (api_batches.c.id < anchor["id"])))
    query = query.order_by(api_batches.c.created_at.desc(), api_batches.c.id.desc())
    with engine.connect() as connection:
        return list(connection.execute(query.limit(limit)).mappings())


def batch_jobs(engine: Engine, batch_id: str) -> list[RowMapping]:
    query = select(api_batch_jobs).where(api_batch_jobs.c.batch_id == batch_id).order_by(
        api_batch_jobs.c.line)
    with engine.connect() as connection:
        return list(connection.execute(query).mappings())


def set_batch(engine: Engine, batch_id: str, expected: tuple[str, ...],
              files: list[tuple[str, str, bytes]] | None = None, **values: Any) -> bool:
    """Move a batch on, only from one of the ``expected`` statuses (two API processes
    may try at once: one wins), storing ``files`` (id, name, content) in the same
    transaction. False when another got there first."""
    with engine.begin() as connection:
        done = connection.execute(update(api_batches).where(
            api_batches.c.id == batch_id, api_batches.c.status.in_(expected)).values(**values))
        if not done.rowcount:
            return False
        key_id = connection.execute(select(api_batches.c.key_id).where(
            api_batches.c.id == batch_id)).scalar_one()
        for file_id, name, content in files or []:
            connection.execute(insert(api_files).values(
                id=file_id, key_id=key_id, purpose="batch_output", filename=name,
                bytes=len(content), content=content, created_at=_now()))
    return True
