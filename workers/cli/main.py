"""The ``llmfleet`` command line.

Every command reads the same environment (REDIS_URL, DATABASE_URL, LLMFLEET_CONFIG,
...). With REDIS_URL or DATABASE_URL unset, the embedded servers under
LLMFLEET_DATA_DIR are started (once) or joined.
"""

from __future__ import annotations

import sys

import click

from schemas import ConfigError, FleetError

__all__ = ["cli", "main"]


def _fail(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="WARNING", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def cli(log_level: str) -> None:
    """llmfleet: LLM completion and embedding jobs on tiered Celery queues.

    Start with `llmfleet demo`: it runs the whole fleet on embedded servers and the
    bundled provider simulator, then stops it.
    """
    from schemas import Settings
    from workers.observability.logs import configure_logging

    try:
        log_format = Settings.from_env().log_format
    except ConfigError:  # the command reports it when it reads its settings
        log_format = "text"
    configure_logging(log_format=log_format, level=log_level.upper())


def _add_commands() -> None:
    """Every command family, each in its own module."""
    from workers.cli.api import api_command, keys_group
    from workers.cli.audit import audit_command
    from workers.cli.experiments import experiments_group
    from workers.cli.fleet import FLEET_COMMANDS
    from workers.cli.ledger import ledger_group
    from workers.cli.limits import limits_command
    from workers.cli.reports import REPORT_COMMANDS
    from workers.cli.templates import templates_group

    for command in [*FLEET_COMMANDS, *REPORT_COMMANDS, api_command, keys_group, templates_group,
                    experiments_group, ledger_group, limits_command, audit_command]:
        cli.add_command(command)


_add_commands()


def main() -> None:
    try:
        cli(standalone_mode=True)
    except ConfigError as exc:
        _fail(str(exc))
    except FleetError as exc:
        _fail(f"{type(exc).__name__}: {exc}")

