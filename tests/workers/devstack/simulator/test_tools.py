"""Tool calling over real HTTP: which tools an answer calls, their arguments (valid for
their schema, made of the prompt's words), parallel calls, results quoted, usage."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.workers.devstack.simulator.conftest import (
    CHAT,
    ENC,
    MESSAGES,
    claude_tool,
    tool,
)
from workers.devstack.simulator import count_prompt_tokens

WEATHER = {"type": "object", "properties": {
    "city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]},
    "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "unit", "days"], "additionalProperties": False}
TOOLS = [tool("get_weather", WEATHER, strict=True), tool("get_time")]
CLAUDE_TOOLS = [claude_tool("get_weather", WEATHER), claude_tool("get_time")]


def ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize(
    ("prompt", "options", "called"),
    [
        ("What is the weather in Oslo?", {}, []),  # auto, no tool named: text
        ("Use get_time for Oslo", {}, ["get_time"]),
        ("Use get_time for Oslo", {"tool_choice": "none"}, []),
        ("What is the weather in Oslo?", {"tool_choice": "required"}, ["get_weather"]),
        ("Use get_time for Oslo", {"tool_choice": {"type": "function",
                                                   "function": {"name": "get_weather"}}},
         ["get_weather"]),
        ("get_time, then GET_WEATHER in Oslo", {}, ["get_time", "get_weather"]),
        ("get_time, then get_weather in Oslo", {"parallel_tool_calls": False}, ["get_time"]),
    ],
)
def test_openai_tool_choice_rules(
    oai: openai.OpenAI, prompt: str, options: dict[str, Any], called: list[str]
) -> None:
    # Given two tools and a prompt naming some of them; When the SDK asks
    response = oai.chat.completions.create(model="gpt-4o", messages=ask(prompt), tools=TOOLS,
                                           **options)
    # Then exactly the expected tools are called, in order of mention, or text comes back
    message, choice = response.choices[0].message, response.choices[0]
    names = [c.function.name for c in message.tool_calls or []]
    assert names == called
    if called:
        assert choice.finish_reason == "tool_calls"
        assert message.content is None
        assert all(c.id.startswith("call_") and c.type == "function" for c in message.tool_calls)
        assert len({c.id for c in message.tool_calls}) == len(called)
    else:
        assert choice.finish_reason == "stop"
        assert message.content and "Oslo" in message.content


def test_openai_arguments_are_valid_and_made_of_the_prompt(oai: openai.OpenAI) -> None:
    # Given a strict tool with a string, an enum and a bounded integer
    prompt = "get_weather for Trondheim in fahrenheit please"
    # When it is called
    response = oai.chat.completions.create(model="gpt-4o", messages=ask(prompt), tools=TOOLS)
    (call,) = response.choices[0].message.tool_calls or []
    arguments = json.loads(call.function.arguments)
    # Then the arguments validate, use the prompt's words and the enum value it names
    jsonschema.validate(arguments, WEATHER)
    assert arguments["city"] in prompt.split()
    assert arguments["unit"] == "fahrenheit"
    # And usage counts the tool definitions (their JSON) and the calls' names and arguments
    tools_json = json.dumps(TOOLS, separators=(",", ":"))
    assert response.usage is not None
    assert response.usage.prompt_tokens == count_prompt_tokens(ask(prompt)) + len(
        ENC.encode(tools_json))
    assert response.usage.completion_tokens == len(ENC.encode("get_weather")) + len(
        ENC.encode(call.function.arguments))


def test_openai_tool_results_are_quoted(oai: openai.OpenAI) -> None:
    # Given a conversation where two tools were called and their results came back
    messages: list[Any] = ask("get_time and get_weather for Oslo")
    first = oai.chat.completions.create(model="gpt-4o", messages=messages, tools=TOOLS)
    calls = first.choices[0].message.tool_calls or []
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    results = ["12:30 CET", "sunny, 21 degrees"]
    messages += [{"role": "tool", "tool_call_id": c.id, "content": r}
                 for c, r in zip(calls, results, strict=True)]
    # When the conversation goes on
    answer = oai.chat.completions.create(model="gpt-4o", messages=messages, tools=TOOLS)
    # Then the answer is text quoting each result by its tool
    content = answer.choices[0].message.content or ""
    assert answer.choices[0].finish_reason == "stop"
    assert 'get_time returned "12:30 CET"' in content
    assert 'get_weather returned "sunny, 21 degrees"' in content
    assert answer.usage is not None
    assert answer.usage.completion_tokens == len(ENC.encode(content))


def test_openai_tool_calls_are_cut_at_max_tokens(client: httpx.Client) -> None:
    # Given a limit smaller than the call; When a tool is called
    body = {"model": "m", "messages": ask("get_weather in Oslo"), "tools": TOOLS, "max_tokens": 5}
    choice = client.post(CHAT, json=body).json()["choices"][0]
    # Then the arguments stop short and finish_reason says so
    arguments = choice["message"]["tool_calls"][0]["function"]["arguments"]
    assert choice["finish_reason"] == "length"
    assert len(ENC.encode("get_weather")) + len(ENC.encode(arguments)) <= 5
    with pytest.raises(json.JSONDecodeError):
        json.loads(arguments)


def claude(client: httpx.Client, prompt: str | list[Any], **extra: Any) -> dict[str, Any]:
    messages = ask(prompt) if isinstance(prompt, str) else prompt
    body = {"model": "claude-sonnet", "max_tokens": 200, "messages": messages,
            "tools": CLAUDE_TOOLS, **extra}
    response = client.post(MESSAGES, json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


@pytest.mark.parametrize(
    ("prompt", "choice", "preamble", "called"),
    [
        ("Weather in Oslo?", None, False, []),
        ("Use get_weather in Oslo", None, True, ["get_weather"]),
        ("Weather in Oslo?", {"type": "any"}, False, ["get_weather"]),
        ("Use get_weather in Oslo", {"type": "tool", "name": "get_time"}, False, ["get_time"]),
        ("Use get_weather in Oslo", {"type": "none"}, False, []),
        ("get_time and get_weather", None, True, ["get_time", "get_weather"]),
        ("get_time and get_weather", {"type": "auto", "disable_parallel_tool_use": True}, True,
         ["get_time"]),
    ],
)
def test_anthropic_tool_choice_rules(
    client: httpx.Client, prompt: str, choice: dict[str, Any] | None, preamble: bool,
    called: list[str],
) -> None:
    # Given two tools and a tool_choice; When the Messages API is asked
    body = claude(client, prompt, **({} if choice is None else {"tool_choice": choice}))
    # Then tool_use blocks call the expected tools, after a short text only under auto
    uses = [b for b in body["content"] if b["type"] == "tool_use"]
    assert [u["name"] for u in uses] == called
    texts = [b for b in body["content"] if b["type"] == "text"]
    if called:
        assert body["stop_reason"] == "tool_use"
        assert bool(texts) is preamble
        for use in uses:
            assert use["id"].startswith("toolu_")
            schema = next(t["input_schema"] for t in CLAUDE_TOOLS if t["name"] == use["name"])
            jsonschema.validate(use["input"], schema)
    else:
        assert body["stop_reason"] == "end_turn"
        assert "Oslo" in texts[0]["text"]


def test_anthropic_tool_results_are_quoted_and_counted(client: httpx.Client) -> None:
    # Given a tool_use answer, then a user message of tool_result blocks (text after them)
    prompt = "get_time and get_weather in Oslo"
    first = claude(client, prompt)
    uses = [b for b in first["content"] if b["type"] == "tool_use"]
    results = [{"type": "tool_result", "tool_use_id": uses[0]["id"], "content": "noon"},
               {"type": "tool_result", "tool_use_id": uses[1]["id"],
                "content": [{"type": "text", "text": "rain"}], "is_error": False},
               {"type": "text", "text": "thanks"}]
    conversation = [*ask(prompt), {"role": "assistant", "content": first["content"]},
                    {"role": "user", "content": results}]
    # When the conversation goes on
    body = claude(client, conversation)
    # Then the answer quotes each result by its tool
    text = body["content"][0]["text"]
    assert body["stop_reason"] == "end_turn"
    assert 'get_time returned "noon"' in text and 'get_weather returned "rain"' in text
    # And the prompt counted the tools, the tool_use blocks and the results
    tools_json = json.dumps(CLAUDE_TOOLS)
    uses_tokens = sum(len(ENC.encode(u["name"])) + len(ENC.encode(json.dumps(u["input"])))
                      for u in uses)
    expected = (count_prompt_tokens(conversation) + len(ENC.encode(tools_json)) + uses_tokens
                + len(ENC.encode("noon")) + len(ENC.encode("rain")))
    assert body["usage"]["input_tokens"] == expected


def test_anthropic_tool_use_cut_at_max_tokens(client: httpx.Client) -> None:
    # Given a limit that the preamble fits in but the tool input does not
    preamble = len(ENC.encode("I'll use the get_weather tool."))
    limit = preamble + len(ENC.encode("get_weather")) + 2
    # When a tool is called, whole and streamed
    body = claude(client, "get_weather in Oslo", max_tokens=limit)
    with client.stream("POST", MESSAGES, json={
            "model": "claude-sonnet", "max_tokens": limit, "stream": True, "tools": CLAUDE_TOOLS,
            "messages": ask("get_weather in Oslo")}) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    # Then the answer stops at max_tokens: the input an empty object, the stream's JSON short
    use = body["content"][1]
    assert (body["stop_reason"], use["input"]) == ("max_tokens", {})
    assert body["usage"]["output_tokens"] == limit
    partial = "".join(json.loads(line[6:])["delta"]["partial_json"] for line in lines
                      if "input_json_delta" in line)
    assert partial and len(ENC.encode(partial)) == 2
    with pytest.raises(json.JSONDecodeError):
        json.loads(partial)
