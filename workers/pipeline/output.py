"""Is a provider's answer the one the job asked for? JSON of the job's schema (or any JSON
object) when it set a response format; calls of tools it offered, with arguments that
are a JSON object (valid for the tool's schema when the tool is strict). Gateways pass
on whatever the model wrote; the fleet checks it before an agent sees it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from schemas import CompletionJob
from workers.providers import Completion

__all__ = ["Checked", "check_output"]

#: Finish reasons whose answer is not checked: a refusal is said, not JSON.
_UNCHECKED = frozenset({"content_filter"})
Checked = tuple[str | None, Any]  # (what is wrong, or None; the parsed JSON answer)


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads(schema_json))


def _schema_problem(schema: dict[str, Any], value: Any) -> str | None:
    error = best_match(_validator(json.dumps(schema, sort_keys=True)).iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "the document"
    return f"at {where}: {error.message}"[:500]


def _json(text: str) -> tuple[str | None, Any]:
    try:
        return None, json.loads(text)
    except ValueError as exc:
        return f"not JSON ({exc})", None


def check_output(job: CompletionJob, completion: Completion) -> Checked:
    """(None, the parsed answer) when the answer is what ``job`` asked for; else (what
    is wrong, quoting the validator, None)."""
    if completion.finish_reason in _UNCHECKED:
        return None, None
    if completion.tool_calls:
        return _check_calls(job, completion), None
    response_format = job.response_format
    if response_format is None or response_format.type == "text":
        return None, None
    problem, value = _json(completion.content)
    if problem is None and response_format.type == "json_object" and not isinstance(value, dict):
        problem = "not a JSON object"
    if problem is None and response_format.json_schema is not None:
        problem = _schema_problem(response_format.json_schema.schema_, value)
    if problem is not None and completion.finish_reason == "length":
        problem += " (the answer was cut at max_tokens)"
    return problem, (None if problem else value)


def _check_calls(job: CompletionJob, completion: Completion) -> str | None:
    tools = {t.function.name: t.function for t in job.tools or ()}
    for call in completion.tool_calls or ():
        spec = tools.get(call.name)
        if spec is None:
            return f"called {call.name!r}, a tool the job did not offer"
        problem, arguments = _json(call.function.arguments)
        if problem is None and not isinstance(arguments, dict):
            problem = "not a JSON object"
        if problem is None and spec.strict:
            problem = _schema_problem(spec.parameters, arguments)
        if problem is not None:
            return f"the arguments of {call.name!r} are {problem}"
    return None
