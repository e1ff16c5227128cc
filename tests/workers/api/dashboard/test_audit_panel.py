"""The dashboard's audit panel in a real browser: the login it was opened with is its
newest row, and its rows are the admin API's."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Browser

from tests.workers.api.conftest import ADMIN_KEY
from tests.workers.api.dashboard.conftest import api_json, open_dashboard
from workers.api import sessions

pytestmark = pytest.mark.timeout(900)  # the first test may install chromium


def test_the_audit_panel_shows_the_logs_newest_rows(browser: Browser, api_url: str,
                                                    http: httpx.Client) -> None:
    # Given the page, logged in through its form
    watched = open_dashboard(browser, api_url, viewport={"width": 1440, "height": 900})
    page = watched.page
    page.fill("#key", ADMIN_KEY)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("body[data-state=ready]", timeout=30_000)
    # Then the audit panel is filled, and its rows are the API's, newest first
    page.wait_for_selector("#panel-audit[data-filled=true]")
    entries = api_json(http, "audit?since=30d&limit=20")["entries"]
    cells = page.locator("#table-audit tbody tr td:nth-child(3)").all_inner_texts()
    assert cells == [e["action"] for e in entries][:len(cells)] and cells
    # And this browser's login is among them, named by its session's id, never its token
    token = next(c["value"] for c in page.context.cookies() if c["name"] == sessions.COOKIE)
    session = sessions.verify(token, ADMIN_KEY)
    assert session is not None
    actors = page.locator("#table-audit tbody tr td:nth-child(2)").all_inner_texts()
    assert f"dashboard:{session.id}" in actors
    text = page.inner_text("#panel-audit")
    assert token not in text and ADMIN_KEY not in text
    assert watched.errors == []
    page.context.close()
