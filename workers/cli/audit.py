"""``llmfleet audit``: the audit log (``workers.store.audit``) as a table, or as JSON
lines; the same rows as the admin API's ``/audit``."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from schemas import parse_since
from workers.cli.database import database_engine
from workers.store import audit

__all__ = ["audit_command"]

_OUTCOME_STYLES = {"ok": "green", "refused": "yellow", "error": "red"}


def _moment(ctx: click.Context, param: click.Parameter,
            value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _change(row: dict[str, Any]) -> str:
    """Before and after, compactly: ``{...} -> {...}``, or the one there is."""
    parts = [json.dumps(row[k], separators=(",", ":"), default=str)
             for k in ("before", "after") if row[k] is not None]
    return " -> ".join(parts) if len(parts) == 2 else (parts[0] if parts else "")


def _render(rows: list[dict[str, Any]]) -> None:
    """One row per action: names and times whole, actor and resource folded when the
    terminal is narrow; the client address and the change dim under the resource."""
    table = Table(title="Audit log, newest first (UTC)", box=box.SIMPLE_HEAD,
                  show_edge=False)
    for name in ("at", "actor", "action", "resource", "outcome"):
        whole = name in ("at", "action", "outcome")
        table.add_column(name, overflow="fold", no_wrap=whole,
                         ratio=None if whole else 2 if name == "resource" else 1)
    for row in rows:
        detail = " ".join(part for part in (
            f"from {row['address']}" if row["address"] else "", _change(row)) if part)
        resource = Text(row["resource"])
        if detail:
            resource.append("\n" + detail, style="dim")
        table.add_row(Text(row["at"][:19].replace("T", " ")), Text(row["actor"]),
                      Text(row["action"]), resource,
                      Text(row["outcome"], style=_OUTCOME_STYLES.get(row["outcome"], "")))
    Console(soft_wrap=True).print(table)


@click.command("audit")
@click.option("--since", default="7d", show_default=True, callback=_moment,
              help='From when: "24h", "7d", "30d", or an ISO date or time.')
@click.option("--until", default=None, callback=_moment,
              help="Up to when (same forms as --since; default: now).")
@click.option("--actor", default=None,
              help='Only this actor ("cli:ann@host", "admin-key", "dashboard:<id>"); a '
                   'trailing * matches a prefix ("cli:*").')
@click.option("--action", default=None,
              help='Only this action ("key.create"); a trailing * matches a prefix '
                   '("key.*").')
@click.option("--resource", default=None,
              help='Only this resource ("key:<key id>", "template:<name>", '
                   '"experiment:<name>"); a trailing * matches a prefix.')
@click.option("--limit", default=100, show_default=True,
              type=click.IntRange(1, audit.MAX_LIMIT), help="Rows at most.")
@click.option("--offset", default=0, show_default=True, type=click.IntRange(0),
              help="Rows to skip first (the next page: --offset 100).")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON lines, one row per line, instead of a table.")
def audit_command(since: dt.datetime, until: dt.datetime | None, actor: str | None,
                  action: str | None, resource: str | None, limit: int, offset: int,
                  as_json: bool) -> None:
    """The audit log: every administrative action, newest first.

    Each row says when, who (the actor), what (the action: key.create, key.revoke,
    key.expire, template.put, template.sync, experiment.create, experiment.start,
    experiment.stop, ledger.replay, dashboard.login, dashboard.login_failed,
    dashboard.logout, admin.<route>), on which resource, with what outcome (ok,
    refused, error), from which client address, and the resource's state before and
    after where it has one. Secrets are never recorded: keys by their id only.

    Rows are never changed; beat's purge deletes those older than AUDIT_RETENTION_DAYS
    (90 unless set). The admin API serves the same rows at /api/admin/ml-ops/audit.
    """
    rows = audit.query(database_engine(), since=since, until=until, actor=actor,
                       action=action, resource=resource, limit=limit, offset=offset)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, default=str))
        return
    if not rows:
        click.echo("No audit rows match: widen --since or drop a filter.")
        return
    _render(rows)
