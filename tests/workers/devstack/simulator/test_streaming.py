"""Streaming over real HTTP, in both formats: the events' shapes, content that adds up
to the non-streamed answer, pacing, failures mid-stream, and a client hanging up."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import httpx
import openai
import pytest

from tests.workers.devstack.simulator.conftest import (
    CHAT,
    MESSAGES,
    anthropic_error,
    claude_tool,
    openai_error,
    sse_events,
    tool,
)
from workers.devstack.simulator import SimulatorThread

PROMPT = [{"role": "user", "content": "Explain the rollback of the payments service in detail"}]
CHUNK_KEYS = {"id", "object", "created", "model", "choices"}


def raw_stream(client: httpx.Client, path: str, body: dict[str, Any]
               ) -> list[tuple[str | None, str]]:
    with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return sse_events(list(response.iter_lines()))


def test_openai_stream_adds_up_to_the_answer(oai: openai.OpenAI, client: httpx.Client) -> None:
    # Given the answer to a prompt, not streamed
    whole = client.post(CHAT, json={"model": "gpt-4o", "messages": PROMPT}).json()
    # When the SDK streams the same prompt with include_usage
    chunks = list(oai.chat.completions.create(model="gpt-4o", messages=PROMPT,  # type: ignore[arg-type]
                                              stream=True, stream_options={"include_usage": True}))
    # Then a role chunk opens, deltas of a few tokens make the same text, a finish chunk
    # with an empty delta follows, and the last chunk carries the same usage and no choices
    assert chunks[0].choices[0].delta.role == "assistant"
    texts = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert len(texts) > 2 and all(texts)
    assert "".join(t or "" for t in texts) == whole["choices"][0]["message"]["content"]
    finish = chunks[-2].choices[0]
    assert finish.finish_reason == "stop" and finish.delta.content is None
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump(exclude_none=True) == whole["usage"]
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_openai_raw_chunks(client: httpx.Client) -> None:
    # Given include_usage; When the raw stream is read
    body = {"model": "gpt-4o", "messages": PROMPT, "stream": True,
            "stream_options": {"include_usage": True}}
    events = raw_stream(client, CHAT, body)
    # Then every chunk has the chunk keys and usage null but the last; [DONE] ends it
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(data) for _, data in events[:-1]]
    for chunk in chunks[:-1]:
        assert set(chunk) == CHUNK_KEYS | {"usage"} and chunk["usage"] is None
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    # And without include_usage there is no usage chunk and no usage key
    plain = raw_stream(client, CHAT, {**body, "stream_options": None})
    assert all(set(json.loads(d)) == CHUNK_KEYS for _, d in plain[:-1])
    assert json.loads(plain[-2][1])["choices"][0]["finish_reason"] == "stop"


def test_openai_tool_call_deltas(oai: openai.OpenAI, client: httpx.Client) -> None:
    # Given tools and a prompt naming two of them
    tools: Any = [tool("get_weather"), tool("get_time")]
    prompt: Any = [{"role": "user", "content": "get_weather and get_time for Bergen"}]
    whole = client.post(CHAT, json={"model": "gpt-4o", "messages": prompt, "tools": tools})
    expected = whole.json()["choices"][0]["message"]["tool_calls"]
    # When the SDK streams it
    chunks = list(oai.chat.completions.create(model="gpt-4o", messages=prompt, tools=tools,
                                              stream=True))
    # Then each call opens with its id, type and name and empty arguments, then fragments
    # carry only the index and arguments, which join to the same JSON
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks[1:-1]:
        (delta,) = chunk.choices[0].delta.tool_calls or []
        function = delta.function
        assert function is not None
        if delta.index not in calls:
            assert delta.id and delta.id.startswith("call_") and delta.type == "function"
            assert function.arguments == ""
            calls[delta.index] = {"name": function.name, "arguments": ""}
        else:
            assert delta.id is None and function.name is None
            calls[delta.index]["arguments"] += function.arguments or ""
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "get_time"]
    for index, call in calls.items():
        assert json.loads(call["arguments"]) == json.loads(expected[index]["function"]["arguments"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert chunks[0].choices[0].delta.content is None


def claude_body(**extra: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet", "max_tokens": 300, "messages": PROMPT, **extra}


def test_anthropic_stream_events(client: httpx.Client) -> None:
    # Given the answer to a prompt naming a tool, not streamed
    tools = [claude_tool("lookup_incident")]
    prompt = [{"role": "user", "content": "lookup_incident for the payments outage"}]
    whole = client.post(MESSAGES, json=claude_body(messages=prompt, tools=tools)).json()
    # When it is streamed
    events = raw_stream(client, MESSAGES, claude_body(messages=prompt, tools=tools, stream=True))
    # Then the events come in Anthropic's order, each data naming its own type
    names = [name for name, _ in events]
    data = [json.loads(d) for _, d in events]
    assert all(d["type"] == name for name, d in zip(names, data, strict=True))
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    # And the text and tool input add up to the answer, with the same usage
    text = "".join(d["delta"]["text"] for d in data if d["type"] == "content_block_delta"
                   and d["delta"]["type"] == "text_delta")
    partial = "".join(d["delta"]["partial_json"] for d in data
                      if d["type"] == "content_block_delta"
                      and d["delta"]["type"] == "input_json_delta")
    assert text == whole["content"][0]["text"]
    assert json.loads(partial) == whole["content"][1]["input"]
    starts = [d["content_block"] for d in data if d["type"] == "content_block_start"]
    assert [s["type"] for s in starts] == ["text", "tool_use"]
    assert starts[1]["name"] == "lookup_incident" and starts[1]["id"].startswith("toolu_")
    assert data[0]["message"]["usage"]["input_tokens"] == whole["usage"]["input_tokens"]
    assert data[-2]["delta"]["stop_reason"] == "tool_use"
    assert data[-2]["usage"]["output_tokens"] == whole["usage"]["output_tokens"]


def test_pacing(sim: SimulatorThread, client: httpx.Client) -> None:
    # Given 300 ms to the first token and 40 ms between deltas
    sim.configure(first_token_ms=300, token_ms=40, latency_ms=5000)  # latency: not for streams
    body = {"model": "gpt-4o", "messages": PROMPT, "stream": True}
    # When a stream is read, timing its content deltas
    started, stamps = time.perf_counter(), []
    with client.stream("POST", CHAT, json=body) as response:
        for line in response.iter_lines():
            if '"content":"' in line and '"role"' not in line:
                stamps.append(time.perf_counter() - started)
    # Then the first delta waited about 300 ms and the others about 40 ms each
    assert 0.28 <= stamps[0] < 1.5
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert len(gaps) >= 2 and sum(gaps) / len(gaps) >= 0.035
    assert stamps[-1] < 0.3 + 0.2 * len(gaps) + 1.0


def test_openai_stream_failure_raises_in_the_sdk(sim: SimulatorThread,
                                                 oai: openai.OpenAI) -> None:
    # Given every stream failing mid-way
    sim.configure(stream_failure_rate=1.0)
    # When the SDK reads one; Then some content came, then an APIError
    seen: list[str] = []
    with pytest.raises(openai.APIError, match="server had an error"):
        for chunk in oai.chat.completions.create(model="gpt-4o", messages=PROMPT,  # type: ignore[arg-type]
                                                 stream=True):
            seen += [c.delta.content for c in chunk.choices if c.delta.content]
    assert seen
    assert sim.stream_stats()["failed"] == 1


def test_anthropic_stream_failure_is_an_error_event(sim: SimulatorThread,
                                                    client: httpx.Client) -> None:
    # Given every stream failing mid-way; When an Anthropic stream is read
    sim.configure(stream_failure_rate=1.0)
    events = raw_stream(client, MESSAGES, claude_body(stream=True))
    # Then after some deltas an overloaded_error event ends it, with no message_stop
    names = [name for name, _ in events]
    assert "content_block_delta" in names
    assert names[-1] == "error"
    assert json.loads(events[-1][1]) == {
        "type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


@pytest.mark.parametrize(
    ("path", "body", "config", "status"),
    [
        (CHAT, {"model": "gpt-4o", "messages": PROMPT}, {"fail_models": {"gpt-4o": 429}}, 429),
        (CHAT, {"model": "gpt-4o", "messages": PROMPT}, {"error_rate": 1.0}, 503),
        (MESSAGES, claude_body(), {"context_limits": {"claude-sonnet": 5}}, 400),
        (MESSAGES, claude_body(), {"known_models": ["other"]}, 404),
    ],
)
def test_faults_before_a_stream_are_plain_http_errors(
    sim: SimulatorThread, client: httpx.Client, path: str, body: dict[str, Any],
    config: dict[str, Any], status: int,
) -> None:
    # Given a fault configured; When a stream is asked
    sim.configure(**config)
    response = client.post(path, json={**body, "stream": True})
    # Then it is the usual JSON error in the format's shape, and no stream started
    if path == CHAT:
        openai_error(response, status, response.json()["error"]["type"])
    else:
        anthropic_error(response, status, response.json()["error"]["type"])
    assert sim.stream_stats()["started"] == 0


def test_x_sim_status_applies_to_streams(sim: SimulatorThread, client: httpx.Client) -> None:
    # Given a forced status; When a stream is asked; Then it is that error, as JSON
    response = client.post(MESSAGES, json=claude_body(stream=True), headers={"x-sim-status": "529"})
    anthropic_error(response, 529, "overloaded_error")


def test_stats_count_what_streams_sent(sim: SimulatorThread, client: httpx.Client) -> None:
    # Given two completed streams, one per format
    openai_events = raw_stream(client, CHAT, {"model": "gpt-4o", "messages": PROMPT,
                                              "stream": True, "stream_options":
                                              {"include_usage": True}})
    claude_events = raw_stream(client, MESSAGES, claude_body(stream=True))
    # When the stream stats are read (over HTTP, and from the thread)
    stats = client.get("/_sim/stats/streams").json()
    # Then they count the streams, their deltas and the tokens those carried
    usage = json.loads(openai_events[-2][1])["usage"]["completion_tokens"]
    claude_tokens = json.loads(claude_events[-2][1])["usage"]["output_tokens"]
    deltas = sum(1 for _, d in openai_events[1:-3]) + sum(
        1 for name, _ in claude_events if name == "content_block_delta")
    assert stats == {"started": 2, "completed": 2, "failed": 0, "cancelled": 0,
                     "deltas": deltas, "tokens": usage + claude_tokens}
    assert sim.stream_stats() == stats
    # And a reset zeroes them
    client.post("/_sim/reset")
    assert client.get("/_sim/stats/streams").json()["started"] == 0


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
def test_a_client_hanging_up_stops_the_stream(sim: SimulatorThread, path: str) -> None:
    # Given a slow, long stream: 100 ms between deltas, over 40 deltas
    sim.configure(token_ms=100)
    long = [{"role": "user", "content": " ".join(f"step{i}" for i in range(60))}]
    body = claude_body(messages=long) if path == MESSAGES else {"model": "gpt-4o",
                                                                "messages": long}
    whole = httpx.post(sim.base_url + path, json=body).json()
    tokens = whole["usage"]["output_tokens" if path == MESSAGES else "completion_tokens"]
    assert tokens >= 40 * 3
    body["stream"] = True
    # When the client reads two deltas and closes the stream
    with httpx.Client(base_url=sim.base_url, timeout=10) as http, \
            http.stream("POST", path, json=body) as response:
        seen = 0
        for line in response.iter_lines():
            seen += '"text_delta"' in line or '"content":"' in line
            if seen == 2:
                break
    closed = time.perf_counter()
    # Then within a second the simulator counts it cut short and sends nothing more
    while sim.stream_stats()["cancelled"] == 0:
        assert time.perf_counter() - closed < 1.0, sim.stream_stats()
        time.sleep(0.02)
    sent = sim.stream_stats()["deltas"]
    time.sleep(0.3)
    stats = sim.stream_stats()
    assert stats["deltas"] == sent <= 4
    assert stats["completed"] == stats["failed"] == 0
