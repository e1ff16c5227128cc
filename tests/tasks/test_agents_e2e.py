"""Agents with tools, structured output and images, end to end: the client, a real
worker process, real Redis and Postgres, and the simulator over real HTTP in both wire
formats."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from schemas import FleetConfig
from tasks import FleetAgent, FleetClient
from tests.conftest import client_with_worker
from tests.workers.providers.test_tool_translation import png


@pytest.fixture(scope="module")
def client(fleet_env: dict[str, str], fleet: FleetConfig,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetClient]:
    logs = tmp_path_factory.mktemp("agents-logs")
    with client_with_worker(fleet_env, fleet, "simple,complex,embeddings", "w-agents",
                            logs / "w.log", agent="agents") as fleet_client:
        yield fleet_client


def multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b


def lookup(topic: str) -> str:
    """Look a topic up in the team's notes."""
    return f"the notes on {topic} say: reviewed and approved"


def broken(topic: str) -> str:
    """A tool that fails."""
    raise RuntimeError("the notes server is down")


class Verdict(BaseModel):
    topic: str
    approved: bool


def test_a_function_is_a_tool_and_its_call_comes_back_parsed(client: FleetClient,
                                                             sim: Any) -> None:
    # Given a question naming a tool, offered as a plain Python function
    result = client.complete(f"Please multiply 6 and 7 {uuid.uuid4().hex[:6]}",
                             tier="simple", tools=[multiply], tool_choice="required")
    # Then the model's call comes back with arguments valid for the function's schema
    assert result.finish_reason == "tool_calls" and result.tool_calls
    call = result.tool_calls[0]
    assert call.name == "multiply" and call.arguments == {"a": 6, "b": 7}


def test_an_agent_solves_a_task_with_two_tools_in_a_loop(client: FleetClient,
                                                          sim: Any) -> None:
    agent = FleetAgent(client, name="coder", tier="simple")
    steps: list[Any] = []
    # When it runs a task that needs both tools (and one that fails is reported, not raised)
    run = agent.run(f"Use multiply and lookup for the topic release {uuid.uuid4().hex[:6]}",
                    tools=[multiply, lookup], max_steps=4, on_step=steps.append)
    # Then the model called both at once, read their results and answered quoting them
    assert len(run.steps) == 1 and steps == run.steps
    names = sorted(o.call.name for o in run.steps[0].outcomes)
    assert names == ["lookup", "multiply"]
    assert "reviewed and approved" in run.answer
    assert run.cost_usd > 0 and run.cost_usd == pytest.approx(
        run.result.cost_usd + run.steps[0].result.cost_usd)
    failing = agent.run(f"Use broken for the topic x {uuid.uuid4().hex[:6]}", tools=[broken],
                        max_steps=3)
    assert failing.steps[0].outcomes[0].failed
    assert "the notes server is down" in failing.answer


def test_a_response_model_comes_back_as_an_instance(client: FleetClient, sim: Any) -> None:
    result = client.complete(f"Was the release approved? {uuid.uuid4().hex[:6]}",
                             tier="simple", response_model=Verdict)
    assert isinstance(result.parsed, Verdict)


@pytest.mark.parametrize("tier,failing", [
    ("simple", ["openai/gpt-4o-mini"]),              # OpenAI -> Anthropic (wire names)
    ("complex", ["claude-3-5-sonnet-20241022"]),     # Anthropic -> OpenAI
])
def test_a_tool_loop_falls_back_across_wire_formats_mid_loop(
        client: FleetClient, sim: Any, tier: str, failing: list[str]) -> None:
    # Given a loop whose first turn one wire format answered
    first = client.complete(f"Use lookup for the topic billing {uuid.uuid4().hex[:6]}",
                            tier=tier, tools=[lookup], tool_choice="required")
    assert first.tool_calls
    messages = [{"role": "user", "content": "Use lookup for the topic billing"},
                first.message(),
                {"role": "tool", "tool_call_id": first.tool_calls[0].id,
                 "content": lookup("billing")}]
    # When its model fails and the chain moves to the other wire format
    sim.configure(fail_models={model: 503 for model in failing})
    second = client.complete(messages, tier=tier, tools=[lookup])
    # Then the conversation stays valid there: the answer quotes the tool's result
    assert second.fallback_used and "reviewed and approved" in second.content


def test_an_image_is_read_and_counted(client: FleetClient, sim: Any) -> None:
    question = f"What is in this picture? {uuid.uuid4().hex[:6]}"
    with_image = client.complete([{"role": "user", "content": [
        {"type": "text", "text": question},
        {"type": "image_url", "image_url": {"url": png(1024, 1024)}}]}], tier="simple")
    without = client.complete(question, tier="simple", cache="skip")
    assert with_image.usage.prompt_tokens > without.usage.prompt_tokens + 500
