"""``llmfleet templates``: put, list, show, render and sync prompt templates.

Talks to Postgres directly (``workers.store.templates``), like the reports do: an
operator managing templates needs no worker running.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from schemas import TemplateError
from tasks.templates import render
from workers.cli.database import cli_actor, database_engine
from workers.store import templates as templates_store

__all__ = ["templates_group"]


def _variables(pairs: tuple[str, ...], as_json: str | None) -> dict[str, Any]:
    """``--var k=v`` pairs over a ``--vars`` JSON object."""
    variables: dict[str, Any] = {}
    if as_json:
        try:
            loaded = json.loads(as_json)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(str(exc), param_hint="--vars") from None
        if not isinstance(loaded, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--vars")
        variables.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--var")
        variables[key] = value
    return variables


def _fail(exc: TemplateError) -> click.ClickException:
    return click.ClickException(f"{type(exc).__name__}: {exc}")


@click.group("templates")
def templates_group() -> None:
    """Prompt templates in Postgres, versioned; a version never changes once written."""


@templates_group.command("put")
@click.argument("name")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--category", default=None, help="A category (default: the latest's).")
def put(name: str, file: Any, category: str | None) -> None:
    """Store FILE ('-' for stdin) as NAME's next version (unchanged text: same version)."""
    body = file.read()
    try:
        version = templates_store.put(database_engine(), name, body, category,
                                      actor=cli_actor())
    except TemplateError as exc:
        raise _fail(exc) from None
    click.echo(f"{name} v{version}")


@templates_group.command("list")
@click.option("--category", default=None, help="Only this category.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(category: str | None, as_json: bool) -> None:
    """The latest version of each template."""
    rows = templates_store.list_templates(database_engine(), category)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['name']}\tv{row['version']}\t{row['category'] or '-'}"
                   f"\t{row['created_at']}")


@templates_group.command("show")
@click.argument("name")
@click.option("--version", "version", type=int, default=None, help="Default: the latest.")
def show(name: str, version: int | None) -> None:
    """Print a template's body."""
    try:
        row = templates_store.get(database_engine(), name, version)
    except TemplateError as exc:
        raise _fail(exc) from None
    click.echo(f"# {row['name']} v{row['version']} ({row['category'] or '-'})")
    click.echo(row["body"])


@templates_group.command("render")
@click.argument("name")
@click.option("--version", "version", type=int, default=None, help="Default: the latest.")
@click.option("--var", "pairs", multiple=True, help="KEY=VALUE, repeatable.")
@click.option("--vars", "vars_json", default=None, help="Variables as a JSON object.")
def render_command(name: str, version: int | None, pairs: tuple[str, ...],
                   vars_json: str | None) -> None:
    """Print the messages a template renders to, as JSON."""
    variables = _variables(pairs, vars_json)
    try:
        row = templates_store.get(database_engine(), name, version)
        messages = render(row["body"], variables, row["name"], row["version"])
    except TemplateError as exc:
        raise _fail(exc) from None
    click.echo(json.dumps(messages, indent=2))


@templates_group.command("sync")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def sync(directory: Path, as_json: bool) -> None:
    """Load every *.j2 under DIRECTORY (sub-folder = category); changed files only."""
    try:
        report = templates_store.sync_dir(database_engine(), directory, actor=cli_actor())
    except TemplateError as exc:
        raise _fail(exc) from None
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for item in report:
        state = "new version" if item["changed"] else "unchanged"
        click.echo(f"{item['path']}\t{item['name']} v{item['version']}\t{state}")
