"""``llmfleet limits``: every rate limit and provider quota with what it holds now, as a
table or as JSON (the admin API's ``/limits``)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tasks._redis import sync_client
from workers.cli.database import fleet_servers

__all__ = ["limits_command"]

_COLUMNS = ["limit", "mode", "rpm", "tpm", "in flight", "rejected", "delayed"]
_KINDS = ("rpm", "tpm", "concurrency")


def _use(row: dict[str, Any] | None) -> Text:
    """``used/size``, red when full, yellow past 80%; a dash for no such limit."""
    if row is None:
        return Text("-", style="dim")
    share = row["used"] / row["limit"]
    style = "red" if share >= 1 else "yellow" if share >= 0.8 else ""
    return Text(f"{row['used']:,}/{row['limit']:,}", style=style)


def _table(rows: list[dict[str, Any]]) -> Table:
    """One line per limit or quota (the JSON has one per kind): its kinds side by side."""
    table = Table(title="Limits and provider quotas, now (used/size)", box=box.SIMPLE_HEAD,
                  show_edge=False)
    for name in _COLUMNS:
        if name == "limit":  # names wrap; figures never do
            table.add_column(name, overflow="fold")
        else:
            table.add_column(name, justify="left" if name == "mode" else "right", no_wrap=True)
    limits: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        limits.setdefault(row["name"], {})[row["kind"]] = row
    for name, kinds in limits.items():
        first = next(iter(kinds.values()))
        label = Text(name)
        if first["source"] == "limits":  # a key's or a quota's name says its scope
            label.append(f"\n  {first['scope']}", style="dim")
        table.add_row(label, first["mode"], *(_use(kinds.get(k)) for k in _KINDS),
                      f"{first['rejected']:,}", f"{first['delayed']:,}")
    return table


def _render(report: dict[str, Any]) -> None:
    if report["limits"]:
        Console(soft_wrap=True).print(_table(report["limits"]))
    else:
        click.echo("No limits: add [[limits]] to the fleet file (name, scope, rpm, tpm, "
                   "concurrency, mode), give a fleet key its own (`llmfleet keys create "
                   "--rpm 60`), or set a model's or provider's rpm / tpm quota.")
    parked = report["parked_jobs"]
    click.echo(f"{parked} job{'' if parked == 1 else 's'} parked, waiting for a limit or "
               "a quota.")


@click.command("limits")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON (what GET /api/admin/ml-ops/limits answers) instead of a table.")
def limits_command(as_json: bool) -> None:
    """Every rate limit and provider quota, and what each holds now.

    One line per limit: each [[limits]] entry of the fleet file (its scope below its
    name); each live fleet
    key's own limit, named key-<key id> (`llmfleet keys create --rpm 60`, or --tpm,
    --concurrency); each model's and provider's quota (rpm, tpm in the fleet file).
    With --json, one entry per limit and kind (rpm, tpm, concurrency).

    \b
    rpm, tpm   used/size: the requests or tokens the limit holds now, of
               its size per minute. It frees them at its own pace (60 rpm
               frees one a second). A quota may hold more than its size:
               parked jobs reserve their turns ahead.
    in flight  used/size: jobs running under the limit, of those allowed.
    mode       over the limit, reject (HTTP 429, RateLimitedError) or queue
               (the job waits, parked in Redis, until it fits). Quotas queue.
    rejected   jobs the limit refused, since the fleet began.
    delayed    jobs the limit held back to wait (parked).

    Read from Redis (and the keys from Postgres); nothing changes.
    """
    from workers.admission.report import limits_snapshot, parked_jobs
    from workers.api.keys import key_limits

    with fleet_servers() as servers:
        keys = key_limits(servers.engine)
        client = sync_client(servers.redis_url)
        try:
            report = {"generated_at": dt.datetime.now(dt.UTC).isoformat(),
                      "limits": limits_snapshot(client, servers.fleet, keys),
                      "parked_jobs": parked_jobs(client)}
        finally:
            client.close()
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _render(report)
