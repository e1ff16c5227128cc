"""How many wrong keys one client address may try: after ``limit`` failed
authentications within ``window_s``, fleet-wide, every further attempt from that address
answers 429 before any key is checked (a good key's too) until the window ends.

Counted: a wrong fleet key on /v1, a wrong admin key as a Bearer token on the admin API,
a wrong admin key posted to the dashboard login. Not counted: a request with no key at
all (nothing was guessed), a good key, a dashboard session cookie (a signed token no one
can guess: refusing it would lock an operator out for nothing).

One counter per address in Redis (``schemas.keys.AUTH_FAILURES``), read and raised by one
Lua script that also sets its expiry: every API process shares it, and it disappears by
itself a window after its first failure. Retry-After is its remaining life on Redis'
clock, the same for every process. A wrong admin key is known before Redis is asked, so
its check and count are one atomic step; a fleet key needs a query between them, so many
attempts in flight at once may overshoot the limit by as many (sustained guessing may not).

The address is ``request.client.host``. Behind a reverse proxy that is the proxy's own,
unless uvicorn takes the client's from X-Forwarded-For: it does (``--proxy-headers``, on
by default) for connections from the addresses in ``--forwarded-allow-ips``, which
``llmfleet api`` leaves to the FORWARDED_ALLOW_IPS variable (127.0.0.1 and ::1 unless
set). An IPv6 address counts by its /64, which one host usually holds whole.

When Redis does not answer, the guard lets attempts through (keys are still checked) and
logs a warning: an outage of Redis must not lock every caller out.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from fastapi import Request
from redis import Redis
from redis.exceptions import RedisError

from schemas.keys import AUTH_FAILURES
from workers.api.errors import ApiError
from workers.api.state import state_of

__all__ = ["DEFAULT_LIMIT", "DEFAULT_WINDOW_S", "AuthGuard", "auth_guard", "client_address"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Failed authentications an address may make within a window; the next attempt is 429.
DEFAULT_LIMIT = 20
#: Seconds from an address's first failure until its count starts again.
DEFAULT_WINDOW_S = 60.0

# KEYS[1] the address's counter; ARGV: limit, window (ms), 1 to count a failure else 0.
# Returns {ms until the address may try again (0: it may now), failures counted}.
_ADMIT = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    ttl = tonumber(ARGV[2])
  end
  return {ttl, n}
end
if ARGV[3] == '1' then
  n = redis.call('INCR', KEYS[1])
  if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
end
return {0, n}
"""


class AuthGuard:
    """Failed authentications per client address, shared through Redis."""

    def __init__(self, redis: Redis, limit: int = DEFAULT_LIMIT,
                 window_s: float = DEFAULT_WINDOW_S) -> None:
        if limit < 1 or not 0.001 <= window_s <= 86_400 * 365:
            raise ValueError(f"an auth failure limit needs limit >= 1 and a window from 1 ms "
                             f"to a year, not {limit} and {window_s}s")
        self.limit, self.window_s = limit, window_s
        self._redis = redis
        self._admit = redis.register_script(_ADMIT)
        self._warned_at = -math.inf

    @classmethod
    def from_env(cls, redis: Redis, environ: Mapping[str, str] | None = None) -> AuthGuard:
        """Limits from LLMFLEET_AUTH_FAILURE_LIMIT and LLMFLEET_AUTH_FAILURE_WINDOW_S."""
        env = os.environ if environ is None else environ
        limit = env.get("LLMFLEET_AUTH_FAILURE_LIMIT") or str(DEFAULT_LIMIT)
        window = env.get("LLMFLEET_AUTH_FAILURE_WINDOW_S") or str(DEFAULT_WINDOW_S)
        try:
            return cls(redis, int(limit), float(window))
        except ValueError as exc:
            raise ValueError(f"LLMFLEET_AUTH_FAILURE_LIMIT={limit!r}, "
                             f"LLMFLEET_AUTH_FAILURE_WINDOW_S={window!r}: {exc}") from None

    def admit(self, address: str, *, failed: bool = False) -> None:
        """Raises the 429 while ``address`` is over its limit; else counts a failure
        when ``failed``. Sync (Redis): call it from a thread."""
        key = AUTH_FAILURES.format(address=address)
        try:
            wait_ms, count = self._admit(
                keys=[key], args=[self.limit, max(1, round(self.window_s * 1000)),
                                  int(failed)])
        except (RedisError, OSError) as exc:
            self._unreachable(exc)
            return
        if wait_ms > 0:
            raise self.refusal(address, math.ceil(wait_ms / 1000))
        if failed and count == self.limit:
            log.warning("%s: %d failed authentications; its attempts answer 429 until "
                        "the window passes", address, count)

    def attempt(self, address: str, check: Callable[[], T | None]) -> T | None:
        """``check()``'s answer, unless ``address`` is over its limit (then the 429,
        before ``check`` runs); a None answer is a wrong key and counts. Sync."""
        self.admit(address)
        found = check()
        if found is None:
            self.admit(address, failed=True)
        return found

    def refusal(self, address: str, retry_after: int) -> ApiError:
        """The 429: not worth retrying at once (``x-should-retry: false``, which OpenAI's
        SDKs obey), and Retry-After says when it is."""
        return ApiError(
            429, f"too many failed authentications from {address}: every attempt from it, "
            f"even with a good key, is refused for the next {retry_after} s",
            "rate_limit_exceeded", code="too_many_failed_authentications",
            headers={"retry-after": str(retry_after), "x-should-retry": "false"})

    def _unreachable(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._warned_at >= 60:  # once a minute, not once per request
            self._warned_at = now
            log.warning("failed authentications are not limited: Redis does not answer "
                        "(%s: %s); keys are still checked", type(exc).__name__, exc)


def client_address(request: Request) -> str:
    """Whom to count: the client's IP (IPv6 by its /64)."""
    host = request.client.host if request.client else ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:64] or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def auth_guard(request: Request) -> AuthGuard:
    """The process's guard, built with the API's state (``workers.api.app``)."""
    guard = state_of(request).auth_guard
    assert guard is not None, "create_app builds the guard with the API's state"
    return guard
