"""The dashboard's sessions: a signed, expiring token in a cookie, never the admin key.

A token reads ``v1.<expiry epoch>.<nonce>.<signature>``; the signature is HMAC-SHA256
keyed by the admin key over the version, expiry and nonce. So a token proves that its
holder knew the key once, lapses by itself, and dies with every session when the key
changes; the key itself never travels again after login. Nothing here does I/O:
logging out (which remembers the nonce until the token would lapse) is the caller's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

__all__ = ["COOKIE", "TTL_S", "Session", "issue", "verify"]

#: The cookie's name (HttpOnly, SameSite=Strict, Path=/).
COOKIE = "llmfleet_session"
#: How long a session lasts after login.
TTL_S = 12 * 3600

_VERSION = "v1"
#: Keeps these signatures apart from any other use of an HMAC keyed by the admin key.
_DOMAIN = b"llmfleet-dashboard-session\x00"
_TOKEN = re.compile(r"^v1\.(\d{1,12})\.([A-Za-z0-9_-]{22,64})\.([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class Session:
    """A verified token: its nonce (what logout revokes) and expiry (epoch seconds)."""

    nonce: str
    expires_at: int


def _sign(admin_key: str, expiry: int, nonce: str) -> str:
    message = _DOMAIN + f"{_VERSION}.{expiry}.{nonce}".encode()
    digest = hmac.new(admin_key.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue(admin_key: str, now: float | None = None, ttl_s: int = TTL_S) -> tuple[str, Session]:
    """A fresh token and the session it stands for."""
    expiry = int(now if now is not None else time.time()) + ttl_s
    nonce = secrets.token_urlsafe(18)
    token = f"{_VERSION}.{expiry}.{nonce}.{_sign(admin_key, expiry, nonce)}"
    return token, Session(nonce, expiry)


def verify(token: str, admin_key: str, now: float | None = None) -> Session | None:
    """The session of a well-formed, correctly signed, unexpired token, else None.
    The signature is compared in constant time; an expiry further off than a fresh
    token's is refused too (no token of ours ever has one)."""
    match = _TOKEN.match(token)
    if match is None:
        return None
    expiry, nonce, signature = int(match[1]), match[2], match[3]
    if not hmac.compare_digest(signature.encode(), _sign(admin_key, expiry, nonce).encode()):
        return None
    now = now if now is not None else time.time()
    if not now < expiry <= now + TTL_S + 60:
        return None
    return Session(nonce, expiry)
