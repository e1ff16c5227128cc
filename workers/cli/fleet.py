"""Commands that run the fleet: ``worker``, ``beat``, ``simulator``, ``submit``, ``demo``,
``up``, ``migrate``, ``down``."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from schemas import load_config

__all__ = ["FLEET_COMMANDS"]


def _tiers(value: str | None, known: list[str]) -> list[str]:
    if not value:
        return known
    chosen = [t.strip() for t in value.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in known]
    if unknown:
        raise click.BadParameter(f"unknown tier(s) {unknown}; known: {known}", param_hint="--tiers")
    return chosen


@click.command()
@click.option("--tiers", help="Comma-separated tiers to consume (default: every tier, "
              "embeddings included).")
@click.option("--concurrency", "-c", default=64, show_default=True, type=click.IntRange(1, 1024),
              help="Jobs in flight in this process (its prefetch window; also the "
              "pool threads of its other tasks).")
@click.option("--loglevel", default="INFO", show_default=True, help="Celery's log level.")
@click.option("--hostname", "-n", default=None, help="Worker node name (default from tiers).")
def worker(tiers: str | None, concurrency: int, loglevel: str, hostname: str | None) -> None:
    """Run a worker consuming the queues of some tiers (llm.<tier>).

    Scale out by running more of these, on this or other machines, against the same
    REDIS_URL.
    """
    from tasks.celery_config import fleet_queues
    from tasks.names import ADMIN_QUEUE
    from workers.app import create_app, observe, use_fleet_transport
    from workers.devstack.services import export_service_env, resolve_services
    from workers.providers import missing_keys
    from workers.runtime import warm_up
    from workers.store.engines import require_migrated

    settings, fleet = load_config()
    chosen = _tiers(tiers, list(fleet.tiers))
    services = resolve_services(settings)
    export_service_env(services)
    if services.database_url and settings.enable_cost_tracking and \
            not require_migrated(services.database_url):
        click.secho("warning: Postgres is unreachable: ledger rows wait in Redis until it is "
                    "back", fg="yellow", err=True)
    if not settings.simulator_url:
        for provider, var in missing_keys(fleet, chosen, os.environ).items():
            click.secho(f"warning: {var} is not set: provider {provider!r} will refuse "
                        "calls and its models will fall back", fg="yellow", err=True)
    queues = fleet_queues(fleet, chosen)
    queues.append(ADMIN_QUEUE)  # housekeeping: any worker may run it
    observe(settings, "llmfleet-worker")
    app = create_app(services.redis_url, fleet)
    use_fleet_transport(app, services.redis_url)
    warm_up()  # build the HTTP client and load the tokenizer now, not in the first job
    name = hostname or f"llmfleet-{'-'.join(chosen)}@%h"
    from workers.intake import JobPool

    app.conf.worker_pool = f"{JobPool.__module__}:{JobPool.__name__}"
    app.worker_main(["worker", "--queues", ",".join(queues),
                     "--concurrency", str(concurrency), "--loglevel", loglevel,
                     "--hostname", name, "--without-mingle", "--without-gossip"])


@click.command()
@click.option("--loglevel", default="INFO", show_default=True)
def beat(loglevel: str) -> None:
    """Run Celery beat: heartbeat, enforce_budgets, rollup_metrics, purge_expired and
    evaluate_alerts, at the intervals of the fleet file's [beat] section.

    Run one on each of several hosts if you like: one beat is active at a time (a lock
    in Redis, RedBeat's), the others stand by and one takes over within [beat]
    lock_timeout_s (30 s) when the active one dies. The schedule lives in Redis too.
    """
    from workers.app import beat_settings, create_app, observe
    from workers.devstack.services import export_service_env, resolve_services

    settings, fleet = load_config()
    observe(settings, "llmfleet-beat")
    services = resolve_services(settings, postgres=False)
    export_service_env(services)
    app = create_app(services.redis_url, fleet)
    app.conf.update(beat_settings(services.redis_url, fleet))
    app.start(["beat", "--loglevel", loglevel])


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--latency-ms", default=50.0, show_default=True, type=float,
              help="Delay of each answer.")
@click.option("--error-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Share of calls answered with a server error (503 / 529).")
@click.option("--rate-limit-rate", default=0.0, show_default=True,
              type=click.FloatRange(0, 1), help="Share of calls answered 429 with Retry-After.")
@click.option("--retry-after", default=1, show_default=True, type=int,
              help="Seconds the 429s ask to wait.")
@click.option("--malformed-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Share of JSON answers (structured output, tool-call arguments) made "
              "invalid: broken JSON and JSON that breaks the schema, in turn.")
@click.option("--first-token-ms", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Streams: delay before the first content delta (instead of --latency-ms).")
@click.option("--token-ms", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Streams: delay between content deltas (a few tokens each).")
@click.option("--stream-failure-rate", default=0.0, show_default=True,
              type=click.FloatRange(0, 1),
              help="Share of streams that fail after some deltas (an error event, then the "
              "end of the stream).")
@click.option("--quota-rpm", multiple=True, metavar="MODEL=N",
              help="A provider quota: requests per minute of a wire model, answered 429 "
              "past it (repeatable).")
@click.option("--quota-tpm", multiple=True, metavar="MODEL=N",
              help="A provider quota: tokens (prompt and max_tokens) per minute of a wire "
              "model (repeatable).")
@click.option("--quota-window-s", default=60.0, show_default=True,
              type=click.FloatRange(0, min_open=True),
              help="The sliding window quotas are counted over (a provider that counts per "
              "second: 1).")
@click.option("--batch-completion-s", default=2.0, show_default=True,
              type=click.FloatRange(0, max_open=True, max=float("inf")),
              help="Batches (OpenAI's Batch API, Anthropic's Message Batches): time from "
              "creation to the end, items answered progressively (huge: stalled).")
@click.option("--batch-item-error-rate", default=0.0, show_default=True,
              type=click.FloatRange(0, 1), help="Share of batch items that end in an error.")
@click.option("--batch-expire", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Share of batches that expire instead of completing (about half their "
              "items answered, the rest expired).")
def simulator(host: str, port: int, latency_ms: float, error_rate: float,
              rate_limit_rate: float, retry_after: int, malformed_rate: float,
              first_token_ms: float, token_ms: float, stream_failure_rate: float,
              quota_rpm: tuple[str, ...], quota_tpm: tuple[str, ...],
              quota_window_s: float, batch_completion_s: float,
              batch_item_error_rate: float, batch_expire: float) -> None:
    """Serve the provider simulator (OpenAI and Anthropic wire formats) over HTTP.

    Point a fleet at it with LLMFLEET_SIMULATOR_URL=http://HOST:PORT. Change its
    behaviour while it runs with POST /_sim/config; read its counts at GET /_sim/stats
    (streams at GET /_sim/stats/streams).
    """
    from workers.devstack.simulator import SimulatorConfig, run_simulator

    config = SimulatorConfig(latency_ms=latency_ms, error_rate=error_rate,
                             rate_limit_rate=rate_limit_rate, retry_after_s=retry_after,
                             malformed_rate=malformed_rate, first_token_ms=first_token_ms,
                             token_ms=token_ms, stream_failure_rate=stream_failure_rate,
                             quota_rpm=_per_model(quota_rpm, "--quota-rpm"),
                             quota_tpm=_per_model(quota_tpm, "--quota-tpm"),
                             quota_window_s=quota_window_s,
                             batch_completion_s=batch_completion_s,
                             batch_item_error_rate=batch_item_error_rate,
                             batch_expire=batch_expire)
    click.echo(f"provider simulator on http://{host}:{port} "
               f"(OpenAI at /v1, Anthropic at /v1/messages)")
    run_simulator(host=host, port=port, config=config)


def _per_model(pairs: tuple[str, ...], option: str) -> dict[str, int]:
    """``MODEL=N`` pairs (a model name may hold ``=``: the last one splits)."""
    quotas: dict[str, int] = {}
    for pair in pairs:
        model, _, number = pair.rpartition("=")
        if not model or not number.isdigit() or int(number) < 1:
            raise click.BadParameter(f"{pair!r}: expected MODEL=N with N >= 1",
                                     param_hint=option)
        quotas[model] = int(number)
    return quotas


@click.command()
@click.argument("prompt")
@click.option("--tier", default=None, help="Tier to run on (default: the fleet's default).")
@click.option("--model", default=None, help="A model of the fleet file instead of a tier.")
@click.option("--system", default=None, help="A system prompt.")
@click.option("--max-tokens", default=None, type=int)
@click.option("--temperature", default=None, type=float)
@click.option("--agent", default="cli", show_default=True)
@click.option("--user", default=None)
@click.option("--timeout", default=60.0, show_default=True, type=float)
@click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON.")
def submit(prompt: str, tier: str | None, model: str | None, system: str | None,
           max_tokens: int | None, temperature: float | None, agent: str, user: str | None,
           timeout: float, as_json: bool) -> None:
    """Submit one completion job to a running fleet and print the answer."""
    from tasks import FleetClient

    messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    with FleetClient(agent=agent) as client:
        result = client.complete(messages, tier=tier, model=model, max_tokens=max_tokens,
                                 temperature=temperature, user=user, timeout=timeout)
    if as_json:
        click.echo(json.dumps(result.model_dump(mode="json"), indent=2))
        return
    click.echo(result.content)
    click.secho(f"[{result.model} via {result.provider}, tier {result.tier}, "
                f"{result.usage.prompt_tokens}+{result.usage.completion_tokens} tokens, "
                f"${result.cost_usd:.6f}, {result.latency_ms:.0f} ms, "
                f"{result.attempts} attempt(s)]", fg="cyan", err=True)


@click.command()
@click.option("--jobs", default=200, show_default=True, type=click.IntRange(10, 100_000),
              help="How many jobs the three sample agents submit together.")
@click.option("--latency-ms", default=50.0, show_default=True, type=float,
              help="The simulator's answer delay.")
@click.option("--keep-servers", is_flag=True,
              help="Leave the embedded servers running afterwards.")
def demo(jobs: int, latency_ms: float, keep_servers: bool) -> None:
    """Run the whole fleet once: embedded servers, simulator, a worker per tier, beat,
    and three sample agents (coder, planner, reviewer); print a summary; stop it all."""
    from workers.devstack.demo.run import run_demo

    sys.exit(run_demo(jobs=jobs, latency_ms=latency_ms, keep_servers=keep_servers))


@click.command()
@click.option("--concurrency", "-c", default=32, show_default=True, type=int,
              help="Jobs in flight per worker process.")
@click.option("--flower-port", default=5555, show_default=True, type=int)
@click.option("--simulator-port", default=8765, show_default=True, type=int)
@click.option("--api-port", default=8000, show_default=True, type=int)
def up(concurrency: int, flower_port: int, simulator_port: int, api_port: int) -> None:
    """Run the fleet until Ctrl-C: servers, a worker per tier, beat, the HTTP API and
    Flower (behind
    basic auth: LLMFLEET_FLOWER_USER / LLMFLEET_FLOWER_PASSWORD, else generated).
    Starts the provider simulator when no provider key is set."""
    from workers.devstack.up import run_up

    sys.exit(run_up(concurrency=concurrency, flower_port=flower_port,
                    simulator_port=simulator_port, api_port=api_port))


@click.command()
def migrate() -> None:
    """Create or upgrade the fleet's tables in DATABASE_URL (or the embedded Postgres)."""
    from workers.devstack.services import resolve_services
    from workers.store.engines import migrate as run_migrations
    from workers.store.engines import safe_url

    settings, _ = load_config()
    services = resolve_services(settings)
    assert services.database_url is not None
    before, after = run_migrations(services.database_url)
    where = safe_url(services.database_url)
    if before == after:
        click.echo(f"{where} is up to date (revision {after})")
    else:
        click.echo(f"{where}: migrated from {before or 'an empty database'} to {after}")


@click.command()
def down() -> None:
    """Stop the embedded servers under LLMFLEET_DATA_DIR."""
    from workers.devstack.embedded import stop_stack

    settings, _ = load_config()
    stopped = stop_stack(settings.resolved_data_dir)
    click.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")


#: What the lead adds to the ``llmfleet`` group.
FLEET_COMMANDS: list[click.Command] = [worker, beat, simulator, submit, demo, up, migrate, down]
