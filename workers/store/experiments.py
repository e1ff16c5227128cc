"""Experiments in Postgres: definitions, outcomes (one per job) and the report.

Which job belonged to which variant is read from the ledger (``metadata`` carries
``experiment`` and ``variant``, set by the client at submit), so feedback needs only a
job id and the report joins outcomes, latency and cost on ``job_id``.

Creating, starting and stopping an experiment is written to the audit log
(``experiment.create``, ``experiment.start``, ``experiment.stop``), the fleet file's
experiments too when ``declare`` writes them.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError

from schemas import (
    ExperimentConfig,
    ExperimentError,
    ExperimentNotFoundError,
    TemplateError,
    UnknownJobError,
)
from schemas.experiments import check_definition
from schemas.tables import experiment_outcomes, experiments, job_ledger
from workers.store import audit
from workers.store import templates as templates_store
from workers.store.figures import plain
from workers.store.statistics import Arm, decide, wilson_interval

__all__ = ["create", "declare", "feedback", "get", "names", "report", "set_status"]

_E, _O, _L = experiments.c, experiment_outcomes.c, job_ledger.c
#: Allowed moves of an experiment's status.
_MOVES = {"running": {"draft", "stopped"}, "stopped": {"running"}}
#: Errors that refuse an action (the audit log's outcome "refused").
_REFUSALS = (ExperimentError, TemplateError)
#: How long feedback waits for a just-finished job's ledger row (the spool drains
#: every half second).
LEDGER_WAIT_S = 5.0


def _definition(row: Any) -> dict[str, Any]:
    return {"name": row.name, "unit": row.unit, "primary_metric": row.primary_metric,
            "variants": row.variants, "status": row.status, "winner": row.winner,
            "alpha": row.alpha, "evaluator": row.evaluator,
            "created_at": row.created_at.isoformat()}


def _values(name: str, unit: str, primary_metric: str, variants: list[dict[str, Any]],
            alpha: float, evaluator: dict[str, Any] | None, status: str,
            engine: Engine) -> dict[str, Any]:
    clean, spec = check_definition(name, unit, primary_metric, variants, alpha, evaluator)
    for variant in clean:
        if variant.get("template"):
            templates_store.get(engine, variant["template"], variant.get("version"))
    return {"name": name, "unit": unit, "primary_metric": primary_metric, "variants": clean,
            "status": status, "alpha": alpha, "evaluator": spec,
            "created_at": dt.datetime.now(dt.UTC)}


def _audited(values: dict[str, Any]) -> dict[str, Any]:
    return {k: values[k] for k in ("unit", "primary_metric", "variants", "status", "alpha",
                                   "evaluator")}


def create(engine: Engine, name: str, unit: str, primary_metric: str,
           variants: list[dict[str, Any]], alpha: float = 0.05,
           evaluator: dict[str, Any] | None = None, *, actor: str = audit.INTERNAL,
           address: str | None = None) -> dict[str, Any]:
    """A new experiment, as a draft; its variants' templates must exist. The audit log
    records ``actor``'s attempt (refused for a bad definition or a name taken)."""
    with audit.recording(engine, actor, "experiment.create", f"experiment:{name}",
                         address=address, refusals=_REFUSALS) as entry:
        values = _values(name, unit, primary_metric, variants, alpha, evaluator, "draft",
                         engine)
        try:
            with engine.begin() as conn:
                conn.execute(insert(experiments).values(**values))
        except IntegrityError:
            raise ExperimentError(f"experiment {name!r} exists already",
                                  experiment=name) from None
        entry.after = _audited(values)
    return get(engine, name)


def declare(engine: Engine, declared: list[ExperimentConfig], *,
            actor: str = audit.INTERNAL) -> list[str]:
    """Write the fleet file's experiments that Postgres does not hold yet (with their
    declared status); the names written, each recorded in the audit log as ``actor``'s
    ``experiment.create`` from the fleet file. One already there is left as it is: its
    outcomes were measured against its stored definition."""
    written: list[str] = []
    for experiment in declared:
        values = _values(experiment.name, experiment.unit, experiment.primary_metric,
                         experiment.variants, experiment.alpha, experiment.evaluator,
                         experiment.status, engine)
        statement = (pg_insert(experiments).values(**values)
                     .on_conflict_do_nothing(index_elements=["name"]))
        with engine.begin() as conn:
            if not conn.execute(statement).rowcount:
                continue
        written.append(experiment.name)
        audit.record(engine, actor, "experiment.create", f"experiment:{experiment.name}",
                     after={**_audited(values), "source": "fleet file"})
    return written


def get(engine: Engine, name: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(select(experiments).where(_E.name == name)).first()
    if row is None:
        raise ExperimentNotFoundError(f"no experiment {name!r}", experiment=name)
    return _definition(row)


def names(engine: Engine, limit: int = 50) -> list[str]:
    """The newest experiments' names, newest first."""
    query = select(experiments.c.name).order_by(experiments.c.created_at.desc()).limit(limit)
    with engine.connect() as connection:
        return [str(n) for n in connection.execute(query).scalars()]


def set_status(engine: Engine, name: str, status: str, *, actor: str = audit.INTERNAL,
               address: str | None = None) -> dict[str, Any]:
    """Start (from draft or stopped) or stop (from running); stopping records the
    report's winner, which stopped experiments then serve to every unit. The audit log
    records ``actor``'s ``experiment.start`` or ``experiment.stop`` (refused for a move
    the status does not allow)."""
    action = {"running": "experiment.start", "stopped": "experiment.stop"}.get(
        status, f"experiment.{status}"[:60])
    with audit.recording(engine, actor, action, f"experiment:{name}", address=address,
                         refusals=_REFUSALS) as entry:
        current = get(engine, name)
        entry.before = {"status": current["status"], "winner": current["winner"]}
        if current["status"] not in _MOVES.get(status, set()):
            raise ExperimentError(f"experiment {name!r} cannot go from {current['status']} "
                                  f"to {status}", experiment=name)
        values: dict[str, Any] = {"status": status}
        if status == "stopped":
            values["winner"] = report(engine, name)["winner"]
        with engine.begin() as conn:
            conn.execute(update(experiments).where(_E.name == name).values(**values))
        done = get(engine, name)
        entry.after = {"status": done["status"], "winner": done["winner"]}
    return done


def _ledger_labels(engine: Engine, job_id: str) -> tuple[str, str] | None:
    """(experiment, variant) of a job from its ledger row, waiting briefly for a job
    that finished a moment ago; None when the ledger does not hold it."""
    deadline = time.monotonic() + LEDGER_WAIT_S
    while True:
        with engine.connect() as conn:
            meta = conn.execute(select(_L.metadata).where(_L.job_id == job_id)).scalar()
        if meta is not None:
            experiment, variant = meta.get("experiment"), meta.get("variant")
            if not experiment or not variant:
                raise UnknownJobError(f"job {job_id} is not part of any experiment",
                                      job_id=job_id)
            return str(experiment), str(variant)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def feedback(engine: Engine, job_id: str, success: bool | None = None,
             score: float | None = None) -> dict[str, Any]:
    """Record (or replace) the outcome of one experiment job."""
    if success is None and score is None:
        raise ExperimentError("feedback needs success=, score= or both", job_id=job_id)
    labels = _ledger_labels(engine, job_id)
    if labels is None:
        raise UnknownJobError(f"the ledger holds no job {job_id}", job_id=job_id)
    experiment, variant = labels
    values = {"job_id": job_id, "experiment": experiment, "variant": variant,
              "success": success, "score": score, "created_at": dt.datetime.now(dt.UTC)}
    statement = pg_insert(experiment_outcomes).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=[_O.job_id],
        set_={"success": statement.excluded.success, "score": statement.excluded.score,
              "created_at": statement.excluded.created_at})
    with engine.begin() as conn:
        conn.execute(statement)
    return {"job_id": job_id, "experiment": experiment, "variant": variant,
            "success": success, "score": score}


def _ledger_figures(engine: Engine, name: str) -> dict[str, dict[str, Any]]:
    variant = _L.metadata["variant"].astext
    query = (select(variant.label("variant"), func.count().label("jobs"),
                    func.percentile_cont(0.5).within_group(_L.latency_ms).label("p50"),
                    func.percentile_cont(0.95).within_group(_L.latency_ms).label("p95"),
                    func.avg(_L.cost_usd).label("cost"),
                    func.avg(_L.prompt_tokens + _L.completion_tokens).label("tokens"))
             .where(_L.metadata["experiment"].astext == name).group_by(variant))
    with engine.connect() as conn:
        return {row.variant: {"jobs": row.jobs, "latency_p50_ms": plain(row.p50),
                              "latency_p95_ms": plain(row.p95),
                              "mean_cost_usd": plain(row.cost),
                              "mean_tokens": plain(row.tokens)}
                for row in conn.execute(query)}


def _arms(engine: Engine, name: str) -> dict[str, Arm]:
    query = (select(_O.variant, func.count(_O.success).label("n"),
                    func.count().filter(_O.success.is_(True)).label("successes"),
                    func.array_agg(_O.score).filter(_O.score.is_not(None)).label("scores"))
             .where(_O.experiment == name).group_by(_O.variant))
    with engine.connect() as conn:
        return {row.variant: Arm(row.variant, row.n, row.successes, tuple(row.scores or ()))
                for row in conn.execute(query)}


def _outcomes(engine: Engine, name: str) -> dict[str, int]:
    query = (select(_O.variant, func.count()).where(_O.experiment == name)
             .group_by(_O.variant))
    with engine.connect() as conn:
        return {variant: count for variant, count in conn.execute(query)}


def report(engine: Engine, name: str) -> dict[str, Any]:
    """Per variant: jobs, outcomes, success rate and its Wilson 95% interval, mean
    score, latency p50/p95, mean cost and tokens; then the test on the primary metric."""
    definition = get(engine, name)
    figures, arms = _ledger_figures(engine, name), _arms(engine, name)
    outcomes = _outcomes(engine, name)
    variants: list[dict[str, Any]] = []
    ordered: list[Arm] = []
    for variant in definition["variants"]:
        arm = arms.get(variant["name"], Arm(variant["name"], 0))
        ordered.append(arm)
        ledger = figures.get(variant["name"], {"jobs": 0})
        variants.append({"name": arm.name, **ledger, "outcomes": outcomes.get(arm.name, 0),
                         "successes": arm.successes, "success_rate": arm.rate,
                         "success_ci95": wilson_interval(arm.successes, arm.n),
                         "mean_score": arm.mean_score})
    decision = decide(ordered, definition["primary_metric"], definition["alpha"])
    return {"experiment": name, "status": definition["status"], "unit": definition["unit"],
            "primary_metric": definition["primary_metric"], "alpha": definition["alpha"],
            "variants": variants, **decision}
