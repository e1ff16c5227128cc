"""``llmfleet experiments``: show, start, stop and report A/B experiments, straight
from Postgres (``workers.experiments_store``); creating one is an agent's call
(``client.experiments.create``), where its variants are written next to the code."""

from __future__ import annotations

import json
from typing import Any

import click

from schemas import ExperimentError, TemplateError
from workers import experiments_store as store
from workers.cli_templates import database_engine

__all__ = ["experiments_group"]


def _num(value: Any, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def _print_report(rep: dict[str, Any]) -> None:
    click.echo(f"experiment {rep['experiment']} ({rep['status']}), unit {rep['unit']}, "
               f"metric {rep['primary_metric']}, alpha {rep['alpha']}")
    click.echo("variant\tjobs\toutcomes\trate\tci95\tscore\tp50_ms\tp95_ms\tcost_usd\ttokens")
    for v in rep["variants"]:
        ci = v["success_ci95"]
        interval = "-" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"
        click.echo("\t".join([
            v["name"], str(v["jobs"]), str(v["outcomes"]), _num(v["success_rate"]), interval,
            _num(v["mean_score"]), _num(v.get("latency_p50_ms"), "{:.0f}"),
            _num(v.get("latency_p95_ms"), "{:.0f}"), _num(v.get("mean_cost_usd"), "{:.6f}"),
            _num(v.get("mean_tokens"), "{:.1f}")]))
    verdict = (f"winner {rep['winner']}" if rep["winner"] else
               f"no winner yet (about {rep['needed_per_variant']} outcomes per variant "
               "would detect the observed difference)" if rep["needed_per_variant"]
               else "no winner yet")
    click.echo(f"p = {_num(rep['p_value'], '{:.4g}')}: {verdict}")


@click.group("experiments")
def experiments_group() -> None:
    """A/B experiments over templates, models and tiers (created by agents)."""


@experiments_group.command("report")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def report(name: str, as_json: bool) -> None:
    """Per variant: outcomes, success rate with its 95% interval, score, latency, cost;
    and the test on the primary metric."""
    try:
        rep = store.report(database_engine(), name)
    except ExperimentError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    if as_json:
        click.echo(json.dumps(rep, indent=2))
    else:
        _print_report(rep)


def _move(name: str, status: str) -> None:
    try:
        done = store.set_status(database_engine(), name, status)
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
