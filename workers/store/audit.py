"""The audit log (``audit_log``): one row per administrative action, never changed.

Who did what to which resource, when, from where, with what outcome, and the resource's
state before and after where it has one. Rows are only ever inserted: a trigger
(migration 0009) refuses UPDATE, DELETE and TRUNCATE, except the DELETE of ``purge``,
which sets ``llmfleet.audit_purge`` for its own transaction only (``SET LOCAL``).

Recording is observational, like a metrics hook: ``record`` never raises into the
action it describes. A write that fails is logged at ERROR and counted
(``write_failures``); the action has already happened and stands.

No secret is ever written: callers pass ids (a fleet key's ``key_id``, never the key),
and every value is scrubbed on the way in besides: fields named like a secret
(``key``, ``secret``, ``password``, ``token``, ...) are replaced, and a fleet key found
in any text keeps only its public id (``lfk_<id>_[redacted]``).

Actors: ``admin-key`` (the admin key as a Bearer token), ``dashboard:<session id>`` (a
dashboard session, its id a hash of its nonce), ``cli:<os user>@<host>``, ``system``
(the fleet itself, such as the API noticing a key expired), ``anonymous`` (a failed
login) and ``internal`` (code that named no actor: an agent's admin task through
``client.templates`` or ``client.experiments``, or a direct call of the store).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Engine, exists, func, insert, literal, select, text
from sqlalchemy.sql.elements import ColumnElement

from schemas.tables import audit_log

__all__ = ["INTERNAL", "MAX_LIMIT", "PURGE_SETTING", "SYSTEM", "Entry", "Outcome", "purge",
           "query", "record", "record_once", "recording", "scrub", "write_failures"]

log = logging.getLogger(__name__)

Outcome = Literal["ok", "refused", "error"]
#: The actor of code that named none (an agent's admin task, a direct store call).
INTERNAL = "internal"
#: The actor of what the fleet does by itself.
SYSTEM = "system"
#: The session setting that lets ``purge``'s DELETE past the trigger (migration 0009).
PURGE_SETTING = "llmfleet.audit_purge"
#: Rows one query answers at most.
MAX_LIMIT = 1000

_A = audit_log.c
_REDACTED = "[redacted]"
_SECRET_NAMES = frozenset({"key", "secret", "password", "passwd", "token", "key_hash",
                           "authorization", "cookie", "admin_key", "api_key"})
_SECRET_SUFFIXES = ("_secret", "_password", "_token", "_api_key", "_admin_key")
_FLEET_KEY = re.compile(r"lfk_([0-9a-f]{12})_[A-Za-z0-9_-]+")
_OUTCOMES = ("ok", "refused", "error")

_failures = 0
_failures_lock = threading.Lock()


def write_failures() -> int:
    """Audit writes that failed in this process since it started."""
    return _failures


def _secret_name(name: str) -> bool:
    lowered = name.lower()
    return lowered in _SECRET_NAMES or lowered.endswith(_SECRET_SUFFIXES)


def scrub(value: Any) -> Any:
    """``value`` as JSON (datetimes as ISO text), with every secret-named field
    replaced and every fleet key cut to its public id."""
    if isinstance(value, dict):
        return {str(k): _REDACTED if _secret_name(str(k)) else scrub(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub(v) for v in value]
    if isinstance(value, str):
        return _FLEET_KEY.sub(r"lfk_\1_" + _REDACTED, value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return scrub(str(value))


def _values(actor: str, action: str, resource: str, before: Any, after: Any,
            outcome: Outcome, address: str | None) -> dict[str, Any]:
    if outcome not in _OUTCOMES:
        raise ValueError(f"outcome: one of {', '.join(_OUTCOMES)} (got {outcome!r})")
    return {"actor": scrub(actor)[:300], "action": action[:100],
            "resource": scrub(resource)[:500],
            "before": None if before is None else json.loads(json.dumps(scrub(before))),
            "after": None if after is None else json.loads(json.dumps(scrub(after))),
            "outcome": outcome, "address": None if address is None else address[:100]}


def _failed(action: str, resource: str, exc: BaseException) -> None:
    global _failures
    with _failures_lock:
        _failures += 1
    log.error("audit: the record of %s on %s was not written (%s: %s); %d audit write(s) "
              "failed in this process", action, scrub(resource), type(exc).__name__,
              scrub(str(exc))[:300], _failures)


def record(engine: Engine, actor: str, action: str, resource: str, before: Any = None,
           after: Any = None, outcome: Outcome = "ok", address: str | None = None) -> bool:
    """Append one row; True when written. Never raises: a failure is logged at ERROR
    and counted, and the caller's action goes on."""
    try:
        values = _values(actor, action, resource, before, after, outcome, address)
        with engine.begin() as connection:
            connection.execute(insert(audit_log).values(**values))
    except Exception as exc:  # observational: never fails the action it describes
        _failed(action, resource, exc)
        return False
    return True


def record_once(engine: Engine, actor: str, action: str, resource: str, before: Any = None,
                after: Any = None, outcome: Outcome = "ok",
                address: str | None = None) -> bool:
    """``record``, unless the log already holds ``action`` on ``resource`` (such as a
    key seen expired: once, however many processes see it); True when written. Writers
    of one (action, resource) take turns on an advisory lock. Never raises."""
    try:
        values = _values(actor, action, resource, before, after, outcome, address)
        seen = exists().where(_A.action == values["action"],
                              _A.resource == values["resource"])
        columns = list(values)
        rows = select(*[literal(values[c], audit_log.c[c].type) for c in columns]) \
            .where(~seen)
        with engine.begin() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                               {"k": f"audit_log:{values['action']}:{values['resource']}"})
            written = connection.execute(insert(audit_log).from_select(columns, rows)
                                         .returning(_A.id)).first()
    except Exception as exc:  # observational, as record
        _failed(action, resource, exc)
        return False
    return written is not None


@dataclass(slots=True)
class Entry:
    """The row ``recording`` writes, filled in by the action as it learns."""

    resource: str
    before: Any = None
    after: Any = None
    outcome: Outcome = "ok"


@contextmanager
def recording(engine: Engine, actor: str, action: str, resource: str, *,
              address: str | None = None,
              refusals: tuple[type[BaseException], ...] = ()) -> Iterator[Entry]:
    """One row for the action inside the block, however it ends: as the block left its
    ``Entry``; ``refused`` (with the error) when it raised one of ``refusals``;
    ``error`` when it raised anything else. The exception goes on either way."""
    entry = Entry(resource)
    try:
        yield entry
    except BaseException as exc:
        entry.outcome = "refused" if isinstance(exc, refusals) else "error"
        entry.after = {"error": type(exc).__name__, "message": str(exc)[:500]}
        raise
    finally:
        record(engine, actor, action, entry.resource, entry.before, entry.after,
               entry.outcome, address)


def _match(column: Any, value: str) -> ColumnElement[bool]:
    """Equal; or, with a trailing ``*``, starting with the rest (``key.*``)."""
    if not value.endswith("*"):
        return column == value  # type: ignore[no-any-return]
    prefix = value[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(prefix + "%", escape="\\")  # type: ignore[no-any-return]


def _row(row: Any) -> dict[str, Any]:
    return {"id": row.id, "at": row.at.isoformat(), "actor": row.actor,
            "action": row.action, "resource": row.resource, "before": row.before,
            "after": row.after, "outcome": row.outcome, "address": row.address}


def query(engine: Engine, *, since: dt.datetime | None = None,
          until: dt.datetime | None = None, actor: str | None = None,
          action: str | None = None, resource: str | None = None, limit: int = 100,
          offset: int = 0) -> list[dict[str, Any]]:
    """Rows at or after ``since`` and before ``until``, of one actor, action and
    resource (each exact, or a prefix ending in ``*``), newest first; JSON-able."""
    if not 1 <= limit <= MAX_LIMIT or offset < 0:
        raise ValueError(f"limit: 1 to {MAX_LIMIT}, offset: 0 or more "
                         f"(got {limit} and {offset})")
    where: list[ColumnElement[bool]] = []
    if since is not None:
        where.append(_A.at >= since)
    if until is not None:
        where.append(_A.at < until)
    for column, value in ((_A.actor, actor), (_A.action, action), (_A.resource, resource)):
        if value:
            where.append(_match(column, value))
    statement = (select(audit_log).where(*where)
                 .order_by(_A.at.desc(), _A.id.desc()).limit(limit).offset(offset))
    with engine.connect() as connection:
        return [_row(row) for row in connection.execute(statement)]


def purge(engine: Engine, older_than: dt.datetime) -> int:
    """Delete the rows from before ``older_than``; how many. The one DELETE the
    trigger lets through: it sets ``llmfleet.audit_purge`` for this transaction only."""
    with engine.begin() as connection:
        connection.execute(select(func.set_config(PURGE_SETTING, "on", True)))
        result = connection.execute(audit_log.delete().where(_A.at < older_than))
    return int(result.rowcount)
