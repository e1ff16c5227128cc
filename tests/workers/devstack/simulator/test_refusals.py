"""Requests the real services refuse are refused, each a 400 in its format's own shape
naming the param (OpenAI) or the field's path (Anthropic), before any answer."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.workers.devstack.simulator.conftest import (
    CHAT,
    MESSAGES,
    anthropic_error,
    claude_tool,
    openai_error,
    tool,
)

USER = {"role": "user", "content": "hello there"}
LOOSE = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
PARTIAL = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
           "required": ["a"], "additionalProperties": False}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
ASKED = {"role": "assistant", "content": None, "tool_calls": [CALL]}
TOOLS = [tool("get_time")]
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema,
                                                   "strict": True}}


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"temprature": 0.5}, None, "temprature"),
        ({"response_format": {"type": "json_object"}}, "messages", "json"),
        ({"response_format": schema_format(LOOSE)}, "response_format", "additionalProperties"),
        ({"response_format": schema_format(PARTIAL)}, "response_format", "Missing 'b'"),
        ({"response_format": {"type": "yaml"}}, "response_format.type", "yaml"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "my schema"}}},
         "response_format.json_schema.name", "pattern"),
        ({"tools": [tool("get_time", LOOSE, strict=True)]}, "tools[0].function.parameters",
         "additionalProperties"),
        ({"tools": [tool("get_time", {"type": "string"})]}, "tools[0].function.parameters",
         "object"),
        ({"tools": [tool("get time")]}, "tools[0].function.name", "pattern"),
        ({"tools": [tool("x" * 65)]}, "tools[0].function.name", "pattern"),
        ({"tools": []}, "tools", "tools"),
        ({"tool_choice": "auto"}, "tool_choice", "only allowed when 'tools'"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls", "only allowed when 'tools'"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         "tool_choice", "nope"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", "tool_choice"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "stream"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "robot"),
        ({"messages": [{"role": "system", "content": [IMAGE]}, USER]}, "messages[0]",
         "only allowed for messages with role 'user'"),
        ({"messages": [{"role": "user", "content": [
            {**IMAGE, "image_url": {"url": IMAGE["image_url"]["url"], "detail": "medium"}}]}]},
         "messages[0].content[0].image_url.detail", "medium"),
        ({"messages": [{"role": "user", "content": [{"type": "audio", "x": 1}]}]},
         "messages[0].content[0].type", "audio"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]}]},
         "messages[0].content[0].image_url.url", "unsupported image"),
        ({"messages": [USER, {"role": "tool", "tool_call_id": "call_1", "content": "x"}]},
         "messages.[1].role", "preceeding message with 'tool_calls'"),
        ({"messages": [USER, ASKED, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]},
         "messages.[2].tool_call_id", "call_9"),
        ({"messages": [USER, ASKED, USER]}, "messages.[1].role", "call_1"),
        ({"messages": [USER, ASKED]}, "messages.[1].role", "call_1"),
        ({"messages": [USER, {"role": "assistant", "content": None}]}, "messages[1].content",
         "content"),
    ],
)
def test_openai_refusals_name_the_param(
    client: httpx.Client, extra: dict[str, Any], param: str | None, words: str
) -> None:
    # Given a chat request the real API refuses
    body = {"model": "gpt-4o", "messages": [USER], **extra}
    # When it is posted
    response = client.post(CHAT, json=body)
    # Then it is a 400 invalid_request_error naming the param, its message explaining
    error = openai_error(response, 400, "invalid_request_error")
    assert error["param"] == param
    assert words in error["message"]


def test_openai_accepts_what_the_rules_allow(client: httpx.Client) -> None:
    # Given every role, parts, answered tool calls, a strict schema and the json word
    messages: list[Any] = [
        {"role": "developer", "content": "Reply in JSON."},
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "time?"}, IMAGE]},
        ASKED,
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "noon"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "It is noon."}]},
        {"role": "user", "content": "thanks", "name": "ana"},
    ]
    strict = {**PARTIAL, "required": ["a", "b"]}
    body = {"model": "gpt-4o", "messages": messages, "tools": TOOLS, "tool_choice": "none",
            "parallel_tool_calls": True, "response_format": schema_format(strict),
            "temperature": 0.2, "seed": 1, "user": "u1", "stream": False}
    # When it is posted; Then it is answered
    assert client.post(CHAT, json=body).status_code == 200


TOOL_USE = {"type": "tool_use", "id": "toolu_01", "name": "get_time", "input": {}}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_01", "content": "noon"}
USED = {"role": "assistant", "content": [TOOL_USE]}


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"messages": [{"role": "system", "content": "x"}, USER]}, 'Unexpected role "system"'),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"temperature": 1.5}, "temperature: range: 0..1"),
        ({"messages": [USER, USED, USER]}, "messages.1: `tool_use` ids were found without"),
        ({"messages": [USER, USED]}, "messages.1: `tool_use` ids were found without"),
        ({"messages": [USER, USED, {"role": "user", "content": [
            {"type": "text", "text": "first"}, RESULT]}]}, "messages.1: `tool_use` ids"),
        ({"messages": [USER, USED, {"role": "user", "content": [
            {**RESULT, "tool_use_id": "toolu_02"}]}]},
         "messages.2.content.0: unexpected `tool_use_id`"),
        ({"messages": [USER, {"role": "assistant", "content": [{**TOOL_USE, "id": "toolu 1"}]}]},
         "messages.1.content.0.tool_use.id"),
        ({"messages": [USER, {"role": "assistant", "content": [{**TOOL_USE, "input": "{}"}]}]},
         "messages.1.content.0.tool_use.input"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "  \n"}]}]},
         "non-whitespace"),
        ({"messages": [{"role": "user", "content": " "}]}, "non-whitespace"),
        ({"messages": [{"role": "user", "content": []}]}, "non-empty content"),
        ({"tools": [claude_tool("get time")]}, "tools.0.custom.name"),
        ({"tools": [{"name": "get_time"}]}, "tools.0.custom.input_schema"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
        ({"tools": [claude_tool("get_time")], "tool_choice": {"type": "tool", "name": "x"}},
         "tool_choice.name"),
        ({"system": [{"type": "image"}]}, "system"),
    ],
)
def test_anthropic_refusals_name_the_field(
    client: httpx.Client, extra: dict[str, Any], words: str
) -> None:
    # Given a Messages request the real API refuses
    body = {"model": "claude-sonnet", "max_tokens": 50, "messages": [USER], **extra}
    # When it is posted; Then it is a 400 invalid_request_error whose message names the field
    message = anthropic_error(client.post(MESSAGES, json=body), 400, "invalid_request_error")
    assert words in message


def test_anthropic_accepts_what_the_rules_allow(client: httpx.Client) -> None:
    # Given answered tool uses, results with text after them, a prefill, blocks of system
    messages = [USER, {"role": "assistant", "content": [{"type": "text", "text": "Let me."},
                                                        TOOL_USE]},
                {"role": "user", "content": [RESULT, {"type": "text", "text": "and?"}]},
                {"role": "assistant", "content": ""}]
    body = {"model": "claude-sonnet", "max_tokens": 50, "messages": messages,
            "system": [{"type": "text", "text": "Be brief."}], "temperature": 1,
            "tools": [claude_tool("get_time")], "tool_choice": {"type": "auto"}}
    # When it is posted; Then it is answered
    assert client.post(MESSAGES, json=body).status_code == 200
