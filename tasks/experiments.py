"""A/B experiments on the agent's side: sticky assignment and ``client.experiments``.

Assignment is a pure function of (experiment, unit): every agent process on every
machine puts the same user (or agent, or job) in the same variant with no shared state
and no round trip. The unit's sha256 is read as a point in [0, 1) and the variants'
weights split that interval. Definitions, outcomes and reports live in Postgres and are
reached through tasks on the admin queue, like templates.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery

from schemas import ExperimentError, JobValidationError, new_job_id
from schemas.experiments import METRICS, UNITS, check_definition
from tasks._results import ResultWaiter
from tasks.names import EXPERIMENTS_CREATE, EXPERIMENTS_GET, EXPERIMENTS_REPORT, EXPERIMENTS_STATUS
from tasks.templates import admin_call

__all__ = ["METRICS", "UNITS", "Experiments", "assign", "check_definition"]

#: Seconds a client trusts a fetched definition (its own start/stop clear it at once).
DEFINITION_TTL_S = 5.0


def assign(experiment: str, unit_value: str, variants: Sequence[Mapping[str, Any]]) -> str:
    """The variant of ``unit_value``: deterministic, sticky, in proportion to weights."""
    digest = hashlib.sha256(f"{experiment}\x00{unit_value}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    weights = [float(v.get("weight", 1)) for v in variants]
    total = sum(weights)
    edge = 0.0
    for variant, weight in zip(variants, weights, strict=True):
        edge += weight / total
        if point < edge:
            return str(variant["name"])
    return str(variants[-1]["name"])  # float rounding at the top edge


class Experiments:
    """``client.experiments``: create, start, stop, get and report experiments."""

    def __init__(self, app: Celery, waiter: ResultWaiter, timeout: float = 30) -> None:
        self._app = app
        self._waiter = waiter
        self._timeout = timeout
        self._definitions: dict[str, tuple[float, dict[str, Any]]] = {}

    def _call(self, task: str, args: list[Any]) -> Any:
        return admin_call(self._app, self._waiter, task, args, self._timeout)

    def create(self, name: str, *, unit: str, primary_metric: str,
               variants: Sequence[Mapping[str, Any]], alpha: float = 0.05,
               evaluator: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Define an experiment (status "draft"); ``start`` puts it to work.
        ``evaluator`` (``{"kind": "min_length", "chars": 200}``, ``regex`` with
        ``pattern``, ``json``, or a plugin's kind) judges each answer, so outcomes need
        no agent feedback (``schemas.evaluators``)."""
        clean, spec = check_definition(name, unit, primary_metric, variants, alpha, evaluator)
        result: dict[str, Any] = self._call(EXPERIMENTS_CREATE,
                                            [name, unit, primary_metric, clean, alpha, spec])
        return result

    def start(self, name: str) -> dict[str, Any]:
        self._definitions.pop(name, None)
        result: dict[str, Any] = self._call(EXPERIMENTS_STATUS, [name, "running"])
        return result

    def stop(self, name: str) -> dict[str, Any]:
        """Stop assigning; the report's winner (if any) is recorded and used after."""
        self._definitions.pop(name, None)
        result: dict[str, Any] = self._call(EXPERIMENTS_STATUS, [name, "stopped"])
        return result

    def get(self, name: str) -> dict[str, Any]:
        cached = self._definitions.get(name)
        if cached is not None and time.monotonic() - cached[0] < DEFINITION_TTL_S:
            return cached[1]
        definition: dict[str, Any] = self._call(EXPERIMENTS_GET, [name])
        self._definitions[name] = (time.monotonic(), definition)
        return definition

    def report(self, name: str) -> dict[str, Any]:
        """Per variant: jobs, outcomes, success rate with its 95% interval, mean score,
        latency, cost; and the test on the primary metric (p_value, winner)."""
        result: dict[str, Any] = self._call(EXPERIMENTS_REPORT, [name])
        return result

    def _unit_value(self, definition: Mapping[str, Any], options: dict[str, Any],
                    agent: str) -> str:
        unit = definition["unit"]
        if unit == "user":
            if not options.get("user"):
                raise JobValidationError("user: this experiment assigns by user; give user=",
                                         field="user")
            return str(options["user"])
        if unit == "agent":
            return str(options.get("agent") or agent)
        return str(options.setdefault("job_id", new_job_id()))

    def expand(self, messages: Any, options: Mapping[str, Any],
               agent: str) -> tuple[Any, dict[str, Any]]:
        """For ``submit``: pick the variant of ``experiment=`` and apply what it sets
        (template, version, model, tier); the job's metadata records both names."""
        rest = dict(options)
        name = rest.pop("experiment", None)
        if name is None:
            return messages, rest
        definition = self.get(str(name))
        variants = definition["variants"]
        if definition["status"] == "running":
            chosen = assign(definition["name"], self._unit_value(definition, rest, agent),
                            variants)
            metadata = {**(rest.get("metadata") or {}), "experiment": definition["name"],
                        "variant": chosen}
            if definition.get("evaluator"):  # metadata holds scalars: the spec as JSON
                metadata["evaluator"] = json.dumps(definition["evaluator"], sort_keys=True)
            rest["metadata"] = metadata
        elif definition["status"] == "stopped":
            chosen = definition.get("winner") or variants[0]["name"]
        else:
            raise ExperimentError(f"experiment {name!r} is a draft: start it first",
                                  experiment=str(name))
        variant = next(v for v in variants if v["name"] == chosen)
        for key in ("template", "version", "model", "tier"):
            if variant.get(key) is not None:
                rest[key] = variant[key]
        if variant.get("model") is not None and variant.get("tier") is None:
            rest.pop("tier", None)  # the variant's model picks its own tier
        return messages, rest
