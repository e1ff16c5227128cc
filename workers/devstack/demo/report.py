"""The accounting part of ``llmfleet demo``: a budget of the run's own, the ledger's
totals, and the budget alert that beat's ``enforce_budgets`` sends."""

from __future__ import annotations

import datetime as dt
import time
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console

from schemas import FleetConfig
from schemas.keys import LEDGER_SPOOL
from tasks import FleetClient
from tasks._redis import sync_client
from tasks.names import ADMIN_QUEUE, ENFORCE_BUDGETS
from workers.accounting import reports
from workers.store.engines import sync_engine

__all__ = ["demo_budget_name", "show_accounting", "write_demo_fleet_file"]

#: The demo's budget covers the coder's jobs of this run only (their user), so that
#: earlier runs' spend never fills it and its alert fires afresh each run.
DEMO_LIMIT_USD = 0.05
DEMO_THRESHOLD = 0.1


def demo_budget_name(run_id: str) -> str:
    return f"coder-{run_id}"


def write_demo_fleet_file(data_dir: Path, run_id: str) -> Path:
    """The built-in fleet file plus a budget on this run's coder user."""
    base = resources.files("schemas").joinpath("default_fleet.toml").read_text("utf-8")
    path = data_dir / "demo-fleet.toml"
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(base + f"""
# Added by `llmfleet demo`: a daily budget on this run's coder, alerting at 10%.
[[budgets]]
name = "{demo_budget_name(run_id)}"
limit_usd = {DEMO_LIMIT_USD}
period = "daily"
scope = "user:{run_id}"
alert_threshold = {DEMO_THRESHOLD}
""", "utf-8")
    return path


def _wait_for_ledger(redis_url: str, timeout: float = 20) -> int:
    """Block until the workers have flushed the ledger spool; rows still waiting."""
    with sync_client(redis_url) as client:
        deadline = time.monotonic() + timeout
        while (waiting := int(client.llen(LEDGER_SPOOL))) and time.monotonic() < deadline:
            time.sleep(0.2)
        return waiting


def show_accounting(client: FleetClient, redis_url: str, database_url: str,
                    fleet: FleetConfig, since: dt.datetime, run_id: str,
                    console: Console) -> None:
    waiting = _wait_for_ledger(redis_url)
    engine = sync_engine(database_url)
    totals: dict[str, Any] = reports.stats(engine, since)
    console.print(
        f"Ledger (Postgres) for this run: {totals['jobs']} rows, "
        f"${float(totals['cost_usd']):.5f} spent, ${float(totals['cost_saved_usd']):.5f} "
        f"saved by the cache, cache hit rate {float(totals['cache_hit_rate']):.0%}"
        + (f" ({waiting} rows still spooled)" if waiting else ""))
    # What beat runs every minute, run now: it recomputes spend and alerts.
    task_id = f"demo-enforce-{run_id}"
    client._app.send_task(ENFORCE_BUDGETS, queue=ADMIN_QUEUE, task_id=task_id)
    outcome = client._waiter.wait_task(task_id, 60)
    name = demo_budget_name(run_id)
    with sync_client(redis_url) as fast:
        budgets = reports.budgets_state(engine, fast, fleet)
    for row in budgets:
        if row["name"] == name:
            console.print(f"Budget {name}: ${float(row['spent_usd']):.5f} of "
                          f"${float(row['limit_usd']):.2f} ({float(row['share']):.0%}), "
                          f"state {row['state']}")
    for alert in outcome.get("alerts", []):
        sent = ", ".join(f"{k} {v}" for k, v in alert["deliveries"].items())
        console.print(f"[bold red]Budget alert[/] {alert['budget']}: {alert['level']} "
                      f"({sent})")

