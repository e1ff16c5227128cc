"""Fleet keys of the HTTP API: made, listed, revoked and verified.

A key reads ``lfk_<key_id>_<secret>``: ``key_id`` (12 hex characters) is public and is
what lists, logs and revocations name; the secret holds 256 random bits. Only the sha256
of the whole key is stored (a slow hash buys nothing against 256 random bits), so a
leaked table grants nothing. The key names the agent and user that budgets and the
ledger see: a caller cannot claim another agent. It may carry limits of its own
(requests and tokens per minute, jobs in flight: the limit ``key-<key_id>``, enforced by
admission beside the fleet file's), the priority of its jobs, and the deadline of its
jobs that name none (they may then wait for a provider batch: ``docs/batches.md``).

Making and revoking a key is written to the audit log (``workers.store.audit``) by its
id, and so is a key first seen expired by a verifier (``key.expire``, once).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal, get_args

from sqlalchemy import Engine, insert, or_, select, update
from sqlalchemy.engine import RowMapping

from schemas import MAX_DEADLINE_S, PRIORITIES, LimitConfig, Priority
from schemas.tables import fleet_keys
from workers.store import audit

__all__ = ["LIMIT_MODES", "FleetKey", "KeyLimits", "KeyVerifier", "LimitMode", "create_key",
           "key_limits", "key_resource", "list_keys", "revoke_key"]

_KEY = re.compile(r"^lfk_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")
#: What an operator may type as a key's id: the id, or by mistake the whole key.
_KEY_ID = re.compile(r"^(?:lfk_)?([0-9a-f]{12})(?:_.*)?$", re.DOTALL)

_KEYS = fleet_keys

LimitMode = Literal["reject", "queue"]
LIMIT_MODES: tuple[LimitMode, ...] = get_args(LimitMode)


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """A key's own limits (None: no such limit), what happens over them, the priority
    of its jobs and the deadline (seconds) of those that name none. Checked when made: a
    bad value raises ValueError naming it."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    mode: LimitMode = "reject"
    priority: Priority = "normal"
    deadline: float | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "concurrency"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 1 <= value <= 2**31 - 1):
                raise ValueError(f"{name}: a whole number from 1 up, or none (got {value!r})")
        if self.mode not in LIMIT_MODES:
            raise ValueError(f"limit mode: one of {', '.join(LIMIT_MODES)} (got {self.mode!r})")
        if self.priority not in PRIORITIES:
            raise ValueError(f"priority: one of {', '.join(PRIORITIES)} "
                             f"(got {self.priority!r})")
        if self.deadline is not None and (isinstance(self.deadline, bool)
                                          or not 0 < self.deadline <= MAX_DEADLINE_S):
            raise ValueError(f"deadline: seconds in (0, {MAX_DEADLINE_S:.0f}], or none "
                             f"(got {self.deadline!r})")

    @property
    def limited(self) -> bool:
        return (self.rpm, self.tpm, self.concurrency) != (None, None, None)

    def config(self, key_id: str) -> LimitConfig | None:
        """The key's limit as a job carries it (``key-<key_id>``, scope ``key:<key_id>``),
        or None for a key with no limit."""
        if not self.limited:
            return None
        return LimitConfig(name=f"key-{key_id}", scope=f"key:{key_id}", rpm=self.rpm,
                           tpm=self.tpm, concurrency=self.concurrency, mode=self.mode)

    @classmethod
    def of_row(cls, row: RowMapping) -> KeyLimits:
        return cls(rpm=row["rpm"], tpm=row["tpm"], concurrency=row["concurrency"],
                   mode=row["limit_mode"] or "reject", priority=row["priority"] or "normal",
                   deadline=row["deadline_s"])


@dataclass(frozen=True, slots=True)
class FleetKey:
    """What a verified key stands for."""

    key_id: str
    agent: str
    user: str | None
    expires_at: dt.datetime | None
    limits: KeyLimits = KeyLimits()

    def own_limits(self) -> list[LimitConfig]:
        """What the key's jobs carry as ``key_limits``: its own limit, if it has one."""
        config = self.limits.config(self.key_id)
        return [] if config is None else [config]


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_resource(key_id: str) -> str:
    """The audit log's name of a key: ``key:<key_id>``; the id alone even when the
    whole key was typed, and never anything that is not an id."""
    match = _KEY_ID.match(key_id.strip())
    return f"key:{match[1]}" if match else "key:(not a key id)"


def create_key(engine: Engine, agent: str, user: str | None,
               expires_in: dt.timedelta | None = None, limits: KeyLimits | None = None,
               *, actor: str = audit.INTERNAL, address: str | None = None
               ) -> tuple[str, str]:
    """Store a new key for ``agent`` and ``user``, with ``limits`` of its own, its
    jobs' priority and default deadline; (key_id, key). The key is shown once: only its
    hash is kept. The audit log records ``actor`` making it (its id and settings, never the key)."""
    limits = limits or KeyLimits()
    key_id = secrets.token_hex(6)
    key = f"lfk_{key_id}_{secrets.token_urlsafe(32)}"
    now = dt.datetime.now(dt.UTC)
    values = {"agent": agent, "user_id": user,
              "expires_at": now + expires_in if expires_in else None, "rpm": limits.rpm,
              "tpm": limits.tpm, "concurrency": limits.concurrency,
              "limit_mode": limits.mode, "priority": limits.priority,
              "deadline_s": limits.deadline}
    with audit.recording(engine, actor, "key.create", key_resource(key_id),
                         address=address) as entry:
        with engine.begin() as connection:
            connection.execute(insert(_KEYS).values(
                key_id=key_id, key_hash=_hash(key), created_at=now, **values))
        entry.after = values
    return key_id, key


_LISTED = ("key_id", "agent", "user_id", "created_at", "expires_at", "revoked_at", "rpm",
           "tpm", "concurrency", "limit_mode", "priority", "deadline_s")


def list_keys(engine: Engine) -> list[dict[str, Any]]:
    """Every key's id, agent, user, dates, limits, priority and default deadline (never
    its hash), newest first."""
    columns = [_KEYS.c[n] for n in _LISTED]
    with engine.connect() as connection:
        rows = connection.execute(select(*columns).order_by(_KEYS.c.created_at.desc()))
        return [dict(row) for row in rows.mappings()]


def key_limits(engine: Engine) -> list[LimitConfig]:
    """The own limits of every live key (neither revoked nor expired) that has one,
    oldest key first: what ``llmfleet limits`` and the admin API report beside the
    fleet file's."""
    now = dt.datetime.now(dt.UTC)
    query = select(_KEYS).where(
        _KEYS.c.revoked_at.is_(None),
        or_(_KEYS.c.expires_at.is_(None), _KEYS.c.expires_at > now),
        or_(_KEYS.c.rpm.is_not(None), _KEYS.c.tpm.is_not(None),
            _KEYS.c.concurrency.is_not(None))).order_by(_KEYS.c.created_at)
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    configs = (KeyLimits.of_row(row).config(row["key_id"]) for row in rows)
    return [config for config in configs if config is not None]


def revoke_key(engine: Engine, key_id: str, *, actor: str = audit.INTERNAL,
               address: str | None = None) -> bool:
    """Revoke a key by its id; False when no live key has that id. The audit log
    records ``actor``'s attempt either way (refused when there was nothing to revoke)."""
    now = dt.datetime.now(dt.UTC)
    with audit.recording(engine, actor, "key.revoke", key_resource(key_id),
                         address=address) as entry:
        with engine.begin() as connection:
            result = connection.execute(
                update(_KEYS).where(_KEYS.c.key_id == key_id, _KEYS.c.revoked_at.is_(None))
                .values(revoked_at=now))
        if result.rowcount == 0:
            entry.outcome, entry.after = "refused", {"reason": "no live key has this id"}
            return False
        entry.before, entry.after = {"revoked_at": None}, {"revoked_at": now}
    return True


class KeyVerifier:
    """Checks a presented key against the table, remembering good answers for
    ``ttl_s`` seconds at most (so that a revoke bites within that), and never past
    the key's own expiry.

    Wrong answers are remembered too, for ``wrong_ttl_s``, so that a wrong key repeated
    costs no query. That never refuses a good key: a key made meanwhile is another key
    (another hash), and a key once wrong (unknown, revoked, expired) stays wrong. Both
    memories hold sha256 digests, never keys, and are bounded; how many wrong keys a
    client may try is ``workers.api.auth_guard``'s business."""

    def __init__(self, engine: Engine, ttl_s: float = 5.0, wrong_ttl_s: float = 30.0,
                 max_wrong: int = 10_000) -> None:
        self._engine = engine
        self._ttl, self._wrong_ttl, self._max_wrong = ttl_s, wrong_ttl_s, max_wrong
        self._lock = threading.Lock()
        self._known: dict[str, tuple[float, FleetKey]] = {}  # sha256 -> (until, key)
        # Keys whose expiry this process has written to the audit log (bounded).
        self._expiry_noted: set[str] = set()
        # sha256 -> until; one TTL for all, so insertion order is expiry order and the
        # oldest entry is the first to go.
        self._wrong: OrderedDict[str, float] = OrderedDict()

    def remembered(self, key: str) -> FleetKey | None:
        """The key's answer if it verified as good within ``ttl_s``: no query, no lock
        held long; None when it must be looked up (or is wrong)."""
        digest, now = _hash(key), time.monotonic()
        with self._lock:
            cached = self._known.get(digest)
        return cached[1] if cached is not None and cached[0] > now else None

    def verify(self, key: str) -> FleetKey | None:
        """The key's agent and user, or None for a missing, wrong, revoked or expired key."""
        match = _KEY.match(key)
        if match is None:
            return None
        digest, now = _hash(key), time.monotonic()
        with self._lock:
            cached = self._known.get(digest)
            wrong_until = self._wrong.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        if wrong_until is not None and wrong_until > now:
            return None
        found = self._lookup(match[1], digest)
        if found is None:
            self._remember_wrong(digest, now)
        else:
            self._remember(digest, found, now)
        return found

    def _remember(self, digest: str, found: FleetKey, now: float) -> None:
        until = now + self._ttl
        if found.expires_at is not None:
            left = (found.expires_at - dt.datetime.now(dt.UTC)).total_seconds()
            until = min(until, now + left)
        with self._lock:
            if len(self._known) > 10_000:
                self._known.clear()
            self._known[digest] = (until, found)

    def _remember_wrong(self, digest: str, now: float) -> None:
        with self._lock:
            self._wrong.pop(digest, None)
            self._wrong[digest] = now + self._wrong_ttl
            while self._wrong and (len(self._wrong) > self._max_wrong
                                   or next(iter(self._wrong.values())) <= now):
                self._wrong.popitem(last=False)

    def _lookup(self, key_id: str, digest: str) -> FleetKey | None:
        query = select(_KEYS).where(_KEYS.c.key_id == key_id)
        with self._engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        if row is None or not hmac.compare_digest(row["key_hash"], digest):
            return None
        if row["revoked_at"] is not None:
            return None
        expires = row["expires_at"]
        if expires is not None and expires <= dt.datetime.now(dt.UTC):
            self._note_expiry(key_id, expires)
            return None
        return FleetKey(key_id=key_id, agent=row["agent"], user=row["user_id"],
                        expires_at=expires, limits=KeyLimits.of_row(row))

    def _note_expiry(self, key_id: str, expires: dt.datetime) -> None:
        """The audit log's ``key.expire``, once per key however many processes see it
        (``record_once``), and one query per key and process at most."""
        with self._lock:
            if key_id in self._expiry_noted:
                return
            if len(self._expiry_noted) > 10_000:
                self._expiry_noted.clear()
            self._expiry_noted.add(key_id)
        audit.record_once(self._engine, audit.SYSTEM, "key.expire", key_resource(key_id),
                          before={"expires_at": expires},
                          after={"seen_expired_at": dt.datetime.now(dt.UTC)})
