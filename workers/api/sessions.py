"""The dashboard's sessions: a signed, expiring token in a cookie, never the admin key.

A token is a random nonce signed with its issue time by itsdangerous' ``TimestampSigner``
(HMAC-SHA256, keyed by the admin key, salted for this use only). So a token proves that
its holder knew the key once, lapses by itself, and dies with every session when the key
changes; the key itself never travels again after login. Nothing here does I/O:
logging out (which remembers the nonce until the token would lapse) is the caller's.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from itsdangerous import BadSignature, TimestampSigner

__all__ = ["COOKIE", "TTL_S", "Session", "issue", "verify"]

#: The cookie's name (HttpOnly, SameSite=Strict, Path=/).
COOKIE = "llmfleet_session"
#: How long a session lasts after login.
TTL_S = 12 * 3600

#: Keeps these signatures apart from any other use of an HMAC keyed by the admin key.
_SALT = "llmfleet-dashboard-session"
_NONCE = re.compile(r"^[A-Za-z0-9_-]{24}$")


@dataclass(frozen=True, slots=True)
class Session:
    """A verified token: its nonce (what logout revokes) and expiry (epoch seconds)."""

    nonce: str
    expires_at: int

    @property
    def id(self) -> str:
        """What the audit log names the session by (``dashboard:<id>``): a hash of its
        nonce, so that the log never holds what logout revokes."""
        return hashlib.sha256(f"{_SALT}:{self.nonce}".encode()).hexdigest()[:16]

    @property
    def actor(self) -> str:
        return f"dashboard:{self.id}"


class _Signer(TimestampSigner):
    """The signer, its clock settable (``now``) so that tests can travel in time."""

    def __init__(self, admin_key: str, now: float | None) -> None:
        super().__init__(admin_key, salt=_SALT, digest_method=hashlib.sha256)
        self._now = now

    def get_timestamp(self) -> int:
        return int(self._now if self._now is not None else time.time())


def issue(admin_key: str, now: float | None = None, ttl_s: int = TTL_S) -> tuple[str, Session]:
    """A fresh token and the session it stands for."""
    signer = _Signer(admin_key, now)
    nonce = secrets.token_urlsafe(18)
    return signer.sign(nonce).decode(), Session(nonce, signer.get_timestamp() + ttl_s)


def verify(token: str, admin_key: str, now: float | None = None) -> Session | None:
    """The session of a correctly signed, unexpired token, else None. The signature is
    compared in constant time; a token signed in the future is refused too."""
    signer = _Signer(admin_key, now)
    try:
        nonce, signed_at = signer.unsign(token, max_age=TTL_S, return_timestamp=True)
    except BadSignature:  # tampered, of another key, expired, malformed
        return None
    expiry = int(signed_at.timestamp()) + TTL_S
    text = nonce.decode(errors="replace")
    if not _NONCE.match(text) or signer.get_timestamp() >= expiry:
        return None
    return Session(text, expiry)
