"""``llmfleet api`` and ``llmfleet keys``: serve the HTTP API; make, list and revoke the
fleet keys its callers present, with limits of their own and a priority. Registered on
the main group by ``workers.cli``."""

from __future__ import annotations

import json
import logging
from typing import cast

import click

from schemas import load_config
from workers.cli.database import cli_actor, database_engine

__all__ = ["api_command", "keys_group"]

log = logging.getLogger(__name__)


@click.command("api")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", "processes", default=1, show_default=True,
              type=click.IntRange(1, 64), help="API processes (each serves many requests).")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def api_command(host: str, port: int, processes: int, log_level: str) -> None:
    """Serve the HTTP API: /v1 (OpenAI wire format, fleet keys), /api/admin/ml-ops
    (LLMFLEET_ADMIN_KEY), the /dashboard page and /metrics (Prometheus)."""
    import os

    import uvicorn

    from workers.devstack.services import export_service_env, resolve_services
    from workers.store.engines import require_migrated

    settings, _ = load_config()
    services = resolve_services(settings)
    export_service_env(services)  # every uvicorn process joins the same servers
    assert services.database_url is not None
    if not require_migrated(services.database_url):
        raise click.ClickException("Postgres is unreachable: fleet keys cannot be checked")
    if not os.environ.get("LLMFLEET_ADMIN_KEY"):
        click.secho("LLMFLEET_ADMIN_KEY is not set: the admin API is off"
                    + ("" if os.environ.get("LLMFLEET_METRICS_TOKEN") else
                       ", and /metrics too (or set LLMFLEET_METRICS_TOKEN)"),
                    fg="yellow", err=True)
    click.echo(f"llmfleet API on http://{host}:{port} ({processes} process(es)); "
               f"dashboard: http://{host}:{port}/dashboard", err=True)
    from uvicorn.config import LOGGING_CONFIG

    from workers.api.protocol import NoDelayH11Protocol
    from workers.observability.logs import uvicorn_log_config

    # JSON lines (LLMFLEET_LOG_FORMAT=json): uvicorn's loggers and the root logger, in
    # every API process; else uvicorn's own configuration.
    uvicorn.run("workers.api.app:create_app", factory=True, host=host, port=port,
                workers=processes, log_level=log_level, timeout_graceful_shutdown=10,
                http=NoDelayH11Protocol,
                log_config=uvicorn_log_config(log_level) if settings.log_format == "json"
                else LOGGING_CONFIG)


@click.group("keys")
def keys_group() -> None:
    """Fleet keys of the HTTP API: each names the agent and user budgets see, and may
    carry limits of its own and the priority of its jobs."""


_LIMIT = click.IntRange(1, 2**31 - 1)


@keys_group.command("create")
@click.option("--agent", required=True, help="The agent the ledger and budgets see.")
@click.option("--user", default=None, help="The user the ledger and budgets see.")
@click.option("--expires", default=None, help="Lifetime such as 30d, 12h, 2w (default: none).")
@click.option("--rpm", type=_LIMIT, default=None,
              help="The key's own limit: requests per minute (default: none).")
@click.option("--tpm", type=_LIMIT, default=None,
              help="The key's own limit: tokens per minute, a job's prompt and max_tokens "
                   "(default: none).")
@click.option("--concurrency", type=_LIMIT, default=None,
              help="The key's own limit: jobs in flight at once (default: none).")
@click.option("--limit-mode", type=click.Choice(["reject", "queue"]), default=None,
              help="Over the key's limit: reject (HTTP 429 with Retry-After, the default) "
                   "or queue (the job waits until it fits or its timeout passes).")
@click.option("--priority", type=click.Choice(["high", "normal", "low"]), default="normal",
              show_default=True, help="Which of its tier's queues the key's jobs wait in; a "
                                      "request may name another (x-llmfleet-priority).")
@click.option("--deadline", default=None,
              help="How long the key's jobs that name no deadline can wait (24h, 90m or "
                   "seconds): long enough, they go through providers' batch APIs at "
                   "batch prices (default: none).")
@click.option("--json", "as_json", is_flag=True)
def create(agent: str, user: str | None, expires: str | None, rpm: int | None,
           tpm: int | None, concurrency: int | None, limit_mode: str | None, priority: str,
           deadline: str | None, as_json: bool) -> None:
    """Make a key. It is printed once: only its hash is stored.

    With --rpm, --tpm or --concurrency the key has a limit of its own, `key-<key id>`,
    enforced fleet-wide beside the fleet file's [[limits]] (see `llmfleet limits`)."""
    from pydantic import ValidationError

    from schemas import CompletionJob, Priority, parse_duration, validation_error
    from workers.api.keys import KeyLimits, LimitMode, create_key

    try:  # the names must be ones a job may carry
        CompletionJob.model_validate({"messages": [{"role": "user", "content": "x"}],
                                      "agent": agent, "user": user})
    except ValidationError as exc:
        raise click.BadParameter(str(validation_error(exc))) from None
    try:
        lifetime = parse_duration(expires) if expires else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires") from None
    if limit_mode is not None and (rpm, tpm, concurrency) == (None, None, None):
        raise click.BadParameter("a limit mode needs a limit: add --rpm, --tpm or "
                                 "--concurrency", param_hint="--limit-mode")
    limits = KeyLimits(rpm=rpm, tpm=tpm, concurrency=concurrency,
                       mode=cast(LimitMode, limit_mode or "reject"),
                       priority=cast(Priority, priority), deadline=_deadline(deadline))
    key_id, key = create_key(database_engine(), agent, user, lifetime, limits,
                             actor=cli_actor())
    if as_json:
        click.echo(json.dumps({"key_id": key_id, "key": key, "agent": agent, "user": user,
                               "rpm": rpm, "tpm": tpm, "concurrency": concurrency,
                               "limit_mode": limits.mode, "priority": priority,
                               "deadline_s": limits.deadline}))
        return
    click.echo(key)
    click.secho(f"key id {key_id} for agent {agent!r}, user {user!r}"
                f"{f', expires in {expires}' if expires else ''}; limits: "
                f"{_limits_text(limits.rpm, limits.tpm, limits.concurrency, limits.mode)}; "
                f"priority {priority}; deadline {_deadline_text(limits.deadline)}. "
                f"Keep the key: it is not shown again.", fg="cyan",
                err=True)


def _deadline(value: str | None) -> float | None:
    """--deadline as seconds (a job's own rule: seconds or a duration, within its
    bounds), else a usage error naming it."""
    if value is None:
        return None
    from pydantic import ValidationError

    from schemas import CompletionJob

    try:
        job = CompletionJob.model_validate({"messages": [{"role": "user", "content": "x"}],
                                            "deadline": value})
    except ValidationError as exc:
        message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise click.BadParameter(message, param_hint="--deadline") from None
    return job.deadline


def _deadline_text(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:g}s"


def _limits_text(rpm: int | None, tpm: int | None, concurrency: int | None,
                 mode: str | None) -> str:
    parts = [f"{value} {unit}" for value, unit in ((rpm, "rpm"), (tpm, "tpm"),
                                                   (concurrency, "in flight"))
             if value is not None]
    return f"{', '.join(parts)} ({mode or 'reject'})" if parts else "none"


@keys_group.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_command(as_json: bool) -> None:
    """Every key's id, agent, user, dates, state, limits, priority and default deadline
    (never the key)."""
    from workers.api.keys import list_keys

    rows = list_keys(database_engine())
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    for row in rows:
        state = "revoked" if row["revoked_at"] else "active"
        expires = row["expires_at"].isoformat() if row["expires_at"] else "never"
        limits = _limits_text(row["rpm"], row["tpm"], row["concurrency"], row["limit_mode"])
        click.echo(f"{row['key_id']}  {state:8} agent={row['agent']} "
                   f"user={row['user_id'] or '-'} created={row['created_at']:%Y-%m-%d} "
                   f"expires={expires} limits={limits} "
                   f"priority={row['priority'] or 'normal'} "
                   f"deadline={_deadline_text(row['deadline_s'])}")


@keys_group.command("revoke")
@click.argument("key_id")
def revoke(key_id: str) -> None:
    """Revoke a key by its id; API processes stop accepting it within seconds."""
    from workers.api.keys import revoke_key

    if not revoke_key(database_engine(), key_id, actor=cli_actor()):
        raise click.ClickException(f"no active key with id {key_id!r}")
    click.echo(f"revoked {key_id}")
