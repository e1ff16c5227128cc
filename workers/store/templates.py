"""Prompt templates in Postgres (``prompt_templates``): append-only versions.

A version, once written, never changes: ledger rows and experiments name (template,
version) and must keep meaning the same text. Writing the latest body again is not a
new version, so ``put`` and ``sync_dir`` can run on every deploy without piling up
copies. Writers of one name are serialised by a transaction-scoped advisory lock, so
two agents putting at once get versions n and n+1, never a unique-key failure.

``put`` and ``sync_dir`` are written to the audit log (``template.put``,
``template.sync``): the versions they wrote and a hash of each body, never the text.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, func, insert, select, text

from schemas import TemplateError, TemplateNotFoundError
from schemas.tables import prompt_templates
from tasks.templates import check_syntax
from workers.store import audit

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


class _Put(NamedTuple):
    version: int
    created: bool
    #: The latest version before this put (None: the name is new).
    previous: int | None
    category: str | None
    sha256: str

    def audited(self) -> dict[str, Any]:
        return {"version": self.version, "new_version": self.created,
                "category": self.category, "sha256": self.sha256}


def _put(conn: Connection, name: str, body: str, category: str | None) -> _Put:
    """What the put did; the caller's transaction holds the name's lock."""
    _check_name(name, category)
    check_syntax(body, name)
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                 {"key": f"prompt_templates:{name}"})
    latest = _latest(conn, name)
    digest = hashlib.sha256(body.encode()).hexdigest()
    previous = None if latest is None else int(latest.version)
    if latest is not None and latest.body == body:
        return _Put(int(latest.version), False, previous, latest.category, digest)
    version = 1 if previous is None else previous + 1
    if category is None and latest is not None:
        category = latest.category
    conn.execute(insert(prompt_templates).values(
        name=name, version=version, category=category, body=body,
        created_at=dt.datetime.now(dt.UTC)))
    return _Put(version, True, previous, category, digest)


def put(engine: Engine, name: str, body: str, category: str | None = None, *,
        actor: str = audit.INTERNAL, address: str | None = None) -> int:
    """Store ``body`` as the next version of ``name``; the latest's version when the
    body equals the latest's. A category left out is inherited from the latest. The
    audit log records ``actor``'s put (refused when the template is not valid)."""
    with audit.recording(engine, actor, "template.put", f"template:{name}",
                         address=address, refusals=(TemplateError,)) as entry:
        with engine.begin() as conn:
            done = _put(conn, name, body, category)
        entry.before = None if done.previous is None else {"version": done.previous}
        entry.after = done.audited()
    return done.version


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


def sync_dir(engine: Engine, path: Path | str, *, actor: str = audit.INTERNAL,
             address: str | None = None) -> list[dict[str, Any]]:
    """Load every ``*.j2`` under ``path``: the file's stem is the name, its sub-folder
    the category. A file adds a version only when its text changed. One transaction,
    so a directory is synced whole or not at all; one audit row (``template.sync``,
    the directory) lists the versions it wrote."""
    root = Path(path)
    with audit.recording(engine, actor, "template.sync", f"templates:{root.resolve()}",
                         address=address, refusals=(TemplateError,)) as entry:
        report = _sync(engine, root)
        entry.after = {"written": [{k: item[k] for k in ("name", "version", "sha256")}
                                   for item in report if item["changed"]],
                       "unchanged": sum(not item["changed"] for item in report)}
    for item in report:
        del item["sha256"]
    return report


def _sync(engine: Engine, root: Path) -> list[dict[str, Any]]:
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
            done = _put(conn, file.stem, file.read_text(encoding="utf-8"), category)
            report.append({"name": file.stem, "version": done.version, "category": category,
                           "changed": done.created, "path": str(relative),
                           "sha256": done.sha256})
    return report
