"""The dashboard's alerts panel with operational alerts in it, in a real browser."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser
from sqlalchemy import Engine

from tests.workers.api.conftest import ADMIN_KEY
from tests.workers.api.dashboard.conftest import ARTIFACTS, open_dashboard
from tests.workers.api.test_operational_alerts_api import write_alerts

pytestmark = pytest.mark.timeout(900)  # the first test may install chromium


@pytest.fixture(scope="module")
def alerts(engine: Engine) -> Iterator[dict[str, Any]]:
    yield from write_alerts(engine)


def test_the_alerts_panel_shows_operational_alerts(browser: Browser, api_url: str,
                                                   alerts: dict[str, Any]) -> None:
    # Given a model's alert firing and an agent's resolved (the fixture)
    watched = open_dashboard(browser, api_url)
    page = watched.page
    # When logged in
    page.fill("#key", ADMIN_KEY)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("body[data-state=ready]", timeout=30_000)
    # Then the alerts panel lists both, with their figure, state and deliveries
    rows = page.locator("#table-op-alerts tbody tr").all_inner_texts()
    model = next(r for r in rows if alerts["model"] in r)
    agent = next(r for r in rows if alerts["agent"] in r)
    assert "error rate" in model and "firing" in model and "30.0%" in model
    assert "cost per request" in agent and "resolved" in agent
    assert "webhook: failed: boom" in agent
    assert page.get_attribute("#panel-alerts", "data-filled") == "true"
    assert "firing" in page.inner_text("#op-alert-figures")
    assert watched.errors == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#panel-alerts").screenshot(path=str(ARTIFACTS / "dashboard-op-alerts.png"))
    page.context.close()
