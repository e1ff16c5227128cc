"""The dashboard's login, session cookie and logout over HTTP, its headers and files;
and the session token itself. Each test uses its own client: a shared one would carry
the cookie into the other tests' anonymous calls."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie

import httpx
import pytest

from tests.workers.api.conftest import ADMIN_KEY
from workers.api import sessions
from workers.api.dashboard import plotly_name

OVERVIEW = "/api/admin/ml-ops/overview"


@pytest.fixture()
def browser_like(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=30, follow_redirects=False) as client:
        yield client


def login(client: httpx.Client, key: str = ADMIN_KEY) -> httpx.Response:
    return client.post("/dashboard/login", json={"key": key})


def set_cookie(response: httpx.Response) -> str:
    return response.headers.get("set-cookie", "")


# -- the token -----------------------------------------------------------------------

def test_a_fresh_token_verifies_for_twelve_hours() -> None:
    # Given a token issued now
    token, session = sessions.issue(ADMIN_KEY, now=1_000_000)
    # Then it verifies until its expiry, and not after
    assert sessions.verify(token, ADMIN_KEY, now=1_000_000 + 60) == session
    assert session.expires_at == 1_000_000 + 12 * 3600
    assert sessions.verify(token, ADMIN_KEY, now=session.expires_at) is None
    assert ADMIN_KEY not in token


def _moved(token: str, seconds: int) -> str:
    """The token with its timestamp moved (its signature left as it was)."""
    import base64

    nonce, stamp, signature = token.split(".")
    when = int.from_bytes(base64.urlsafe_b64decode(stamp + "=" * (-len(stamp) % 4)), "big")
    moved = base64.urlsafe_b64encode((when + seconds).to_bytes(4, "big")).rstrip(b"=")
    return f"{nonce}.{moved.decode()}.{signature}"


@pytest.mark.parametrize("mangle", [
    # signature changed: its first character (the last one's low bits are padding, so
    # another last character can decode to the same signature)
    lambda t: (lambda i: t[:i] + ("A" if t[i] != "A" else "B") + t[i + 1:])(t.rindex(".") + 1),
    lambda t: _moved(t, 3600),                                   # issue time moved
    lambda t: "x" * 24 + t[t.index("."):],                       # nonce swapped
    lambda t: "",
    lambda t: "v1.1.2.3",
    lambda t: t + ".",
])
def test_a_tampered_token_is_refused(mangle: object) -> None:
    token, _ = sessions.issue(ADMIN_KEY)
    assert sessions.verify(mangle(token), ADMIN_KEY) is None  # type: ignore[operator]


def test_a_token_of_another_key_is_refused() -> None:
    token, _ = sessions.issue("another-admin-key")
    assert sessions.verify(token, ADMIN_KEY) is None


# -- login, cookie, logout ---------------------------------------------------------

def test_login_sets_a_strict_httponly_cookie_holding_no_key(browser_like: httpx.Client) -> None:
    # When the right key is posted as JSON
    response = login(browser_like)
    # Then a session cookie comes back: HttpOnly, SameSite=Strict, Path=/, 12 h
    assert response.status_code == 200, response.text
    header = set_cookie(response)
    cookie = SimpleCookie(header)[sessions.COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "strict" and cookie["path"] == "/"
    assert int(cookie["max-age"]) == sessions.TTL_S
    assert ADMIN_KEY not in header and sessions.verify(cookie.value, ADMIN_KEY) is not None
    # And the cookie alone opens the admin API and the session check
    assert browser_like.get(OVERVIEW).status_code == 200
    assert browser_like.get("/dashboard/session").json()["authenticated"] is True


def test_a_form_login_redirects_to_the_dashboard(browser_like: httpx.Client) -> None:
    response = browser_like.post("/dashboard/login", data={"key": ADMIN_KEY})
    assert response.status_code == 303 and response.headers["location"] == "/dashboard"
    assert sessions.COOKIE in set_cookie(response)
    assert browser_like.get(OVERVIEW).status_code == 200


def test_a_wrong_key_is_refused_without_a_cookie(browser_like: httpx.Client) -> None:
    response = login(browser_like, "not-the-key")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_admin_key"
    assert sessions.COOKIE not in set_cookie(response)
    assert browser_like.get(OVERVIEW).status_code == 401
    assert browser_like.get("/dashboard/session").json()["authenticated"] is False


@pytest.mark.parametrize("how", ["query", "get"])
def test_the_key_is_never_taken_from_a_url(browser_like: httpx.Client, how: str) -> None:
    # When the key (the right one) comes in a URL
    if how == "query":
        response = browser_like.post("/dashboard/login", params={"key": ADMIN_KEY},
                                     json={"key": ADMIN_KEY})
    else:
        response = browser_like.get("/dashboard/login", params={"key": ADMIN_KEY})
    # Then it is refused, and no session starts
    assert response.status_code in (400, 405)
    assert sessions.COOKIE not in set_cookie(response)


@pytest.mark.parametrize("token", [
    sessions.issue(ADMIN_KEY, now=time.time() - sessions.TTL_S - 5)[0],  # expired
    sessions.issue("another-admin-key")[0],                             # foreign
    "v1.9999999999.abcdefghijklmnopqrstuvwx." + "A" * 43,               # forged
    ADMIN_KEY,                                                          # the raw key
], ids=["expired", "foreign", "forged", "raw-key"])  # stable ids: the tokens are random
def test_an_expired_or_forged_cookie_is_refused(api_url: str, token: str) -> None:
    with httpx.Client(base_url=api_url, cookies={sessions.COOKIE: token}) as client:
        assert client.get(OVERVIEW).status_code == 401
        assert client.get("/dashboard/session").json()["authenticated"] is False


def test_logout_ends_the_session_everywhere(browser_like: httpx.Client, api_url: str) -> None:
    # Given a logged-in browser, and a copy of its cookie elsewhere
    login(browser_like)
    token = browser_like.cookies[sessions.COOKIE]
    # When it logs out
    response = browser_like.post("/dashboard/logout")
    # Then its cookie is dropped, and the copied token no longer opens anything
    assert response.status_code == 200
    assert "max-age=0" in set_cookie(response).lower()
    assert browser_like.get(OVERVIEW).status_code == 401
    with httpx.Client(base_url=api_url, cookies={sessions.COOKIE: token}) as other:
        assert other.get(OVERVIEW).status_code == 401


def test_the_bearer_key_still_opens_the_admin_api(browser_like: httpx.Client) -> None:
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    assert browser_like.get(OVERVIEW, headers=headers).status_code == 200
    assert browser_like.get(OVERVIEW, headers={"authorization": "Bearer nope"}).status_code == 401


# -- the page and its files --------------------------------------------------------

def test_the_page_forbids_framing_and_foreign_scripts(browser_like: httpx.Client) -> None:
    response = browser_like.get("/dashboard")
    assert response.status_code == 200 and "<form" in response.text
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    # No inline script: every <script> names its source, on this server
    scripts = re.findall(r"<script\b[^>]*>", response.text)
    assert len(scripts) == 2 and all('src="/dashboard/static/' in s for s in scripts)
    assert "http://" not in response.text and "https://" not in response.text
    assert plotly_name() in response.text


def test_plotly_comes_from_the_package_with_a_long_cache(browser_like: httpx.Client) -> None:
    response = browser_like.get(f"/dashboard/static/{plotly_name()}",
                                headers={"accept-encoding": "gzip"})
    assert response.status_code == 200 and response.headers["content-encoding"] == "gzip"
    assert "max-age=31536000" in response.headers["cache-control"]
    assert b"plotly.js" in response.content[:200]
    own = browser_like.get("/dashboard/static/dashboard.js")
    assert own.status_code == 200 and own.headers["cache-control"] == "no-cache"
    again = browser_like.get("/dashboard/static/dashboard.js",
                             headers={"if-none-match": own.headers["etag"]})
    assert again.status_code == 304
    assert browser_like.get("/dashboard/static/../app.py").status_code == 404
    assert browser_like.get("/dashboard/static/secret.txt").status_code == 404


def test_with_no_admin_key_login_is_off(api_env: dict[str, str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from schemas import Settings
    from workers.api.app import create_app

    monkeypatch.delenv("LLMFLEET_ADMIN_KEY", raising=False)
    with TestClient(create_app(Settings.from_env(api_env))) as client:
        assert client.post("/dashboard/login", json={"key": ADMIN_KEY}).status_code == 503
        assert client.get("/dashboard/session").json() == {
            "authenticated": False, "admin_api": False, "expires_at": None}
