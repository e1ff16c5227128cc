"""Structured output that holds: an answer that is not the JSON the job asked for (or
calls a tool it did not offer) is asked again on the same model, then the chain falls
back; the agent gets valid JSON or OutputValidationError quoting the validator; every
call made is billed to the job."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from schemas import OutputValidationError
from tests.workers.pipeline.conftest import Script

SCHEMA = {"type": "object", "properties": {"sum": {"type": "integer"}}, "required": ["sum"],
          "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "total", "schema": SCHEMA,
                                                 "strict": True}}
ASK = [{"role": "user", "content": "What is 2+3? Answer in JSON."}]


def openai(content: str | None, calls: list[dict[str, Any]] | None = None) -> httpx.Response:
    message: dict[str, Any] = {"content": content}
    if calls:
        message["tool_calls"] = calls
    return httpx.Response(200, json={
        "choices": [{"message": message, "finish_reason": "tool_calls" if calls else "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10}})


def anthropic(value: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json={
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "total", "input": value}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 100, "output_tokens": 10}})


def test_an_invalid_answer_is_asked_again_and_both_calls_are_billed(make_rig: Any) -> None:
    rig = make_rig(Script({"a.test": [openai('{"sum": "five"}'), openai('{"sum": 5}')]}))
    result = rig.complete(tier="simple", messages=ASK, response_format=FORMAT)
    assert result.parsed == {"sum": 5} and json.loads(result.content) == {"sum": 5}
    assert rig.script.calls == {"a.test": 2} and result.model == "m1"
    # two calls of m1 at $1 in / $4 out per million tokens
    assert result.usage.prompt_tokens == 200 and result.usage.completion_tokens == 20
    assert result.cost_usd == pytest.approx(2 * (100 * 1 + 10 * 4) / 1e6)
    assert [a.error for a in result.attempt_log] == ["OutputValidationError", None]


def test_a_model_that_keeps_answering_badly_hands_over_to_the_next(make_rig: Any) -> None:
    rig = make_rig(Script({"a.test": [openai("not json at all")],
                           "b.test": [anthropic({"sum": 5})]}))
    result = rig.complete(tier="simple", messages=ASK, response_format=FORMAT)
    assert result.model == "m2" and result.fallback_used and result.parsed == {"sum": 5}
    assert rig.script.calls == {"a.test": 2, "b.test": 1}
    # m1's two discarded answers are billed at m1's prices, m2's at its own
    assert result.cost_usd == pytest.approx((2 * (100 + 40) + (200 + 80)) / 1e6)


def test_when_no_model_answers_as_asked_the_error_quotes_the_validator(make_rig: Any) -> None:
    rig = make_rig(Script({"a.test": [openai('{"total": 5}')],
                           "b.test": [anthropic({"sum": "x"})]}))
    with pytest.raises(OutputValidationError) as info:
        rig.complete(tier="simple", messages=ASK, response_format=FORMAT)
    assert "is not of type 'integer'" in info.value.message
    assert "sum" in (info.value.detail or "")  # type: ignore[attr-defined]
    assert rig.script.calls == {"a.test": 2, "b.test": 2}


def test_a_call_of_a_tool_not_offered_or_with_bad_arguments_is_asked_again(
        make_rig: Any) -> None:
    tools = [{"type": "function", "function": {
        "name": "add", "strict": True, "parameters": {
            "type": "object", "properties": {"a": {"type": "number"}},
            "required": ["a"], "additionalProperties": False}}}]
    stray = [{"id": "c1", "type": "function", "function": {"name": "rm_rf", "arguments": "{}"}}]
    bad = [{"id": "c2", "type": "function", "function": {"name": "add",
                                                         "arguments": '{"a": "one"}'}}]
    good = [{"id": "c3", "type": "function", "function": {"name": "add",
                                                          "arguments": '{"a": 1}'}}]
    rig = make_rig(Script({"a.test": [openai(None, stray), openai(None, good)]}))
    result = rig.complete(tier="simple", messages=ASK, tools=tools)
    assert result.tool_calls is not None and result.tool_calls[0].id == "c3"
    assert result.finish_reason == "tool_calls"
    rig = make_rig(Script({"a.test": [openai(None, bad), openai(None, good)]}))
    assert rig.complete(tier="simple", messages=ASK, tools=tools).tool_calls[0].id == "c3"
