"""The dashboard in a real browser: Debian's chromium driven by Playwright against a
running ``llmfleet api``, after a run of jobs (two agents, a cache hit, a rejected job,
an experiment with outcomes) and with a real beat (heartbeat, budget alerts)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from playwright.sync_api import Browser, Page, sync_playwright
from sqlalchemy import Engine, select

from schemas import FleetConfig
from schemas.keys import BEAT_LAST_RUN
from schemas.tables import budget_alerts
from tasks import FleetClient
from tests.api.conftest import ADMIN_KEY, DASH_BUDGET
from tests.conftest import stop_process, wait_until
from workers.api.keys import create_key

pytestmark = pytest.mark.timeout(900)  # the first test may install chromium

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
PANELS = ["throughput", "latency", "cost-model", "cache", "agents", "users", "budgets",
          "queues", "experiments", "health", "alerts"]
CHARTS = ["throughput", "latency", "cost-model", "cache", "agents", "users", "budgets",
          "queues", "experiments"]
DATA_PAGES = ["overview", "metrics?time_range=24h", "spend?time_range=24h", "costs",
              "experiments", "alerts", "fleet", "stats"]


# -- chromium ------------------------------------------------------------------------

def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["apt-get", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (the tests run as root)."""
    if CHROMIUM.exists():
        return str(CHROMIUM)
    if not any(Path("/var/lib/apt/lists").glob("*Packages*")):
        _apt("update")
    done = _apt("install", "-y", "--no-install-recommends", "chromium")
    if done.returncode != 0:  # a stale package list: refresh it once and retry
        _apt("update")
        done = _apt("install", "-y", "--no-install-recommends", "chromium")
    if done.returncode != 0 or not CHROMIUM.exists():
        pytest.fail("the dashboard tests need chromium at /usr/bin/chromium, and "
                    "`apt-get install -y --no-install-recommends chromium` failed:\n"
                    + (done.stderr or done.stdout)[-2000:])
    return str(CHROMIUM)


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


# -- a fleet with something to show ---------------------------------------------------

@pytest.fixture(scope="module")
def beat(api_env: dict[str, str], redis_url: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``llmfleet beat`` on the API's fleet file, its intervals shortened to seconds."""
    path = tmp_path_factory.mktemp("dash-beat") / "fleet.toml"
    path.write_text(Path(api_env["LLMFLEET_CONFIG"]).read_text() + """
[beat]
heartbeat_s = 1
enforce_budgets_s = 1
rollup_metrics_s = 30
""")
    log = (path.parent / "beat.log").open("ab")
    process = subprocess.Popen([sys.executable, "-m", "workers.cli", "beat", "--loglevel",
                                "WARNING"], env={**api_env, "LLMFLEET_CONFIG": str(path)},
                               stdout=log, stderr=subprocess.STDOUT)
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(BEAT_LAST_RUN)
        wait_until(lambda: process.poll() is None and client.exists(BEAT_LAST_RUN),
                   timeout=60)
        yield
    finally:
        client.close()
        stop_process(process)
        log.close()


def _chat(url: str, key: str, prompts: list[str], model: str = "simple") -> None:
    with OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as client:
        for prompt in prompts:
            # temperature 0 and room for the whole answer: a repeat is then a cache hit
            client.chat.completions.create(model=model, max_tokens=64, temperature=0,
                                           messages=[{"role": "user", "content": prompt}])


def _experiment(redis_url: str, fleet: FleetConfig) -> str:
    """A running experiment over two models, twelve users' jobs and their outcomes."""
    name = f"dash-exp-{uuid.uuid4().hex[:6]}"
    with FleetClient(redis_url=redis_url, fleet=fleet, agent="dash-experimenter") as client:
        client.experiments.create(name, unit="user", primary_metric="success_rate", variants=[
            {"name": "mini", "model": "openai/gpt-4o-mini", "weight": 1},
            {"name": "haiku", "model": "anthropic/claude-3-haiku", "weight": 1}])
        client.experiments.start(name)
        handles = [client.submit([{"role": "user", "content": f"exp {i} {uuid.uuid4().hex}"}],
                                 experiment=name, user=f"user-{i}", max_tokens=16)
                   for i in range(12)]
        for i, handle in enumerate(handles):
            result = handle.get(timeout=60)
            good = i % 4 != 0 if result.variant == "mini" else i % 2 == 0
            client.feedback(result.job_id, success=good)
    return name


@pytest.fixture(scope="module")
def fleet_data(api_url: str, engine: Engine, api_fleet: FleetConfig, redis_url: str,
               simulator: Any, spool_empty: Any, beat: None) -> dict[str, Any]:
    """Jobs of two agents (one past its budget's alert threshold), a cache hit, a job
    refused by a budget, and an experiment; then the ledger and beat caught up."""
    simulator.configure(latency_ms=40, jitter_ms=30, error_rate=0, rate_limit_rate=0,
                        fail_models={}, known_models=None, context_limits={},
                        omit_usage=False)
    try:
        coder = create_key(engine, "dash-coder", "alice")[1]
        planner = create_key(engine, "dash-planner", "bob")[1]
        broke = create_key(engine, "broke", "carol")[1]
        _chat(api_url, coder, [f"write parser {i} {uuid.uuid4().hex}" for i in range(8)])
        _chat(api_url, planner, [f"plan {i} {uuid.uuid4().hex}" for i in range(3)], "medium")
        _chat(api_url, planner, ["the same question, asked three times"] * 3)
        with pytest.raises(openai.RateLimitError):
            _chat(api_url, broke, ["over budget"])
        experiment = _experiment(redis_url, api_fleet)
    finally:
        simulator.configure(latency_ms=0, jitter_ms=0)
    spool_empty()
    query = select(budget_alerts.c.id).where(budget_alerts.c.budget == DASH_BUDGET)

    def alerted() -> bool:
        with engine.connect() as connection:
            return connection.execute(query).first() is not None

    wait_until(alerted, timeout=30)
    return {"experiment": experiment}


# -- pages ---------------------------------------------------------------------------

class Watched:
    """A page with its console errors, page errors and every URL it requested."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.urls: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("request", lambda r: self.urls.append(r.url))


def _open(browser: Browser, api_url: str, **context: Any) -> Watched:
    watched = Watched(browser.new_context(**context).new_page())
    watched.page.goto(f"{api_url}/dashboard")
    watched.page.wait_for_selector("body[data-state=login]")
    return watched


@pytest.fixture(scope="module")
def dashboard(browser: Browser, api_url: str, fleet_data: dict[str, Any]
              ) -> Iterator[Watched]:
    """Logged in through the form, on a laptop-sized screen, first refresh done."""
    watched = _open(browser, api_url, viewport={"width": 1440, "height": 900})
    watched.page.fill("#key", ADMIN_KEY)
    watched.page.click("#login-form button[type=submit]")
    watched.page.wait_for_selector("body[data-state=ready]", timeout=30_000)
    yield watched
    watched.page.context.close()


def _api(http: httpx.Client, page: str) -> Any:
    response = http.get(f"/api/admin/ml-ops/{page}", headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()


def _next_refresh(page: Page) -> None:
    """Wait for a refresh that started after now, so the page holds the latest figures."""
    count = int(page.evaluate("document.body.dataset.refreshes || '0'"))
    # (a function, not a string: the page's CSP forbids the eval a string would need)
    page.wait_for_function("n => Number(document.body.dataset.refreshes) >= n",
                           arg=count + 2, timeout=30_000)


# -- tests -----------------------------------------------------------------------------

def test_a_wrong_key_at_login_says_so(browser: Browser, api_url: str) -> None:
    watched = _open(browser, api_url)
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
    watched = _open(browser, api_url)
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
    _next_refresh(page)
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
    assert page.locator("#table-experiments tbody tr").count() >= 2
    assert page.locator("#health-list li").count() >= 6
    assert page.locator(".kpi").count() == 8


def test_the_figures_are_the_apis(dashboard: Watched, http: httpx.Client,
                                  fleet_data: dict[str, Any]) -> None:
    page = dashboard.page
    _next_refresh(page)
    metrics, spend = _api(http, "metrics?time_range=24h"), _api(http, "spend?time_range=24h")
    overview, alerts = _api(http, "overview"), _api(http, "alerts?limit=15")
    kpis = dict(zip(page.locator(".kpi-name").all_inner_texts(),
                    page.locator(".kpi-value").all_inner_texts(), strict=True))
    assert kpis["Jobs"] == f"{metrics['totals']['jobs']:,}"
    assert kpis["Error rate"] == f"{100 * metrics['totals']['error_rate']:.1f}%"
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
    _next_refresh(page)
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
    _next_refresh(page)
    # Then the totals are that agent's, as the API has them
    mine = _api(http, f"metrics?time_range={range_}&agent=dash-coder")["totals"]
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
    overview = _api(http, "overview")
    overview.update(budgets=[], workers={"up": 0, "names": [], "per_queue": dict.fromkeys(
        overview["queue_depths"], 0)})
    answers = {"/overview": overview, "/metrics?": _api(http, f"metrics?{nobody}"),
               "/spend?": _api(http, f"spend?{nobody}"),
               "/experiments": {"experiments": []}, "/alerts?": {"alerts": []}}
    watched = _open(browser, api_url)
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
