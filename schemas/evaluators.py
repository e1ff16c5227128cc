"""Automatic evaluators: an experiment's outcome judged from the answer itself, with no
agent feedback.

An experiment names one evaluator as a small JSON spec, ``{"kind": KIND, ...params}``.
Built in: ``min_length`` (the answer is longer than ``chars`` characters; its score is
the length), ``regex`` (``pattern`` is found in the answer) and ``json`` (the answer is
valid JSON, a fenced ```json block included). Other kinds are plugins: a package
declares an entry point in the ``llmfleet.evaluators`` group naming a callable
``(answer: str, **params) -> bool | float | tuple[bool | None, float | None]``.

The spec travels with each experiment job (its metadata), and whoever writes the job's
ledger row (the worker, or the client on a cache hit at submit) judges the answer; the
verdict rides in the row to Postgres, so it is as durable as the row and written once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any

import regex

from schemas.errors import ExperimentError

__all__ = ["ENTRY_POINT_GROUP", "Verdict", "auto_outcome", "check_evaluator", "evaluate"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "llmfleet.evaluators"
#: A regex evaluator gives up after this long (a pathological pattern must not hold a
#: worker); the job then simply has no automatic outcome.
REGEX_TIMEOUT_S = 0.05
_MAX_PATTERN = 1000


@dataclass(frozen=True)
class Verdict:
    """One job's outcome: success and/or score (either may be None)."""

    success: bool | None
    score: float | None = None


Evaluator = Callable[..., Any]


def _min_length(answer: str, *, chars: int) -> Verdict:
    length = len(answer.strip())
    return Verdict(length > chars, float(length))


def _regex(answer: str, *, pattern: str, ignore_case: bool = False) -> Verdict:
    flags = regex.IGNORECASE if ignore_case else 0
    return Verdict(regex.search(pattern, answer, flags, timeout=REGEX_TIMEOUT_S) is not None)


def _strip_fence(answer: str) -> str:
    text = answer.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text


def _json(answer: str) -> Verdict:
    try:
        json.loads(_strip_fence(answer))
    except ValueError:
        return Verdict(False)
    return Verdict(True)


_BUILT_IN: dict[str, Evaluator] = {"min_length": _min_length, "regex": _regex,
                                   "json": _json}


@cache
def _plugins() -> dict[str, Evaluator]:
    found: dict[str, Evaluator] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[point.name] = point.load()
        except Exception as exc:  # a broken plugin must not break the built-ins
            log.warning("evaluator plugin %r failed to load: %s", point.name,
                        type(exc).__name__)
    return found


def _lookup(kind: str) -> Evaluator | None:
    return _BUILT_IN.get(kind) or _plugins().get(kind)


def check_evaluator(spec: Mapping[str, Any], experiment: str) -> dict[str, Any]:
    """The spec, normalised; ExperimentError naming what is wrong otherwise."""
    def fail(why: str) -> ExperimentError:
        return ExperimentError(f"experiment {experiment!r}: evaluator {why}",
                               experiment=experiment)

    if not isinstance(spec, Mapping) or not isinstance(spec.get("kind"), str):
        raise fail('must be a table with a "kind"')
    params = {k: v for k, v in spec.items() if k != "kind"}
    kind = str(spec["kind"])
    if _lookup(kind) is None:
        known = sorted({*_BUILT_IN, *_plugins()})
        raise fail(f"kind {kind!r} is unknown (known: {', '.join(known)}; plugins add "
                   f"more through the {ENTRY_POINT_GROUP!r} entry point group)")
    if kind == "min_length":
        chars = params.get("chars")
        if set(params) != {"chars"} or not isinstance(chars, int) or chars < 0:
            raise fail("min_length takes chars, a whole number of characters >= 0")
    elif kind == "regex":
        pattern = params.get("pattern")
        if not isinstance(pattern, str) or not 0 < len(pattern) <= _MAX_PATTERN:
            raise fail(f"regex takes pattern, a string of 1 to {_MAX_PATTERN} characters")
        if set(params) - {"pattern", "ignore_case"}:
            raise fail("regex takes only pattern and ignore_case")
        try:
            regex.compile(pattern)
        except regex.error as exc:
            raise fail(f"regex pattern does not compile: {exc}") from None
    elif kind == "json" and params:
        raise fail("json takes no parameters")
    return {"kind": kind, **params}


def evaluate(spec: Mapping[str, Any], answer: str) -> Verdict | None:
    """The verdict on ``answer``; None when the evaluator is unknown here, times out or
    fails (the job then has no automatic outcome, and agent feedback may give one)."""
    kind = spec.get("kind")
    evaluator = _lookup(kind) if isinstance(kind, str) else None
    if evaluator is None:
        log.warning("evaluator %r is not installed here: no automatic outcome", kind)
        return None
    params = {k: v for k, v in spec.items() if k != "kind"}
    try:
        verdict = evaluator(answer, **params)
    except TimeoutError:
        log.warning("evaluator %r timed out: no automatic outcome", kind)
        return None
    except Exception as exc:  # a plugin's bug costs its outcome, never the job
        log.warning("evaluator %r failed (%s): no automatic outcome", kind,
                    type(exc).__name__)
        return None
    if isinstance(verdict, Verdict):
        return verdict
    if isinstance(verdict, bool):
        return Verdict(verdict)
    if isinstance(verdict, int | float):
        return Verdict(None, float(verdict))
    if isinstance(verdict, tuple) and len(verdict) == 2:
        success, score = verdict
        return Verdict(None if success is None else bool(success),
                       None if score is None else float(score))
    log.warning("evaluator %r returned %s, not a verdict", kind, type(verdict).__name__)
    return None


def auto_outcome(metadata: Mapping[str, Any], answer: str) -> dict[str, Any] | None:
    """The outcome row's values for an experiment job whose experiment has an
    evaluator (its metadata carries experiment, variant and the evaluator's spec as a
    JSON text, job metadata holding scalars only); else None."""
    experiment, variant = metadata.get("experiment"), metadata.get("variant")
    spec: Any = metadata.get("evaluator")
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError:
            spec = None
    if not isinstance(spec, Mapping) or not experiment or not variant:
        return None
    verdict = evaluate(spec, answer)
    if verdict is None or (verdict.success is None and verdict.score is None):
        return None
    return {"experiment": str(experiment), "variant": str(variant),
            "success": verdict.success, "score": verdict.score}
