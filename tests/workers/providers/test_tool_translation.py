"""Tools, tool choice, response formats and images in both wire formats: the OpenAI
provider passes them through; the Anthropic provider translates them both ways, avoiding
what gateways get wrong (parallel results split across turns, tool_choice "none" lost,
strict put where Anthropic ignores it, an empty answer to a JSON request, stop reasons
passed through raw)."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import zlib
from typing import Any

import httpx

from schemas import CompletionJob, ProviderConfig
from workers.providers import ChatRequest, Completion, Provider
from workers.providers.anthropic import AnthropicProvider
from workers.providers.openai import OpenAIProvider


def png(width: int, height: int) -> str:
    """A data URL of a real (tiny, blank) PNG of that size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + b"\x00" * width * 3 for _ in range(height))
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                              0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(data).decode()


TOOLS = [{"type": "function", "function": {
    "name": "add", "description": "Add two numbers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"},
                                                    "b": {"type": "number"}},
                   "required": ["a", "b"], "additionalProperties": False},
    "strict": True}},
    {"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}}}}]
#: A tool loop's second turn: two calls made at once, both answered.
LOOP = [
    {"role": "system", "content": "You add."},
    {"role": "user", "content": [{"type": "text", "text": "What is 2+3 and where is x?"},
                                 {"type": "image_url", "image_url": {"url": png(8, 4)}}]},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}},
        {"id": "call:2", "type": "function",  # an id Anthropic would refuse
         "function": {"name": "lookup", "arguments": '{"q": "x"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "5"},
    {"role": "tool", "tool_call_id": "call:2", "content": "x is here"},
    {"role": "user", "content": "Thanks: so?"},
]


def request(**job: Any) -> ChatRequest:
    parsed = CompletionJob.model_validate({"messages": LOOP, "tools": TOOLS, **job})
    return ChatRequest(model="m", wire_model="m-wire", messages=parsed.messages, max_tokens=32,
                       sampling=parsed.sampling(), tools=parsed.tools,
                       tool_choice=parsed.tool_choice,
                       parallel_tool_calls=parsed.parallel_tool_calls,
                       response_format=parsed.response_format)


def call(cls: type[Provider], answer: dict[str, Any], req: ChatRequest
         ) -> tuple[dict[str, Any], Completion]:
    """(what the provider sent, what it made of ``answer``)."""
    sent: dict[str, Any] = {}

    def handler(http_request: httpx.Request) -> httpx.Response:
        sent.update(json.loads(http_request.content))
        return httpx.Response(200, json=answer)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    provider = cls("p", ProviderConfig(kind=cls.kind, base_url="http://p.test/v1"),  # type: ignore[arg-type]
                   http, "sk-test")
    return sent, asyncio.run(provider.complete(req))


ANTHROPIC_TEXT = {"content": [{"type": "text", "text": "5, and x is here"}],
                  "stop_reason": "end_turn", "usage": {"input_tokens": 9, "output_tokens": 3}}


def test_openai_passes_the_conversation_and_options_through() -> None:
    sent, _ = call(OpenAIProvider, {"choices": [{"message": {"content": "ok"},
                                                 "finish_reason": "stop"}]},
                   request(tool_choice="required", parallel_tool_calls=False))
    assert sent["tools"] == [{**t, "function": {k: v for k, v in t["function"].items()}}
                             for t in TOOLS]
    assert sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is False
    assert sent["messages"][2]["tool_calls"][1]["id"] == "call:2"
    assert sent["messages"][2]["content"] is None
    assert sent["messages"][1]["content"][1]["image_url"]["url"].startswith("data:image/png")


def test_openai_reads_tool_calls_back() -> None:
    answer = {"choices": [{"finish_reason": "tool_calls", "message": {
        "content": None, "tool_calls": [{"id": "call_9", "type": "function", "function": {
            "name": "add", "arguments": '{"a": 1, "b": 1}'}}]}}]}
    _, completion = call(OpenAIProvider, answer, request())
    assert completion.finish_reason == "tool_calls" and completion.content == ""
    assert completion.tool_calls is not None
    assert completion.tool_calls[0].arguments == {"a": 1, "b": 1}


def test_anthropic_merges_parallel_results_into_one_user_turn_in_order() -> None:
    sent, completion = call(AnthropicProvider, ANTHROPIC_TEXT, request())
    turns = sent["messages"]
    assert sent["system"] == "You add."
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    image = turns[0]["content"][1]
    assert image == {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                 "data": image["source"]["data"]}}
    uses = [b for b in turns[1]["content"] if b["type"] == "tool_use"]
    assert [u["input"] for u in uses] == [{"a": 2, "b": 3}, {"q": "x"}]
    results = turns[2]["content"]
    # both results first, in the calls' order, ids rewritten alike; then the user's text
    assert [b["type"] for b in results] == ["tool_result", "tool_result", "text"]
    assert [r["tool_use_id"] for r in results[:2]] == [u["id"] for u in uses]
    assert uses[1]["id"] != "call:2" and all(c.isalnum() or c in "_-" for c in uses[1]["id"])
    assert [r["content"] for r in results[:2]] == ["5", "x is here"]
    assert sent["tools"][0] == {"name": "add", "description": "Add two numbers.",
                                "input_schema": TOOLS[0]["function"]["parameters"]}
    assert "strict" not in json.dumps(sent["tools"])  # Anthropic ignores it: not sent
    assert completion.content == "5, and x is here" and completion.finish_reason == "stop"


def test_anthropic_tool_choice_in_every_form() -> None:
    cases = {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}
    for choice, wire in cases.items():
        sent, _ = call(AnthropicProvider, ANTHROPIC_TEXT, request(tool_choice=choice))
        assert sent["tool_choice"] == wire, choice
    named = {"type": "function", "function": {"name": "lookup"}}
    sent, _ = call(AnthropicProvider, ANTHROPIC_TEXT,
                   request(tool_choice=named, parallel_tool_calls=False))
    assert sent["tool_choice"] == {"type": "tool", "name": "lookup",
                                   "disable_parallel_tool_use": True}
    sent, _ = call(AnthropicProvider, ANTHROPIC_TEXT, request(parallel_tool_calls=False))
    assert sent["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


def test_anthropic_tool_use_and_stop_reasons_come_back_in_openais_words() -> None:
    answer = {"content": [{"type": "text", "text": "Let me add."},
                          {"type": "tool_use", "id": "toolu_1", "name": "add",
                           "input": {"a": 2, "b": 3}}],
              "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 7}}
    _, completion = call(AnthropicProvider, answer, request())
    assert completion.finish_reason == "tool_calls"
    assert completion.tool_calls is not None and completion.tool_calls[0].id == "toolu_1"
    assert completion.tool_calls[0].arguments == {"a": 2, "b": 3}
    cut = {**ANTHROPIC_TEXT, "stop_reason": "max_tokens"}
    assert call(AnthropicProvider, cut, request())[1].finish_reason == "length"


def test_anthropic_answers_a_response_format_with_content_never_empty() -> None:
    schema = {"type": "object", "properties": {"sum": {"type": "integer"}},
              "required": ["sum"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "total", "schema": schema,
                                                  "strict": True}}
    answer = {"content": [{"type": "tool_use", "id": "toolu_2", "name": "total",
                           "input": {"sum": 5}}],
              "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 7}}
    plain = CompletionJob.model_validate({"messages": [{"role": "user", "content": "2+3?"}],
                                          "response_format": fmt})
    req = ChatRequest(model="m", wire_model="m", messages=plain.messages, max_tokens=32,
                      response_format=plain.response_format)
    sent, completion = call(AnthropicProvider, answer, req)
    assert sent["tool_choice"] == {"type": "tool", "name": "total"}
    assert sent["tools"][0]["input_schema"] == schema
    assert json.loads(completion.content) == {"sum": 5}
    assert completion.finish_reason == "stop" and completion.tool_calls is None
