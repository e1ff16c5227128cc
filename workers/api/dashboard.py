"""``/dashboard``: the operators' page, its files, and its login and logout.

The page is static: every figure it shows comes from the admin API by fetch(), so the
same key check guards it whether the caller sends a Bearer header or holds a session
cookie. Login takes the admin key in a POST body (JSON or a form, never the URL) and
answers with a signed session token in an HttpOnly, SameSite=Strict cookie; the key is
not stored anywhere. Every file the page needs ships in this package (plotly.js comes
from the ``plotly`` wheel), so it works with no network.

Every login, refused login and logout is an audit row (``dashboard.login``,
``dashboard.login_failed``, ``dashboard.logout``) naming the session by its id, never by
its token, and the client's address. A login refused with 429 (the address is over its
failure limit) is not one: the guard refuses those without reading the key, and a flood
of them must not become a flood of rows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import gzip
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from importlib import metadata, resources
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from redis.exceptions import RedisError
from starlette.datastructures import MutableHeaders

from schemas.keys import DASHBOARD_LOGGED_OUT
from workers.api import sessions
from workers.api.admin_routes import admin_session, audit_address
from workers.api.auth_guard import auth_guard, client_address
from workers.api.errors import ApiError, error_response
from workers.api.state import state_of
from workers.store import audit

__all__ = ["PREFIX", "SECURITY_HEADERS", "DashboardHeaders", "plotly_name", "router"]

log = logging.getLogger(__name__)

PREFIX = "/dashboard"
#: Scripts only from here (no inline script anywhere). Inline styles are allowed because
#: plotly.js writes style attributes and rules at run time; without them the browser
#: blocks its drawing (the browser tests' console check shows it).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {"content-security-policy": CSP, "x-frame-options": "DENY",
                    "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}
#: The longest login body read: a key, in JSON or a form.
_MAX_LOGIN_BYTES = 4096
#: A wrong key also waits this long, which slows guessing within the failure limit
#: (``workers.api.auth_guard``) at no cost to an operator.
_REFUSAL_DELAY_S = 0.25
_OWN_FILES = {"dashboard.js": "text/javascript", "panels.js": "text/javascript",
              "charts.js": "text/javascript", "dashboard.css": "text/css"}

_NO_PLOTLY = "plotly-missing.min.js"

router = APIRouter(prefix=PREFIX, include_in_schema=False)


class DashboardHeaders:
    """Security headers on every answer under /dashboard; and no caching of anything
    there but its static files (the page, login and logout answers stay out of caches)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if "cache-control" not in headers:
                    headers["cache-control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    gzipped: bytes | None
    media_type: str
    etag: str
    cache_control: str


@functools.cache
def plotly_name() -> str:
    """The URL name of plotly.js, versioned so that a year's caching stays right."""
    try:
        return f"plotly-{metadata.version('plotly')}.min.js"
    except metadata.PackageNotFoundError:  # a broken install: the charts say so
        return _NO_PLOTLY


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


def _asset(name: str) -> _Asset | None:
    """A file the page loads; None for any other name (before the cache, so that
    made-up names cannot grow it)."""
    known = name in _OWN_FILES or name == plotly_name() != _NO_PLOTLY
    return _load(name) if known else None


@functools.cache
def _load(name: str) -> _Asset:
    """Read once per process; plotly.js is gzipped once too (4.8 MB; about 1.5 MB gzipped)."""
    if name in _OWN_FILES:
        body = resources.files("workers.api").joinpath("dashboard_static", name).read_bytes()
        return _Asset(body, None, _OWN_FILES[name], _etag(body), "no-cache")
    body = resources.files("plotly").joinpath("package_data", "plotly.min.js").read_bytes()
    return _Asset(body, gzip.compress(body, 6), "text/javascript", _etag(body),
                  "public, max-age=31536000, immutable")


@functools.cache
def _index() -> bytes:
    page = resources.files("workers.api").joinpath("dashboard_static", "index.html")
    return page.read_text().replace("{{plotly_js}}", plotly_name()).encode()


@router.get("")
async def page() -> Response:
    """The page: a login form, then the panels (drawn by the scripts, from the admin API)."""
    return Response(_index(), media_type="text/html; charset=utf-8")


@router.get("/static/{name}")
async def static(name: str, request: Request) -> Response:
    asset = await asyncio.to_thread(_asset, name)
    if asset is None:
        raise ApiError(404, f"no dashboard file {name!r}", code="not_found")
    headers = {"etag": asset.etag, "cache-control": asset.cache_control,
               "vary": "accept-encoding"}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    body = asset.body
    if asset.gzipped is not None and "gzip" in request.headers.get("accept-encoding", ""):
        body, headers["content-encoding"] = asset.gzipped, "gzip"
    return Response(body, media_type=asset.media_type, headers=headers)


async def _posted_key(request: Request) -> tuple[str, bool]:
    """(the key in the body, whether the body was a form)."""
    if "key" in request.query_params:
        raise ApiError(400, "send the admin key in the request body, never in the URL",
                       param="key", code="key_in_url")
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    raw = await request.body()
    if len(raw) > _MAX_LOGIN_BYTES:
        raise ApiError(413, "the login body is too large", code="request_too_large")
    value: Any = None
    if kind == "application/json":
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            raise ApiError(400, "the body is not valid JSON", code="invalid_json") from None
        value = body.get("key") if isinstance(body, dict) else None
    elif kind == "application/x-www-form-urlencoded":
        try:
            fields = parse_qs(raw.decode("utf-8", "replace"), max_num_fields=10)
        except ValueError:
            raise ApiError(400, "too many form fields", code="invalid_value") from None
        value = fields.get("key", [None])[0]
    else:
        raise ApiError(415, "send the key as JSON {\"key\": ...} or as a form field `key`",
                       code="unsupported_media_type")
    if not isinstance(value, str) or not value:
        raise ApiError(400, "missing the admin key (`key`)", param="key",
                       code="missing_required_parameter")
    return value, kind != "application/json"


@router.post("/login")
async def login(request: Request) -> Response:
    """The admin key in, a session cookie out (12 hours); 401 for a wrong key, 429 while
    the caller's address has made too many failed attempts."""
    expected = state_of(request).admin_key
    if expected is None:
        raise ApiError(503, "the admin API is off: set LLMFLEET_ADMIN_KEY to turn it on",
                       "admin_api_disabled", code="admin_api_disabled")
    key, is_form = await _posted_key(request)
    right = hmac.compare_digest(key.encode(), expected.encode())
    # A wrong key counts against the caller's address; over its limit, 429 whatever the
    # key (workers.api.auth_guard).
    await asyncio.to_thread(auth_guard(request).admit, client_address(request),
                            failed=not right)
    if not right:
        await _audit(request, "anonymous", "dashboard.login_failed", "refused",
                     {"reason": "wrong admin key"})
        await asyncio.sleep(_REFUSAL_DELAY_S)
        raise ApiError(401, "wrong admin key", code="invalid_admin_key")
    token, session = sessions.issue(expected)
    expires = dt.datetime.fromtimestamp(session.expires_at, dt.UTC)
    await _audit(request, session.actor, "dashboard.login", "ok",
                 {"session": session.id, "expires_at": expires.isoformat()})
    response: Response = RedirectResponse(PREFIX, status_code=303) if is_form else \
        JSONResponse({"ok": True, "expires_at": expires.isoformat()})
    response.set_cookie(sessions.COOKIE, token, max_age=sessions.TTL_S, path="/",
                        httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


async def _audit(request: Request, actor: str, action: str, outcome: audit.Outcome,
                 after: dict[str, Any]) -> None:
    await asyncio.to_thread(audit.record, state_of(request).engine, actor, action,
                            "dashboard", after=after, outcome=outcome,
                            address=audit_address(request))


def _forget(redis: Any, session: sessions.Session) -> None:
    redis.set(DASHBOARD_LOGGED_OUT.format(nonce=session.nonce), 1, exat=session.expires_at)


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Ends the session for good (its token is refused from now on) and drops the cookie."""
    state = state_of(request)
    token = request.cookies.get(sessions.COOKIE)
    session = sessions.verify(token, state.admin_key) if token and state.admin_key else None
    response: Response = JSONResponse({"ok": True})
    if session is not None:
        outcome: audit.Outcome = "ok"
        try:
            await asyncio.to_thread(_forget, state.redis, session)
        except (RedisError, OSError):
            log.warning("logout: Redis is unreachable; the session lapses at its expiry")
            outcome = "error"
            response = error_response(ApiError(
                503, "logged out in this browser, but Redis is unreachable: the session "
                "stays valid elsewhere until it expires", "fleet_unavailable",
                code="fleet_unavailable"))
        await _audit(request, session.actor, "dashboard.logout", outcome,
                     {"session": session.id})
    response.delete_cookie(sessions.COOKIE, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response


@router.get("/session")
async def session_info(request: Request) -> dict[str, Any]:
    """Whether this browser holds a live session (a question, so never a 401: the page
    asks it on every load), and whether the admin API is on at all."""
    if state_of(request).admin_key is None:
        return {"authenticated": False, "admin_api": False, "expires_at": None}
    session = await admin_session(request)
    expires = None if session is None else \
        dt.datetime.fromtimestamp(session.expires_at, dt.UTC).isoformat()
    return {"authenticated": session is not None, "admin_api": True, "expires_at": expires}
