"""``llmfleet experiments``: list, create, start, stop and report A/B experiments,
straight from Postgres (``workers.store.experiments``). Agents create them with
``client.experiments.create``, and the fleet file may declare them (``[[experiments]]``),
written to Postgres on first use or by any command here."""

from __future__ import annotations

import json
from typing import Any

import click
from sqlalchemy import Engine

from schemas import ExperimentError, TemplateError, load_config
from workers.cli.database import cli_actor, database_engine
from workers.store import experiments as store
from workers.store.statistics import figure, verdict

__all__ = ["experiments_group"]


def _print_report(rep: dict[str, Any]) -> None:
    click.echo(f"experiment {rep['experiment']} ({rep['status']}), unit {rep['unit']}, "
               f"metric {rep['primary_metric']}, alpha {rep['alpha']}")
    click.echo("variant\tjobs\toutcomes\trate\tci95\tscore\tp50_ms\tp95_ms\tcost_usd\ttokens")
    for v in rep["variants"]:
        ci = v["success_ci95"]
        interval = "-" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"
        click.echo("\t".join([
            v["name"], str(v["jobs"]), str(v["outcomes"]), figure(v["success_rate"]), interval,
            figure(v["mean_score"]), figure(v.get("latency_p50_ms"), "{:.0f}"),
            figure(v.get("latency_p95_ms"), "{:.0f}"), figure(v.get("mean_cost_usd"), "{:.6f}"),
            figure(v.get("mean_tokens"), "{:.1f}")]))
    click.echo(f"p = {figure(rep['p_value'], '{:.4g}')}: {verdict(rep)}")


def _engine() -> Engine:
    """The database, holding the fleet file's experiments too."""
    engine = database_engine()
    try:
        store.declare(engine, load_config()[1].experiments, actor=cli_actor())
    except (ExperimentError, TemplateError) as exc:
        raise click.ClickException(f"the fleet file's experiments: {exc}") from None
    return engine


def _scalar(text: str) -> Any:
    """``3`` -> 3, ``0.5`` -> 0.5, ``true`` -> True, anything else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pairs(option: str, text: str) -> dict[str, Any]:
    """``key=value,key=value`` as a dict (values as JSON scalars where they parse), or
    a JSON object (for values holding commas, such as a regex's ``{1,3}``)."""
    if text.strip().startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise click.BadParameter(f"not a JSON object: {exc}", param_hint=option) from None
        if not isinstance(parsed, dict):
            raise click.BadParameter("not a JSON object", param_hint=option)
        return parsed
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{part!r} is not key=value", param_hint=option)
        out[key.strip()] = _scalar(value.strip())
    return out


@click.group("experiments")
def experiments_group() -> None:
    """A/B experiments over templates, models and tiers: agents create them
    (client.experiments.create), the fleet file declares them ([[experiments]]), or
    `create` here does."""


@experiments_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_experiments(as_json: bool) -> None:
    """The experiments, newest first: status, unit, metric, variants, evaluator."""
    engine = _engine()
    found = [store.get(engine, name) for name in store.names(engine, limit=1000)]
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo("no experiments yet: `llmfleet experiments create --help` shows how")
        return
    click.echo("name\tstatus\tunit\tmetric\tvariants\tevaluator\twinner")
    for e in found:
        evaluator = "-" if not e["evaluator"] else ",".join(
            f"{k}={v}" for k, v in e["evaluator"].items())
        click.echo("\t".join([e["name"], e["status"], e["unit"], e["primary_metric"],
                              ",".join(v["name"] for v in e["variants"]), evaluator,
                              e["winner"] or "-"]))


@experiments_group.command("create")
@click.argument("name")
@click.option("--variant", "variants", multiple=True, required=True, metavar="KEY=VALUE,...",
              help="One variant (give two or more): name=, and any of template=, "
                   "version=, model=, tier=, weight=. E.g. "
                   "--variant name=v1,template=coder,version=1")
@click.option("--unit", type=click.Choice(["user", "agent", "job"]), default="user",
              show_default=True, help="What is assigned to a variant, stickily.")
@click.option("--metric", "primary_metric", type=click.Choice(["success_rate", "score"]),
              default="success_rate", show_default=True, help="What the test compares.")
@click.option("--alpha", type=float, default=0.05, show_default=True,
              help="Significance level of the test.")
@click.option("--evaluator", metavar="KEY=VALUE,...", default=None,
              help="Judge answers automatically: kind=min_length,chars=200 | "
                   "kind=regex,pattern=... | kind=json | a plugin's kind; or a JSON "
                   "object, for values with commas.")
@click.option("--start", is_flag=True, help="Start it at once (else it is a draft).")
def create(name: str, variants: tuple[str, ...], unit: str, primary_metric: str,
           alpha: float, evaluator: str | None, start: bool) -> None:
    """Define an experiment NAME over template versions, models or tiers."""
    parsed = [_pairs("--variant", v) for v in variants]
    spec = _pairs("--evaluator", evaluator) if evaluator else None
    engine = _engine()
    try:
        made = store.create(engine, name, unit, primary_metric, parsed, alpha, spec,
                            actor=cli_actor())
        if start:
            made = store.set_status(engine, name, "running", actor=cli_actor())
    except (ExperimentError, TemplateError) as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    click.echo(f"{name}: {made['status']}, variants "
               + ", ".join(v["name"] for v in made["variants"]))


@experiments_group.command("report")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def report(name: str, as_json: bool) -> None:
    """Per variant: outcomes, success rate with its 95% interval, score, latency, cost;
    and the test on the primary metric."""
    try:
        rep = store.report(_engine(), name)
    except ExperimentError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    if as_json:
        click.echo(json.dumps(rep, indent=2))
    else:
        _print_report(rep)


def _move(name: str, status: str) -> None:
    try:
        done = store.set_status(_engine(), name, status, actor=cli_actor())
    except (ExperimentError, TemplateError) as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    click.echo(f"{name}: {done['status']}" + (f", winner {done['winner']}"
                                              if done.get("winner") else ""))


@experiments_group.command("start")
@click.argument("name")
def start(name: str) -> None:
    """Start (or resume) assigning units to variants."""
    _move(name, "running")


@experiments_group.command("stop")
@click.argument("name")
def stop(name: str) -> None:
    """Stop assigning; the winner, if the test found one, serves every unit after."""
    _move(name, "stopped")
