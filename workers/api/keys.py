"""Fleet keys of the HTTP API: made, listed, revoked and verified.

A key reads ``lfk_<key_id>_<secret>``: ``key_id`` (12 hex characters) is public and is
what lists, logs and revocations name; the secret holds 256 random bits. Only the sha256
of the whole key is stored (a slow hash buys nothing against 256 random bits), so a
leaked table grants nothing. The key names the agent and user that budgets and the
ledger see: a caller cannot claim another agent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, insert, select, update

from schemas.tables import fleet_keys

__all__ = ["FleetKey", "KeyVerifier", "create_key", "list_keys", "revoke_key"]

_KEY = re.compile(r"^lfk_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")


@dataclass(frozen=True, slots=True)
class FleetKey:
    """What a verified key stands for."""

    key_id: str
    agent: str
    user: str | None
    expires_at: dt.datetime | None


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(engine: Engine, agent: str, user: str | None,
               expires_in: dt.timedelta | None = None) -> tuple[str, str]:
    """Store a new key for ``agent`` and ``user``; (key_id, key). The key is shown
    once: only its hash is kept."""
    key_id = secrets.token_hex(6)
    key = f"lfk_{key_id}_{secrets.token_urlsafe(32)}"
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as connection:
        connection.execute(insert(fleet_keys).values(
            key_id=key_id, key_hash=_hash(key), agent=agent, user_id=user, created_at=now,
            expires_at=now + expires_in if expires_in else None))
    return key_id, key


def list_keys(engine: Engine) -> list[dict[str, Any]]:
    """Every key's id, agent, user and dates (never its hash), newest first."""
    columns = [fleet_keys.c[n] for n in ("key_id", "agent", "user_id", "created_at",
                                         "expires_at", "revoked_at")]
    with engine.connect() as connection:
        rows = connection.execute(select(*columns).order_by(fleet_keys.c.created_at.desc()))
        return [dict(row) for row in rows.mappings()]


def revoke_key(engine: Engine, key_id: str) -> bool:
    """Revoke a key by its id; False when no live key has that id."""
    with engine.begin() as connection:
        result = connection.execute(
            update(fleet_keys).where(fleet_keys.c.key_id == key_id,
                                     fleet_keys.c.revoked_at.is_(None))
            .values(revoked_at=dt.datetime.now(dt.UTC)))
    return result.rowcount > 0


class KeyVerifier:
    """Checks a presented key against the table, remembering good answers for
    ``ttl_s`` seconds at most (so that a revoke bites within that), and never past
    the key's own expiry. Wrong keys are not remembered: each costs one indexed query."""

    def __init__(self, engine: Engine, ttl_s: float = 5.0) -> None:
        self._engine = engine
        self._ttl = ttl_s
        self._lock = threading.Lock()
        self._known: dict[str, tuple[float, FleetKey]] = {}  # sha256 -> (until, key)

    def verify(self, key: str) -> FleetKey | None:
        """The key's agent and user, or None for a missing, wrong, revoked or expired key."""
        match = _KEY.match(key)
        if match is None:
            return None
        digest, now = _hash(key), time.monotonic()
        with self._lock:
            cached = self._known.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = self._lookup(match[1], digest)
        if found is not None:
            until = now + self._ttl
            if found.expires_at is not None:
                left = (found.expires_at - dt.datetime.now(dt.UTC)).total_seconds()
                until = min(until, now + left)
            with self._lock:
                if len(self._known) > 10_000:
                    self._known.clear()
                self._known[digest] = (until, found)
        return found

    def _lookup(self, key_id: str, digest: str) -> FleetKey | None:
        query = select(fleet_keys).where(fleet_keys.c.key_id == key_id)
        with self._engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        if row is None or not hmac.compare_digest(row["key_hash"], digest):
            return None
        if row["revoked_at"] is not None:
            return None
        expires = row["expires_at"]
        if expires is not None and expires <= dt.datetime.now(dt.UTC):
            return None
        return FleetKey(key_id=key_id, agent=row["agent"], user=row["user_id"],
                        expires_at=expires)
