"""The demo's templates and experiment: the coder agent's prompt is a stored template,
and one A/B experiment compares two of its versions, judged by an automatic evaluator.

Version 1 asks for the code; version 2 also asks for its inputs, errors and tests. The
evaluator calls an answer a success when it is longer than ``MIN_CHARS`` characters:
the brief's "answer longer than N characters", standing in for a quality check.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from schemas import TemplateNotFoundError
from tasks import FleetClient
from workers.store.statistics import figure, verdict

__all__ = ["CODER_TEMPLATE", "MIN_CHARS", "prepare_coder_experiment", "show_experiment"]

CODER_TEMPLATE = "coder_task"
MIN_CHARS = 150
_SYSTEM = "### system\nYou write production code.\n### user\n"
_BODIES = (
    _SYSTEM + "Write {{ topic }}.",
    _SYSTEM + "Write {{ topic }}. Name its inputs and outputs, the errors it raises and "
              "their messages, the edge cases of each input, and the tests that show it "
              "works, step by step.",
)


def _versions(client: FleetClient) -> tuple[int, int]:
    """The two versions' numbers, reusing those a former run stored (a version never
    changes, and storing the same text again would add a version each run)."""
    try:
        latest = client.templates.get(CODER_TEMPLATE)
    except TemplateNotFoundError:
        latest = None
    if latest is not None and latest.body == _BODIES[1] and latest.version > 1:
        before = client.templates.get(CODER_TEMPLATE, latest.version - 1)
        if before.body == _BODIES[0]:
            return before.version, latest.version
    first = client.templates.put(CODER_TEMPLATE, _BODIES[0], category="code")
    return first, client.templates.put(CODER_TEMPLATE, _BODIES[1], category="code")


def prepare_coder_experiment(client: FleetClient, run_id: str, console: Console) -> str:
    """Store the coder's template at two versions and start this run's experiment
    over them (its name carries the run id: an experiment's definition never changes,
    and each run measures its own jobs); the experiment's name."""
    v1, v2 = _versions(client)
    name = f"coder_prompt_{run_id}"
    client.experiments.create(
        name, unit="job", primary_metric="success_rate",
        evaluator={"kind": "min_length", "chars": MIN_CHARS},
        variants=[{"name": "terse", "template": CODER_TEMPLATE, "version": v1},
                  {"name": "detailed", "template": CODER_TEMPLATE, "version": v2}])
    client.experiments.start(name)
    console.print(f"The coder's prompt is template {CODER_TEMPLATE!r}; experiment {name!r} "
                  f"splits its jobs between version {v1} (terse) and {v2} (detailed), "
                  f"an answer over {MIN_CHARS} characters counting as a success")
    return name


def show_experiment(client: FleetClient, name: str, console: Console) -> dict[str, Any]:
    """Print the experiment's report (as ``llmfleet experiments report``); the report."""
    report: dict[str, Any] = client.experiments.report(name)
    table = Table(title=f"Experiment {name} (outcomes from the evaluator)")
    for column in ("variant", "jobs", "outcomes", "success", "95% interval", "p50 ms",
                   "mean cost $"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for v in report["variants"]:
        ci = v["success_ci95"]
        table.add_row(v["name"], str(v["jobs"]), str(v["outcomes"]),
                      figure(v["success_rate"], "{:.0%}"),
                      "-" if ci is None else f"{ci[0]:.0%} to {ci[1]:.0%}",
                      figure(v.get("latency_p50_ms"), "{:.0f}"),
                      figure(v.get("mean_cost_usd"), "{:.6f}"))
    console.print(table)
    console.print(f"p = {figure(report['p_value'], '{:.3g}')}, {verdict(report)} "
                  f"(`llmfleet experiments report {name}`)")
    return report
