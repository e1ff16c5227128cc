"""``llmfleet ledger``: the rows Postgres refused, and moving them back once fixed."""

from __future__ import annotations

import json

import click

from tasks._redis import sync_client
from workers.accounting.dead_letters import (
    dead_letter_count,
    list_dead_letters,
    replay_dead_letters,
)
from workers.cli.database import cli_actor, fleet_servers
from workers.store import audit

__all__ = ["ledger_group"]


@click.group("ledger")
def ledger_group() -> None:
    """The ledger's spool: rows Postgres refused (dead letters) and their replay."""


@ledger_group.command("dead-letters")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON, rows included.")
def dead_letters(limit: int, as_json: bool) -> None:
    """Rows Postgres refused, with the reason, oldest first. Every other row landed."""
    with fleet_servers() as servers:
        client = sync_client(servers.redis_url)
        try:
            total = dead_letter_count(client)
            entries = list_dead_letters(client, limit)
        finally:
            client.close()
    if as_json:
        click.echo(json.dumps({"total": total, "entries": entries}, indent=2))
        return
    if not entries:
        click.echo("No dead letters: every spooled ledger row reached Postgres.")
        return
    for entry in entries:
        click.echo(f"{entry['at'] or '-'}  job {entry['job_id'] or '?'}  {entry['reason']}")
    click.echo(f"{total} dead letter(s); fix their cause, then `llmfleet ledger replay`.")


@ledger_group.command("replay")
def replay() -> None:
    """Move every dead letter back to the spool; the flusher tries it again (a row
    refused again comes back as a dead letter)."""
    with fleet_servers() as servers:
        client = sync_client(servers.redis_url)
        try:
            with audit.recording(servers.engine, cli_actor(), "ledger.replay",
                                 "ledger:dead-letters") as entry:
                moved = replay_dead_letters(client)
                entry.after = {"moved": moved}
        finally:
            client.close()
    click.echo(f"moved {moved} row(s) back to the spool")
