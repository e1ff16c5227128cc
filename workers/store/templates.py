"""Prompt templates in Postgres (``prompt_templates``): append-only versions.

A version, once written, never changes: ledger rows and experiments name (template,
version) and must keep meaning the same text. Writing the latest body again is not a
new version, so ``put`` and ``sync_dir`` can run on every deploy without piling up
copies. Writers of one name are serialised by a transaction-scoped advisory lock, so
two agents putting at once get versions n and n+1, never a unique-key failure.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, text

from schemas import TemplateError, TemplateNotFoundError
from schemas.tables import prompt_templates
from tasks.templates import check_syntax

__all__ = ["get", "list_templates", "put", "sync_dir"]

_T = prompt_templates.c
#: Highest a name or category may be (the columns' width).
_MAX_NAME = 200


def _row(row: Any) -> dict[str, Any]:
    return {"name": row.name, "version": row.version, "category": row.category,
            "body": row.body, "created_at": row.created_at.isoformat()}


def _latest(conn: Connection, name: str) -> Any:
    query = (select(prompt_templates).where(_T.name == name)
             .order_by(_T.version.desc()).limit(1))
    return conn.execute(query).first()


def _check_name(name: str, category: str | None) -> None:
    if not name or len(name) > _MAX_NAME or (category is not None and len(category) > _MAX_NAME):
        raise TemplateError(f"template name {name!r} or its category is empty or too long",
                            template=name)


def _put(conn: Connection, name: str, body: str, category: str | None) -> tuple[int, bool]:
    """(version, whether it is new); the caller's transaction holds the name's lock."""
    _check_name(name, category)
    check_syntax(body, name)
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                 {"key": f"prompt_templates:{name}"})
    latest = _latest(conn, name)
    if latest is not None and latest.body == body:
        return int(latest.version), False
    version = 1 if latest is None else int(latest.version) + 1
    if category is None and latest is not None:
        category = latest.category
    conn.execute(insert(prompt_templates).values(
        name=name, version=version, category=category, body=body,
        created_at=dt.datetime.now(dt.UTC)))
    return version, True


def put(engine: Engine, name: str, body: str, category: str | None = None) -> int:
    """Store ``body`` as the next version of ``name``; the latest's version when the
    body equals the latest's. A category left out is inherited from the latest."""
    with engine.begin() as conn:
        return _put(conn, name, body, category)[0]


def get(engine: Engine, name: str, version: int | None = None) -> dict[str, Any]:
    """One version (the latest when ``version`` is None) as a JSON-able dict."""
    with engine.connect() as conn:
        if version is None:
            row = _latest(conn, name)
        else:
            row = conn.execute(select(prompt_templates).where(
                _T.name == name, _T.version == version)).first()
    if row is None:
        which = "any version" if version is None else f"version {version}"
        raise TemplateNotFoundError(f"no template {name!r} at {which}",
                                    template=name, version=version)
    return _row(row)


def list_templates(engine: Engine, category: str | None = None) -> list[dict[str, Any]]:
    """The latest version of each template, by name; of one category if given."""
    newest = (select(_T.name, func.max(_T.version).label("version"))
              .group_by(_T.name).subquery())
    query = (select(prompt_templates)
             .join(newest, (newest.c.name == _T.name) & (newest.c.version == _T.version))
             .order_by(_T.name))
    if category is not None:
        query = query.where(_T.category == category)
    with engine.connect() as conn:
        return [_row(row) for row in conn.execute(query)]


def sync_dir(engine: Engine, path: Path | str) -> list[dict[str, Any]]:
    """Load every ``*.j2`` under ``path``: the file's stem is the name, its sub-folder
    the category. A file adds a version only when its text changed. One transaction,
    so a directory is synced whole or not at all."""
    root = Path(path)
    if not root.is_dir():
        raise TemplateError(f"{root} is not a directory")
    files = sorted(root.rglob("*.j2"))
    stems = [file.stem for file in files]
    twice = sorted({stem for stem in stems if stems.count(stem) > 1})
    if twice:  # one name, two texts: each sync would flip-flop between them
        raise TemplateError(f"{root}: more than one file is named {twice[0]}.j2",
                            template=twice[0])
    report: list[dict[str, Any]] = []
    with engine.begin() as conn:
        for file in files:
            relative = file.relative_to(root)
            category = "/".join(relative.parent.parts) or None
            version, created = _put(conn, file.stem, file.read_text(encoding="utf-8"),
                                    category)
            report.append({"name": file.stem, "version": version, "category": category,
                           "changed": created, "path": str(relative)})
    return report
