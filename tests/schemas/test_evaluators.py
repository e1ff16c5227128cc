"""Automatic evaluators: the built-ins' verdicts, their checked specs, plugins' return
shapes, and a failing or slow evaluator costing only its outcome."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas import ExperimentError
from schemas import evaluators as ev
from schemas.evaluators import Verdict, auto_outcome, check_evaluator, evaluate


def test_min_length_succeeds_only_above_the_bound_and_scores_the_length() -> None:
    spec = check_evaluator({"kind": "min_length", "chars": 10}, "e")
    assert evaluate(spec, "  " + "x" * 11 + "\n") == Verdict(True, 11.0)
    assert evaluate(spec, "x" * 10) == Verdict(False, 10.0)


def test_regex_and_json_judge_the_answer() -> None:
    has_def = check_evaluator({"kind": "regex", "pattern": r"\bdef \w+\("}, "e")
    assert evaluate(has_def, "```python\ndef parse(x):\n```") == Verdict(True)
    assert evaluate(has_def, "no code here") == Verdict(False)
    shouting = check_evaluator({"kind": "regex", "pattern": "hello", "ignore_case": True}, "e")
    assert evaluate(shouting, "HELLO") == Verdict(True)
    valid = check_evaluator({"kind": "json"}, "e")
    assert evaluate(valid, '{"a": [1, 2]}') == Verdict(True)
    assert evaluate(valid, '```json\n{"a": 1}\n```') == Verdict(True)
    assert evaluate(valid, "{'a': 1}") == Verdict(False)


@pytest.mark.parametrize(("spec", "names"), [
    ({"kind": "nope"}, "kind 'nope' is unknown"),
    ({"chars": 3}, '"kind"'),
    ({"kind": "min_length"}, "chars"),
    ({"kind": "min_length", "chars": -1}, "chars"),
    ({"kind": "min_length", "chars": 5, "extra": 1}, "chars"),
    ({"kind": "regex", "pattern": "("}, "does not compile"),
    ({"kind": "regex", "pattern": "a" * 1001}, "pattern"),
    ({"kind": "regex", "pattern": "a", "flags": 2}, "only pattern"),
    ({"kind": "json", "strict": True}, "no parameters"),
])
def test_a_bad_spec_is_refused_naming_what_is_wrong(spec: dict[str, Any], names: str) -> None:
    with pytest.raises(ExperimentError) as info:
        check_evaluator(spec, "exp1")
    assert names in info.value.message and "exp1" in info.value.message


def test_plugins_may_answer_a_bool_a_score_or_both(monkeypatch: pytest.MonkeyPatch) -> None:
    def polite(answer: str, *, word: str = "please") -> bool:
        return word in answer

    def scored(answer: str) -> float:
        return len(answer.split()) / 10

    def both(answer: str) -> tuple[bool, float]:
        return answer.endswith("."), 0.5

    def broken(answer: str) -> Any:
        raise RuntimeError("plugin bug")

    def wrong(answer: str) -> Any:
        return "yes"

    plugins = {"polite": polite, "scored": scored, "both": both, "broken": broken,
               "wrong": wrong}
    monkeypatch.setattr(ev, "_plugins", lambda: plugins)
    assert evaluate(check_evaluator({"kind": "polite"}, "e"), "yes please") == Verdict(True)
    assert evaluate({"kind": "polite", "word": "thanks"}, "please") == Verdict(False)
    assert evaluate({"kind": "scored"}, "one two three") == Verdict(None, 0.3)
    assert evaluate({"kind": "both"}, "Done.") == Verdict(True, 0.5)
    # a plugin's bug, a wrong return or a missing plugin costs the outcome, nothing else
    assert evaluate({"kind": "broken"}, "x") is None
    assert evaluate({"kind": "wrong"}, "x") is None
    assert evaluate({"kind": "absent"}, "x") is None


def test_a_regex_that_runs_too_long_gives_no_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ev, "REGEX_TIMEOUT_S", 0.0001)
    spec = check_evaluator({"kind": "regex", "pattern": r"(\w+\s?)+\d$"}, "e")
    assert evaluate(spec, "word " * 5000 + "!") is None


def test_auto_outcome_needs_an_experiment_job_with_an_evaluator() -> None:
    spec = {"kind": "min_length", "chars": 3}
    labelled = {"experiment": "e", "variant": "v2", "evaluator": json.dumps(spec)}
    assert auto_outcome(labelled, "long enough") == {
        "experiment": "e", "variant": "v2", "success": True, "score": 11.0}
    assert auto_outcome({"experiment": "e", "variant": "v2"}, "long enough") is None
    assert auto_outcome({"evaluator": json.dumps(spec)}, "long enough") is None
    assert auto_outcome({**labelled, "evaluator": "{not json"}, "long enough") is None
