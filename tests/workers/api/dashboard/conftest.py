"""The dashboard's browser and fleet: Debian's chromium driven by Playwright against a
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
from tests.conftest import stop_process, wait_until
from tests.workers.api.conftest import ADMIN_KEY, DASH_BUDGET
from workers.api.keys import KeyLimits, create_key

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[4]
ARTIFACTS = ROOT / "tests" / "artifacts"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
PANELS = ["throughput", "latency", "cost-model", "cache", "agents", "users", "budgets",
          "queues", "experiments", "health", "alerts", "limits"]
CHARTS = ["throughput", "latency", "cost-model", "cache", "agents", "users", "budgets",
          "queues", "experiments"]
DATA_PAGES = ["overview", "metrics?time_range=24h", "spend?time_range=24h", "costs",
              "experiments", "alerts", "fleet", "stats", "limits"]


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
    """Jobs of two agents (one past its budget's alert threshold, its key with a limit
    of its own), a cache hit, a job refused by a budget, and an experiment; then the
    ledger and beat caught up."""
    simulator.configure(latency_ms=40, jitter_ms=30, error_rate=0, rate_limit_rate=0,
                        fail_models={}, known_models=None, context_limits={},
                        omit_usage=False)
    try:
        coder = create_key(engine, "dash-coder", "alice", limits=KeyLimits(rpm=1000))[1]
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


def open_dashboard(browser: Browser, api_url: str, **context: Any) -> Watched:
    watched = Watched(browser.new_context(**context).new_page())
    watched.page.goto(f"{api_url}/dashboard")
    watched.page.wait_for_selector("body[data-state=login]")
    return watched


@pytest.fixture(scope="module")
def dashboard(browser: Browser, api_url: str, fleet_data: dict[str, Any]
              ) -> Iterator[Watched]:
    """Logged in through the form, on a laptop-sized screen, first refresh done."""
    watched = open_dashboard(browser, api_url, viewport={"width": 1440, "height": 900})
    watched.page.fill("#key", ADMIN_KEY)
    watched.page.click("#login-form button[type=submit]")
    watched.page.wait_for_selector("body[data-state=ready]", timeout=30_000)
    yield watched
    watched.page.context.close()


def api_json(http: httpx.Client, page: str) -> Any:
    response = http.get(f"/api/admin/ml-ops/{page}", headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()


def next_refresh(page: Page) -> None:
    """Wait for a refresh that started after now, so the page holds the latest figures."""
    count = int(page.evaluate("document.body.dataset.refreshes || '0'"))
    # (a function, not a string: the page's CSP forbids the eval a string would need)
    page.wait_for_function("n => Number(document.body.dataset.refreshes) >= n",
                           arg=count + 2, timeout=30_000)
