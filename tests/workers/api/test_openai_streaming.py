"""``stream: true`` at the HTTP API, read by the official ``openai`` SDK's own stream
iterators (sync and async) and by a raw HTTP client that hangs up."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from sqlalchemy import Engine, text

from tests.conftest import wait_until

MULTIPLY = {"type": "function", "function": {
    "name": "multiply", "description": "Multiply two numbers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"},
                                                    "b": {"type": "number"}},
                   "required": ["a", "b"]}}}


@pytest.fixture()
def client(api_url: str, key: str) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{api_url}/v1", api_key=key, max_retries=0, timeout=30) as sdk:
        yield sdk


def ask(text_: str) -> list[Any]:
    return [{"role": "user", "content": text_}]


def row_of(engine: Engine, job_id: str) -> dict[str, Any]:
    query = text("SELECT * FROM job_ledger WHERE job_id = :j")

    def found() -> bool:
        with engine.connect() as connection:
            return connection.execute(query, {"j": job_id}).first() is not None
    wait_until(found, timeout=30)
    with engine.connect() as connection:
        return dict(connection.execute(query, {"j": job_id}).mappings().one())


def test_the_sdk_streams_chunks_then_usage_and_they_add_up_to_the_answer(
        client: OpenAI, sim: Any) -> None:
    prompt = ask(f"Explain streaming in a few words {uuid.uuid4().hex}")
    sim.configure(first_token_ms=10, token_ms=2)
    stream = client.chat.completions.create(model="simple", messages=prompt, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    # A role chunk first, content deltas, a finish reason, then usage with no choices
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # The same question asked whole (a cache hit of the streamed job) says the same
    whole = client.chat.completions.create(model="simple", messages=prompt)
    assert streamed == whole.choices[0].message.content and len(streamed) > 10
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


def test_without_include_usage_no_usage_chunk_comes(client: OpenAI, sim: Any) -> None:
    chunks = list(client.chat.completions.create(
        model="simple", messages=ask(f"short one {uuid.uuid4().hex}"), stream=True))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_the_async_sdk_streams_the_same_way(api_url: str, key: str, sim: Any) -> None:
    async def run() -> tuple[str, Any]:
        async with AsyncOpenAI(base_url=f"{api_url}/v1", api_key=key, max_retries=0) as sdk:
            stream = await sdk.chat.completions.create(
                model="medium", messages=ask(f"async stream {uuid.uuid4().hex}"),
                stream=True, stream_options={"include_usage": True})
            parts, usage = [], None
            async for chunk in stream:
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.content or "")
                usage = chunk.usage or usage
            return "".join(parts), usage

    content, usage = asyncio.run(run())
    assert content and usage is not None and usage.total_tokens > 0


def test_a_streamed_tool_call_is_assembled_by_index(client: OpenAI, sim: Any) -> None:
    stream = client.chat.completions.create(
        model="simple", messages=ask(f"Please multiply 6 and 7 {uuid.uuid4().hex[:6]}"),
        tools=[MULTIPLY], tool_choice="required", stream=True)  # type: ignore[list-item]
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for piece in choice.delta.tool_calls or []:
            call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += piece.id or ""
            if piece.function:
                call["name"] += piece.function.name or ""
                call["arguments"] += piece.function.arguments or ""
    assert finish == "tool_calls" and list(calls) == [0]
    assert calls[0]["name"] == "multiply" and calls[0]["id"]
    assert set(json.loads(calls[0]["arguments"])) == {"a", "b"}


def test_a_failure_mid_stream_raises_in_the_sdk_and_the_row_bills_it(
        client: OpenAI, sim: Any, engine: Engine) -> None:
    sim.configure(stream_failure_rate=1.0, token_ms=1)
    raw = client.chat.completions.with_raw_response.create(
        model="simple", messages=ask(f"Say something long {uuid.uuid4().hex}"), stream=True)
    job_id = raw.headers["x-llmfleet-job-id"]
    with pytest.raises(openai.APIError) as caught:
        list(raw.parse())
    assert "stream" in str(caught.value).lower()
    row = row_of(engine, job_id)
    assert row["status"] == "failed" and row["error"] == "StreamInterruptedError"
    assert row["completion_tokens"] > 0 and row["cost_usd"] > 0


def test_a_client_that_hangs_up_cancels_its_job(http: httpx.Client, key: str, sim: Any,
                                                engine: Engine) -> None:
    # Given a slow stream (about four seconds for its ~20 deltas)
    sim.configure(token_ms=200)
    body = {"model": "simple", "stream": True, "messages": ask(f"an essay {uuid.uuid4().hex}")}
    with http.stream("POST", "/v1/chat/completions", json=body,
                     headers={"authorization": f"Bearer {key}"}) as response:
        assert response.status_code == 200
        job_id = response.headers["x-llmfleet-job-id"]
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("data: ")
            if seen >= 3:
                break
    # When the client has gone away, then the provider's stream stops within seconds
    gone = time.monotonic()
    wait_until(lambda: sim.stream_stats()["cancelled"] >= 1, timeout=10, interval=0.05)
    assert time.monotonic() - gone < 3 and sim.stream_stats()["completed"] == 0
    row = row_of(engine, job_id)
    assert row["status"] == "cancelled" and row["completion_tokens"] > 0


def test_last_event_id_resumes_an_attached_stream(http: httpx.Client, key: str,
                                                  sim: Any) -> None:
    body = {"model": "simple", "stream": True, "messages": ask(f"resume {uuid.uuid4().hex}")}
    headers = {"authorization": f"Bearer {key}", "idempotency-key": uuid.uuid4().hex}

    def events(extra: dict[str, str]) -> list[tuple[str | None, str]]:
        out: list[tuple[str | None, str]] = []
        with http.stream("POST", "/v1/chat/completions", json=body,
                         headers={**headers, **extra}) as response:
            assert response.status_code == 200
            event_id = None
            for line in response.iter_lines():
                if line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("data: "):
                    out.append((event_id, line[6:]))
                    event_id = None
        return out

    first = events({})
    ids = [i for i, _ in first if i is not None]
    assert ids == [str(n) for n in range(len(ids))] and len(ids) > 3
    # A reconnect of the same request after event 2 gets exactly what followed it (each
    # chunk's "created" is the time of the request that reads it: a reconnect in the
    # next second says so)
    def same(data: str) -> str:
        return re.sub(r'"created": \d+', '"created": 0', data)

    resumed = events({"last-event-id": "2"})
    assert [(i, same(d)) for i, d in resumed] == [
        (i, same(d)) for i, d in first if i is not None and int(i) > 2] + [(None, "[DONE]")]
