"""``llmfleet costs``, ``budgets`` and ``stats``: the reports of ``workers.accounting.reports`` as
rich tables, or as JSON with ``--json`` (the same dicts the HTTP API serves)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import click
import redis
from redis.exceptions import RedisError
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from schemas import FleetConfig, Settings, load_config, parse_since
from workers.accounting import reports

__all__ = ["REPORT_COMMANDS", "budgets", "costs", "stats"]



def _since(ctx: click.Context, param: click.Parameter, value: str) -> dt.datetime:
    try:
        return parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


_SINCE = click.option("--since", default="7d", show_default=True, callback=_since,
                      help='How far back: "24h", "7d", "30d", or an ISO date.')
_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@contextmanager
def _database() -> Iterator[tuple[Settings, FleetConfig, Engine, str]]:
    """The settings, the fleet file, and the ledger's engine (migrated, so that a fresh
    embedded database answers too), plus the Redis URL."""
    from workers.devstack.services import resolve_services
    from workers.store.engines import migrate, sync_engine

    settings, fleet = load_config()
    services = resolve_services(settings)
    assert services.database_url is not None
    # A server that does not answer is a one-line message, not a traceback (and no
    # URL in it: it may carry a password).
    try:
        migrate(services.database_url)
        yield settings, fleet, sync_engine(services.database_url), services.redis_url
    except (RedisError, OSError) as exc:
        raise click.ClickException(f"Redis does not answer ({type(exc).__name__}): start it "
                                   "or point REDIS_URL at one") from None
    except SQLAlchemyError as exc:
        raise click.ClickException(f"Postgres does not answer ({type(exc).__name__}): start "
                                   "it or point DATABASE_URL at one") from None


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
    with _database() as (settings, _, engine, _):
        rows = reports.costs(engine, since, cast(reports.Grouping, by),
                             retention_days=settings.metrics_retention_days)

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
    with _database() as (_, fleet, engine, redis_url):
        client = redis.Redis.from_url(redis_url)
        try:
            rows = reports.budgets_state(engine, client, fleet)
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
    with _database() as (_, _, engine, _):
        data = reports.stats(engine, since)

    def render(s: dict[str, Any]) -> None:
        columns = ["tier", "jobs", "errors", "cache hits", "tokens", "cost", "saved",
                   "p50/95/99 ms"]
        rows = [[t["tier"] or "(none)", *_stat_cells(t)] for t in s["per_tier"]]
        rows.append(["all", *_stat_cells(s)])
        _print(f"Fleet since {since:%Y-%m-%d %H:%M} UTC", columns, rows)
        click.echo("by status: " + (", ".join(f"{k} {v}" for k, v in s["by_status"].items())
                                    or "no jobs"))

    _emit(data, as_json, render)


def _stat_cells(s: dict[str, Any]) -> list[str]:
    tokens = int(s["prompt_tokens"]) + int(s["completion_tokens"])
    latency = "/".join(_ms(s[f"latency_p{p}_ms"]) for p in (50, 95, 99))
    return [f"{s['jobs']:,}", f"{s['errors']:,} ({s['error_rate']:.0%})",
            f"{s['cache_hits']:,} ({s['cache_hit_rate']:.0%})", f"{tokens:,}",
            _money(s["cost_usd"]), _money(s["cost_saved_usd"]), latency]


#: What the lead adds to the ``llmfleet`` group.
REPORT_COMMANDS: list[click.Command] = [costs, budgets, stats]
