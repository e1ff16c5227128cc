"""The dashboard in a real browser, after a run of jobs (the fixtures: conftest.py)."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser

from tests.workers.api.conftest import ADMIN_KEY, DASH_BUDGET
from tests.workers.api.dashboard.conftest import (
    ARTIFACTS,
    CHARTS,
    DATA_PAGES,
    PANELS,
    ROOT,
    Watched,
    api_json,
    next_refresh,
    open_dashboard,
)

pytestmark = pytest.mark.timeout(900)  # the first test may install chromium


# -- tests -----------------------------------------------------------------------------

def test_a_wrong_key_at_login_says_so(browser: Browser, api_url: str) -> None:
    watched = open_dashboard(browser, api_url)
    page = watched.page
    page.fill("#key", "not-the-admin-key")
    with page.expect_response("**/dashboard/login") as answer:
        page.click("#login-form button[type=submit]")
    assert answer.value.status == 401
    page.wait_for_selector("#login-error:not([hidden])")
    assert page.inner_text("#login-error") == "Wrong admin key."
    assert page.is_hidden("#dashboard") and page.input_value("#key") == ""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-login.png"))
    page.context.close()


def test_without_a_session_the_data_calls_answer_401(browser: Browser, api_url: str,
                                                     fleet_data: dict[str, Any]) -> None:
    # Given the page opened with no session
    watched = open_dashboard(browser, api_url)
    page = watched.page
    # Then it asked for no figures and shows none
    assert not [u for u in watched.urls if "/api/admin/ml-ops/" in u]
    body = page.inner_text("body")
    assert "dash-coder" not in body and "$" not in body and page.is_hidden("#dashboard")
    # And each of its data calls, made from the page, answers 401
    statuses = page.evaluate("""pages => Promise.all(pages.map(
        p => fetch('/api/admin/ml-ops/' + p).then(r => r.status)))""", DATA_PAGES)
    assert statuses == [401] * len(DATA_PAGES)
    page.context.close()


def test_every_panel_is_filled_after_a_run_of_jobs(dashboard: Watched,
                                                   fleet_data: dict[str, Any]) -> None:
    page = dashboard.page
    next_refresh(page)
    filled = page.evaluate("""ids => Object.fromEntries(ids.map(
        id => [id, document.getElementById('panel-' + id).dataset.filled]))""", PANELS)
    assert filled == dict.fromkeys(PANELS, "true")
    assert page.locator(".panel p.empty").count() == 0
    # Every chart has traces, and some trace holds a value other than zero
    for chart in CHARTS:
        traces = page.evaluate(f"""() => (document.getElementById('chart-{chart}').data || [])
            .map(t => (t.y || []).concat(t.x || []).flat().filter(
                v => typeof v === 'number' && v !== 0).length)""")
        assert traces and max(traces) > 0, (chart, traces)
    assert page.locator("#table-alerts tbody tr").count() >= 1
    assert page.locator("#table-limits tbody tr").count() >= 1
    assert page.locator("#table-experiments tbody tr").count() >= 2
    assert page.locator("#health-list li").count() >= 6
    assert page.locator(".kpi").count() == 10
    assert {"First token p50", "First token p95"} <= set(
        page.locator(".kpi-name").all_inner_texts())


def test_the_figures_are_the_apis(dashboard: Watched, http: httpx.Client,
                                  fleet_data: dict[str, Any]) -> None:
    page = dashboard.page
    next_refresh(page)
    metrics = api_json(http, "metrics?time_range=24h")
    spend = api_json(http, "spend?time_range=24h")
    overview, alerts = api_json(http, "overview"), api_json(http, "alerts?limit=15")
    kpis = dict(zip(page.locator(".kpi-name").all_inner_texts(),
                    page.locator(".kpi-value").all_inner_texts(), strict=True))
    assert kpis["Jobs"] == f"{metrics['totals']['jobs']:,}"
    # To one decimal, as the page rounds (JavaScript's toFixed: 6.25 shows as 6.3, where
    # Python's format gives 6.2)
    shown_rate = kpis["Error rate"]
    assert shown_rate.endswith("%") and len(shown_rate.split(".")[-1]) == 2
    assert float(shown_rate[:-1]) == pytest.approx(100 * metrics["totals"]["error_rate"],
                                                   abs=0.05 + 1e-9)
    # The agents chart: the API's top agents, their costs in the same order
    agents = page.evaluate("document.getElementById('chart-agents').data[0]")
    top = spend["agents"]["rows"]
    assert agents["y"][:len(top)] == [r["agent"] for r in top]
    assert agents["x"][:len(top)] == pytest.approx([r["cost_usd"] for r in top])
    assert "dash-coder" in agents["y"] and "alice" in page.evaluate(
        "document.getElementById('chart-users').data[0].y")
    # Cost per hour by model adds up to the range's spend
    stacked = page.evaluate("""document.getElementById('chart-cost-model').data
        .flatMap(t => t.y)""")
    assert sum(stacked) == pytest.approx(spend["total_cost_usd"])
    # Budgets, with the threshold marked; the dash-coder budget past its threshold
    bars, marks = page.evaluate("document.getElementById('chart-budgets').data")
    states = {b["name"]: b for b in overview["budgets"]}
    assert bars["y"] == list(states)
    assert marks["x"] == pytest.approx([100 * b["alert_threshold"] for b in states.values()])
    assert states[DASH_BUDGET]["state"] == "alert"
    assert any(t.endswith("· alert") for t in bars["text"])
    # Alerts, experiments, queues and health as the API has them
    shown = page.locator("#table-alerts tbody tr td:nth-child(2)").all_inner_texts()
    assert shown == [a["budget"] for a in alerts["alerts"]] and DASH_BUDGET in shown
    limits = api_json(http, "limits")
    shown = page.locator("#table-limits tbody tr td:first-child").all_inner_texts()
    assert shown == [row["name"] for row in limits["limits"]]
    assert any(name.startswith("key-") for name in shown)
    experiments = page.inner_text("#table-experiments")
    assert fleet_data["experiment"] in experiments and "mini" in experiments
    errors = page.evaluate("document.getElementById('chart-experiments').data[0].error_y")
    assert errors["visible"] and len(errors["array"]) >= 1
    assert page.inner_text("#queue-figures").startswith(str(overview["workers"]["up"]))
    health = page.inner_text("#health-list")
    assert all(part in health for part in ("Redis", "Postgres", "Beat", "Provider openrouter"))
    assert page.locator("#health-list li.ok").count() >= 5  # fleet, redis, pg, beat, workers


def test_a_screenshot_on_a_laptop_and_on_a_phone(dashboard: Watched) -> None:
    page = dashboard.page
    next_refresh(page)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    docs = ROOT / "docs" / "dashboard.png"
    if not docs.exists() or os.environ.get("LLMFLEET_UPDATE_SCREENSHOT"):
        docs.parent.mkdir(exist_ok=True)  # the README's picture: kept unless asked anew
        docs.write_bytes(shot)
    # On a phone: one column, nothing wider than the screen
    phone = dashboard.page.context.new_page()
    phone.set_viewport_size({"width": 390, "height": 844})
    phone.goto(page.url)
    phone.wait_for_selector("body[data-state=ready]", timeout=30_000)
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    phone.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
    phone.close()


def test_a_7d_range_refetches_and_redraws(dashboard: Watched) -> None:
    page = dashboard.page
    assert len(page.evaluate("document.getElementById('chart-throughput').data[0].x")) == 25
    with page.expect_response(lambda r: "/metrics?time_range=7d" in r.url) as metrics, \
            page.expect_response(lambda r: "/spend?time_range=7d" in r.url) as spend:
        page.click(".ranges button[data-range='7d']")
    assert metrics.value.status == 200 and spend.value.status == 200
    page.wait_for_selector("body[data-range='7d']")
    assert len(page.evaluate("document.getElementById('chart-throughput').data[0].x")) == 8
    assert page.inner_text("#cost-model-title") == "Cost per day by model"
    assert page.get_attribute(".ranges button[data-range='7d']", "aria-pressed") == "true"
    assert page.inner_text("#scope").startswith("Last 7d")


def test_the_filters_narrow_the_figures_and_empty_panels_say_why(
        dashboard: Watched, http: httpx.Client) -> None:
    page = dashboard.page
    range_ = page.evaluate("document.body.dataset.range")
    # When the agent filter picks dash-coder
    with page.expect_response(lambda r: "agent=dash-coder" in r.url and "/metrics?" in r.url):
        page.select_option("#filter-agent", "dash-coder")
    next_refresh(page)
    # Then the totals are that agent's, as the API has them
    mine = api_json(http, f"metrics?time_range={range_}&agent=dash-coder")["totals"]
    assert page.inner_text(".kpi:first-child .kpi-value") == f"{mine['jobs']:,}"
    assert "agent dash-coder" in page.inner_text("#scope")
    # And with a model it never used, the time panels are empty and say what to do
    page.select_option("#filter-model", "google/gemini-pro-1.5")
    page.wait_for_selector("#panel-throughput[data-filled=false]")
    assert "clear the filters" in page.inner_text("#panel-throughput .empty")
    assert page.locator("#chart-throughput").is_hidden()
    page.screenshot(path=str(ARTIFACTS / "dashboard-empty.png"))
    page.select_option("#filter-model", "")
    page.select_option("#filter-agent", "")
    page.wait_for_selector("#panel-throughput[data-filled=true]")


def test_a_fresh_fleet_shows_how_to_fill_each_panel(browser: Browser, api_url: str,
                                                    http: httpx.Client) -> None:
    # Given the admin API answering as for a fleet that has run nothing yet (the API's
    # own answers for an agent that never ran, and no budget, worker or experiment)
    nobody = "time_range=24h&agent=nobody-ever"
    overview = api_json(http, "overview")
    overview.update(budgets=[], workers={"up": 0, "names": [], "per_queue": dict.fromkeys(
        overview["queue_depths"], 0)})
    answers = {"/overview": overview, "/metrics?": api_json(http, f"metrics?{nobody}"),
               "/spend?": api_json(http, f"spend?{nobody}"),
               "/experiments": {"experiments": []}, "/alerts?": {"alerts": []},
               "/limits": {"limits": [], "parked_jobs": 0}}
    watched = open_dashboard(browser, api_url)
    page = watched.page

    def fresh(route: Any) -> None:
        found = [body for part, body in answers.items() if part in route.request.url]
        route.fulfill(json=found[0]) if found else route.continue_()

    page.route("**/api/admin/ml-ops/**", fresh)
    # When logged in
    page.fill("#key", ADMIN_KEY)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("body[data-state=ready]")
    # Then every panel but health is empty, and its hint names a command that fills it
    for panel in PANELS:
        section = page.locator(f"#panel-{panel}")
        if panel == "health":
            assert section.get_attribute("data-filled") == "true"
            continue
        assert section.get_attribute("data-filled") == "false", panel
        assert section.locator("p.empty code").count() >= 1, panel
    assert "llmfleet demo" in page.inner_text("#panel-throughput .empty")
    assert "[[budgets]]" in page.inner_text("#panel-budgets .empty")
    assert "llmfleet worker" in page.inner_text("#panel-queues .empty")
    page.screenshot(path=str(ARTIFACTS / "dashboard-fresh.png"), full_page=True)
    assert watched.errors == []
    page.context.close()


def test_no_console_errors_and_the_key_in_no_url(dashboard: Watched) -> None:
    assert dashboard.errors == []
    assert dashboard.urls and not [u for u in dashboard.urls if ADMIN_KEY in u]
    assert ADMIN_KEY not in dashboard.page.url


def test_logout_returns_to_the_form_and_closes_the_api(dashboard: Watched) -> None:
    page = dashboard.page
    page.click("#logout")
    page.wait_for_selector("body[data-state=login]")
    assert page.evaluate("fetch('/api/admin/ml-ops/overview').then(r => r.status)") == 401
    page.reload()
    page.wait_for_selector("body[data-state=login]")
