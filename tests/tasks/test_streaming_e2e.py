"""Streams end to end: the client reading a real worker's chunks through Redis, the
simulator streaming over real HTTP, the ledger billing what was written."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas import FleetConfig, JobCancelledError, StreamChunk, StreamInterruptedError
from tasks import FleetClient
from tasks._streams import ChunkStream
from tests.conftest import client_with_worker, ledger_row, start_worker, stop_process, wait_until
from tests.tasks.test_agents_e2e import multiply
from workers.devstack.simulator import make_reply


@pytest.fixture(scope="module")
def client(fleet_env: dict[str, str], fleet: FleetConfig,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetClient]:
    logs = tmp_path_factory.mktemp("streaming-logs")
    with client_with_worker(fleet_env, fleet, "simple,embeddings", "w-streams",
                            logs / "w.log", agent="streamer") as fleet_client:
        yield fleet_client


class Reader(threading.Thread):
    """Reads one stream to its end, noting when each chunk came."""

    def __init__(self, stream: ChunkStream) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.chunks: list[tuple[float, StreamChunk]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for chunk in self.stream:
                self.chunks.append((time.monotonic(), chunk))
        except BaseException as exc:
            self.error = exc

    def text(self) -> str:
        return "".join(c.content for _, c in self.chunks)


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


def long_prompt(fleet: FleetConfig, tier: str, tokens: int = 48) -> str:
    """A prompt the simulator answers at length: its replies are 8 to 60 tokens long, by
    a hash of the model and the prompt, three tokens a delta."""
    model = fleet.chain(tier)[0]
    wire = fleet.models[model].wire_name or model
    while True:
        text = f"Write a long essay {uuid.uuid4().hex[:6]}"
        if make_reply(wire, [{"role": "user", "content": text}]).tokens >= tokens:
            return text


def test_closing_a_stream_stops_the_provider_within_a_second(client: FleetClient, sim: Any,
                                                             database_url: str) -> None:
    # Given an answer streaming slowly (its 16 to 20 deltas would take about four seconds)
    sim.configure(token_ms=200)
    stream = client.stream(long_prompt(client.fleet, "simple"), tier="simple",
                           max_tokens=2000, cache="skip")
    for chunk in stream:
        if chunk.i >= 3:
            break
    # When the agent closes it
    stream.close()
    closed = time.monotonic()
    # Then the simulator sees the stream cancelled within a second, and the row bills what
    # was written, as cancelled
    while sim.stream_stats()["cancelled"] < 1 and time.monotonic() - closed < 10:
        time.sleep(0.05)
    stats, took = sim.stream_stats(), time.monotonic() - closed
    # (a second by the worker's poll, plus room for a loaded test machine)
    assert stats["cancelled"] == 1 and stats["completed"] == 0 and took < 2.5, (stats, took)
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



def test_a_cached_answer_streams_as_several_chunks_without_a_worker(
        client: FleetClient, sim: Any) -> None:
    prompt = f"Say what a cache is for {uuid.uuid4().hex[:6]}"
    whole = client.complete(prompt, tier="simple")
    sim.reset_stats()
    stream = client.stream(prompt, tier="simple")
    chunks = list(stream)
    assert len(chunks) > 2 and "".join(c.content for c in chunks) == whole.content
    assert stream.result.cache_hit and sim.stats()["requests"] == 0


def test_identical_streams_share_one_provider_stream_live(client: FleetClient,
                                                          sim: Any) -> None:
    # Given an answer streaming slowly (the simulator echoes the prompt's 30 words
    # first: at least 30 tokens, three seconds), and an identical request arriving once
    # it has begun
    sim.configure(first_token_ms=50, token_ms=100)
    prompt = " ".join(["Describe the release train"] * 7 + [uuid.uuid4().hex[:6], "now"])
    first = Reader(client.stream(prompt, tier="simple"))
    first.start()
    wait_until(lambda: len(first.chunks) >= 3, timeout=10, interval=0.02)
    second = Reader(client.stream(prompt, tier="simple"))
    second.start()
    first.join(30)
    second.join(30)
    assert first.error is None and second.error is None
    # Then one provider stream served both, the second reader got every delta from the
    # first one on, and got them while the stream was still being written, not after
    assert sim.stream_stats()["started"] == 1
    assert second.text() == first.text() and len(second.chunks) == len(first.chunks)
    assert second.stream.result.content == first.stream.result.content
    assert second.chunks[0][0] < first.chunks[-1][0] - 0.5
    assert second.stream.result.cache_hit and second.stream.result.cost_usd == 0


def test_a_follower_stream_ends_in_error_when_the_stream_it_shared_is_cancelled(
        client: FleetClient, sim: Any, fleet_env: dict[str, str]) -> None:
    # Given two readers of one provider stream (of about six seconds), the second having
    # had chunks
    sim.configure(first_token_ms=50, token_ms=300)
    prompt = f"Describe the deploy train {uuid.uuid4().hex[:6]}"
    first = client.stream(prompt, tier="simple")
    chunks = iter(first)
    next(chunks), next(chunks)
    second = Reader(client.stream(prompt, tier="simple"))
    second.start()
    wait_until(lambda: len(second.chunks) >= 2, timeout=10, interval=0.02)
    # When the first reader cancels its job
    first.close()
    second.join(30)
    # Then the second reader's stream ends in a typed error, not a second answer glued on
    assert isinstance(second.error, StreamInterruptedError), sim.stream_stats()
    assert sim.stream_stats()["started"] == 1 and sim.stream_stats()["cancelled"] == 1
