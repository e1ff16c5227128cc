"""What an A/B experiment's definition may say, checked the same way wherever one is
made: by an agent (``client.experiments.create``), the CLI, or the fleet file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.errors import ExperimentError
from schemas.evaluators import check_evaluator

__all__ = ["METRICS", "UNITS", "ExperimentDefinition", "Variant", "check_definition"]

#: What an experiment may randomise on.
UNITS = ("user", "agent", "job")
#: What it may measure: the rate of successful outcomes, or their mean score.
METRICS = ("success_rate", "score")


class Variant(BaseModel):
    """One arm: what it changes (a template version, a model, a tier) and its weight."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    name: str = Field(min_length=1, max_length=200)
    weight: float = Field(default=1, gt=0)
    template: str | None = None
    version: int | None = Field(default=None, ge=1, strict=True)
    model: str | None = None
    tier: str | None = None

    @model_validator(mode="after")
    def _version_needs_template(self) -> Variant:
        if self.version is not None and not self.template:
            raise ValueError("a version needs a template")
        return self


class ExperimentDefinition(BaseModel):
    """A whole definition; ``evaluator`` as ``schemas.evaluators`` checks it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    unit: Literal["user", "agent", "job"] = "user"
    primary_metric: Literal["success_rate", "score"] = "success_rate"
    variants: list[Variant] = Field(min_length=2)
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    evaluator: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> ExperimentDefinition:
        if len({v.name for v in self.variants}) != len(self.variants):
            raise ValueError("variant names must be unique")
        return self


def _why(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{where}: {message}" if where else message


def check_definition(name: str, unit: str, primary_metric: str,
                     variants: Sequence[Mapping[str, Any]], alpha: float,
                     evaluator: Mapping[str, Any] | None = None
                     ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The variants (as JSON-able dicts, only the keys set) and the evaluator,
    normalised; ExperimentError naming what is wrong."""
    try:
        definition = ExperimentDefinition.model_validate({
            "name": name, "unit": unit, "primary_metric": primary_metric,
            "variants": list(variants), "alpha": alpha})
    except ValidationError as exc:
        raise ExperimentError(f"experiment {name!r}: {_why(exc)}", experiment=name) from None
    spec = None if evaluator is None else check_evaluator(evaluator, name)
    clean = [v.model_dump(exclude_none=True) for v in definition.variants]
    for variant in clean:  # a whole weight stays whole, as written
        if float(variant["weight"]).is_integer():
            variant["weight"] = int(variant["weight"])
    return clean, spec
