"""``llmfleet costs``, ``budgets`` and ``stats``: the reports of ``workers.accounting.reports`` as
rich tables, or as JSON with ``--json`` (the same dicts the HTTP API serves)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from typing import Any, cast

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from schemas import parse_since
from tasks._redis import sync_client
from workers.accounting import reports
from workers.cli.database import fleet_servers

__all__ = ["REPORT_COMMANDS", "budgets", "costs", "stats"]



def _since(ctx: click.Context, param: click.Parameter, value: str) -> dt.datetime:
    try:
        return parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


_SINCE = click.option("--since", default="7d", show_default=True, callback=_since,
                      help='How far back: "24h", "7d", "30d", or an ISO date.')
_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _money(value: Any) -> str:
    """Cents once it is dollars; four places below, where LLM calls mostly live."""
    amount = float(value)
    return f"${amount:,.2f}" if abs(amount) >= 1 or amount == 0 else f"${amount:.4f}"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):,.0f}"


def _print(title: str, columns: Sequence[str], rows: Sequence[Sequence[str | Text]]) -> None:
    """A table whose cells are plain text: an agent named "[red]x" stays as it is."""
    table = Table(title=title)
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in rows:
        table.add_row(*[Text(c) if isinstance(c, str) else c for c in row])
    Console(soft_wrap=True).print(table)


def _emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        render(data)


@click.command()
@_SINCE
@click.option("--by", type=click.Choice(reports.GROUPINGS), default="day", show_default=True,
              help="Group by day (UTC), agent, model, tier or user.")
@_JSON
def costs(since: dt.datetime, by: str, as_json: bool) -> None:
    """What the fleet spent, per day, agent, model, tier or user, from the ledger."""
    with fleet_servers() as servers:
        rows = reports.costs(servers.engine, since, cast(reports.Grouping, by),
                             retention_days=servers.settings.metrics_retention_days)

    def render(data: list[dict[str, Any]]) -> None:
        _print(f"Costs by {by} since {since:%Y-%m-%d %H:%M} UTC",
               [by, "jobs", "cost", "tokens", "cache hits", "saved by cache"],
               [[str(r[by] or "-"), str(r["jobs"]), _money(r["cost_usd"]), f"{r['tokens']:,}",
                 str(r["cache_hits"]), _money(r["cost_saved_usd"])] for r in data])

    _emit(rows, as_json, render)


@click.command()
@_JSON
def budgets(as_json: bool) -> None:
    """Every budget in its current period: spent (ledger), reserved (Redis), state."""
    with fleet_servers() as servers:
        client = sync_client(servers.redis_url)
        try:
            rows = reports.budgets_state(servers.engine, client, servers.fleet)
        finally:
            client.close()

    def render(data: list[dict[str, Any]]) -> None:
        colour = {"ok": "green", "alert": "yellow", "exceeded": "red"}
        _print("Budgets", ["budget", "period", "scope", "spent", "reserved", "limit", "share",
                           "state"],
               [[r["name"], f"{r['period']} {r['period_start'][:10]}", r["scope"],
                 _money(r["spent_usd"]), _money(r["reserved_usd"]), _money(r["limit_usd"]),
                 f"{r['share']:.0%}", Text(r["state"], style=colour[r["state"]])]
                for r in data])
        if not data:
            click.echo("No budgets: add [[budgets]] to the fleet file or set "
                       "DAILY_BUDGET_LIMIT / MONTHLY_BUDGET_LIMIT.")

    _emit(rows, as_json, render)


@click.command()
@_SINCE
@_JSON
def stats(since: dt.datetime, as_json: bool) -> None:
    """Jobs, errors, cache hits, tokens, cost and latency, fleet-wide and per tier."""
    with fleet_servers() as servers:
        data = reports.stats(servers.engine, since)

    def render(s: dict[str, Any]) -> None:
        columns = ["tier", "jobs", "errors", "cache hits", "tokens", "cost", "saved",
                   "p50/95/99 ms", "first token p50/95 ms"]
        rows = [[t["tier"] or "(none)", *_stat_cells(t)] for t in s["per_tier"]]
        rows.append(["all", *_stat_cells(s)])
        _print(f"Fleet since {since:%Y-%m-%d %H:%M} UTC", columns, rows)
        click.echo("by status: " + (", ".join(f"{k} {v}" for k, v in s["by_status"].items())
                                    or "no jobs"))

    _emit(data, as_json, render)


def _stat_cells(s: dict[str, Any]) -> list[str]:
    tokens = int(s["prompt_tokens"]) + int(s["completion_tokens"])
    latency = "/".join(_ms(s[f"latency_p{p}_ms"]) for p in (50, 95, 99))
    ttft = "/".join(_ms(s.get(f"ttft_p{p}_ms")) for p in (50, 95))
    return [f"{s['jobs']:,}", f"{s['errors']:,} ({s['error_rate']:.0%})",
            f"{s['cache_hits']:,} ({s['cache_hit_rate']:.0%})", f"{tokens:,}",
            _money(s["cost_usd"]), _money(s["cost_saved_usd"]), latency, ttft]


#: What the lead adds to the ``llmfleet`` group.
REPORT_COMMANDS: list[click.Command] = [costs, budgets, stats]
