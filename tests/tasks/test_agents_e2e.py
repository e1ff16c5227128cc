"""Agents with tools, structured output, images and streams, end to end: the client,
a real worker process, real Redis and Postgres, and the simulator over real HTTP in both
wire formats."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import text

from schemas import FleetConfig, JobCancelledError, StreamInterruptedError
from tasks import FleetAgent, FleetClient
from tests.conftest import client_with_worker, start_worker, stop_process, wait_until
from tests.workers.providers.test_tool_translation import png
from workers.store.engines import sync_engine


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


def ledger_row(database_url: str, job_id: str) -> dict[str, Any]:
    def found() -> bool:
        with sync_engine(database_url).connect() as connection:
            return connection.execute(text("SELECT 1 FROM job_ledger WHERE job_id = :j"),
                                      {"j": job_id}).first() is not None
    wait_until(found, timeout=30)
    with sync_engine(database_url).connect() as connection:
        return dict(connection.execute(text("SELECT * FROM job_ledger WHERE job_id = :j"),
                                       {"j": job_id}).mappings().one())


def test_a_function_is_a_tool_and_its_call_comes_back_parsed(client: FleetClient,
                                                             sim: Any) -> None:
    # Given a question naming a tool, offered as a plain Python function
    result = client.complete(f"Please multiply 6 and 7 {uuid.uuid4().hex[:6]}",
                             tier="simple", tools=[multiply], tool_choice="required")
    # Then the model's call comes back with arguments valid for the function's schema
    assert result.finish_reason == "tool_calls" and result.tool_calls
    call = result.tool_calls[0]
    assert call.name == "multiply" and set(call.arguments) == {"a", "b"}


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


def test_a_streamed_answer_equals_the_whole_one(client: FleetClient, sim: Any,
                                                database_url: str) -> None:
    sim.configure(first_token_ms=20, token_ms=2)
    prompt = f"Explain the app router in a few words {uuid.uuid4().hex[:6]}"
    whole = client.complete(prompt, tier="simple", max_tokens=40, cache="skip")
    stream = client.stream(prompt, tier="simple", max_tokens=40, cache="skip")
    chunks = list(stream)
    # chunks in order, several, the last one the outcome; text equal to the whole answer
    assert [c.i for c in chunks] == list(range(len(chunks))) and len(chunks) > 3
    assert "".join(c.content for c in chunks) == whole.content == stream.result.content
    assert stream.result.usage == whole.usage and stream.result.cost_usd == whole.cost_usd
    row = ledger_row(database_url, stream.result.job_id)
    assert row["ttft_ms"] is not None and 0 < row["ttft_ms"] < row["latency_ms"]


def test_a_streamed_tool_call_comes_in_pieces_and_whole_at_the_end(client: FleetClient,
                                                                   sim: Any) -> None:
    stream = client.stream(f"Please multiply 3 and 4 {uuid.uuid4().hex[:6]}", tier="simple",
                           tools=[multiply], tool_choice="required")
    pieces = [c for c in stream if c.tool_calls]
    assert pieces and pieces[0].tool_calls[0].name == "multiply"  # type: ignore[index]
    arguments = "".join(p.arguments for c in pieces for p in c.tool_calls or ())
    assert stream.result.tool_calls is not None
    assert arguments == stream.result.tool_calls[0].function.arguments


def test_closing_a_stream_stops_the_provider_within_a_second(client: FleetClient, sim: Any,
                                                             database_url: str) -> None:
    # Given an answer streaming slowly (its ~20 deltas would take about four seconds)
    sim.configure(token_ms=200)
    stream = client.stream(f"Write a long essay {uuid.uuid4().hex[:6]}", tier="simple",
                           max_tokens=2000, cache="skip")
    for chunk in stream:
        if chunk.i >= 3:
            break
    # When the agent closes it
    stream.close()
    closed = time.monotonic()
    # Then the simulator sees the stream cancelled within a second, and the row bills what
    # was written, as cancelled
    wait_until(lambda: sim.stream_stats()["cancelled"] >= 1, timeout=5, interval=0.05)
    assert time.monotonic() - closed < 1.5 and sim.stream_stats()["completed"] == 0
    row = ledger_row(database_url, stream.job_id)
    assert row["status"] == "cancelled" and row["completion_tokens"] > 0
    assert row["cost_usd"] > 0


def test_a_stream_that_fails_midway_bills_what_it_wrote(client: FleetClient, sim: Any,
                                                        database_url: str) -> None:
    sim.configure(stream_failure_rate=1.0, token_ms=1)
    stream = client.stream(f"Say something long {uuid.uuid4().hex[:6]}", tier="simple",
                           max_tokens=400, cache="skip")
    with pytest.raises(StreamInterruptedError):
        list(stream)
    row = ledger_row(database_url, stream.job_id)
    assert row["status"] == "failed" and row["error"] == "StreamInterruptedError"
    assert row["completion_tokens"] > 0 and row["cost_usd"] > 0


def test_a_job_cancelled_before_it_starts_never_reaches_a_provider(
        client: FleetClient, fleet_env: dict[str, str], sim: Any, database_url: str,
        tmp_path: Path) -> None:
    # Given a job queued on a tier no worker consumes yet, cancelled there
    handle = client.submit(f"never run {uuid.uuid4().hex[:6]}", tier="medium")
    handle.cancel()
    # When a worker of that tier comes up
    worker = start_worker(fleet_env, "medium", "w-medium-cancel", tmp_path / "w.log")
    try:
        with pytest.raises(JobCancelledError):
            handle.get(timeout=60)
    finally:
        stop_process(worker)
    # Then no provider was called, and its row says cancelled
    assert sim.stats()["requests"] == 0
    assert ledger_row(database_url, handle.job_id)["status"] == "cancelled"

