"""What an A/B experiment's definition may say, checked the same way wherever one is
made: by an agent (``client.experiments.create``), the CLI, or the fleet file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from schemas.errors import ExperimentError
from schemas.evaluators import check_evaluator

__all__ = ["METRICS", "UNITS", "check_definition"]

#: What an experiment may randomise on.
UNITS = ("user", "agent", "job")
#: What it may measure: the rate of successful outcomes, or their mean score.
METRICS = ("success_rate", "score")
_VARIANT_KEYS = {"name", "weight", "template", "version", "model", "tier"}


def check_definition(name: str, unit: str, primary_metric: str,
                     variants: Sequence[Mapping[str, Any]], alpha: float,
                     evaluator: Mapping[str, Any] | None = None
                     ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The variants and evaluator, normalised; ExperimentError naming what is wrong."""
    def fail(why: str) -> ExperimentError:
        return ExperimentError(f"experiment {name!r}: {why}", experiment=name)

    if not name or len(name) > 200:
        raise fail("a name of 1 to 200 characters is needed")
    if unit not in UNITS:
        raise fail(f"unit must be one of {UNITS}, not {unit!r}")
    if primary_metric not in METRICS:
        raise fail(f"primary_metric must be one of {METRICS}, not {primary_metric!r}")
    if not isinstance(alpha, int | float) or not 0 < alpha < 0.5:
        raise fail(f"alpha must be in (0, 0.5), not {alpha}")
    if len(variants) < 2:
        raise fail("at least two variants are needed")
    clean: list[dict[str, Any]] = []
    for variant in variants:
        if not isinstance(variant, Mapping):
            raise fail("each variant is a table: name, weight, template, version, model, tier")
        unknown = set(variant) - _VARIANT_KEYS
        if unknown or not variant.get("name"):
            raise fail(f"a variant needs a name and takes only {sorted(_VARIANT_KEYS)}")
        weight = variant.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
            raise fail(f"variant {variant['name']!r}: weight must be a positive number")
        version = variant.get("version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                    or version < 1):
            raise fail(f"variant {variant['name']!r}: version must be a whole number >= 1")
        if version is not None and not variant.get("template"):
            raise fail(f"variant {variant['name']!r}: a version needs a template")
        clean.append({**variant, "name": str(variant["name"]), "weight": weight})
    if len({v["name"] for v in clean}) != len(clean):
        raise fail("variant names must be unique")
    spec = None if evaluator is None else check_evaluator(evaluator, name)
    return clean, spec
