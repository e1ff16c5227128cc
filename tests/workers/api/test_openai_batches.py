"""OpenAI's Files and Batch endpoints, and ``x-llmfleet-deadline``, through the official
``openai`` SDK against a real API, worker, beat (its ``batch-tick``) and the simulator's
batch API: each request a fleet job sent through the fleet's batcher at batch prices."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from sqlalchemy import Engine

from schemas import FleetConfig, Usage
from tests.conftest import ledger_row, stop_process
from workers.api.keys import create_key
from workers.pipeline.pricing import cost_of

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def beat(api_env: dict[str, str], api_url: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Beat, whose batch-tick runs the fleet's batcher every second."""
    log = (tmp_path_factory.mktemp("batch-beat") / "beat.log").open("ab")
    process = subprocess.Popen([sys.executable, "-m", "workers.cli", "beat", "--loglevel",
                                "WARNING"], env=api_env, stdout=log, stderr=subprocess.STDOUT)
    yield
    stop_process(process)
    log.close()


@pytest.fixture()
def client(api_url: str, key: str, beat: None) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{api_url}/v1", api_key=key, max_retries=0, timeout=30) as sdk:
        yield sdk


def jsonl(lines: list[dict[str, Any]]) -> io.BytesIO:
    return io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())


def chat_line(custom_id: str, text: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "simple", "max_tokens": 16,
                     "messages": [{"role": "user", "content": text}], **body}}


def upload(client: OpenAI, lines: list[dict[str, Any]]) -> str:
    return client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch").id


def until(client: OpenAI, batch_id: str, statuses: tuple[str, ...], timeout: float = 30
          ) -> Any:
    end = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses or time.monotonic() > end:
            return batch
        time.sleep(0.5)


def live_cost(fleet: FleetConfig, row: dict[str, Any]) -> float:
    usage = Usage(prompt_tokens=row["prompt_tokens"], completion_tokens=row["completion_tokens"],
                  cached_tokens=row["cached_tokens"])
    return cost_of(fleet.models[row["model"]], usage)


def test_a_batch_file_is_answered_line_by_line_at_batch_prices(
        client: OpenAI, sim: Any, http: httpx.Client, key: str, api_fleet: FleetConfig,
        database_url: str) -> None:
    # Given a JSONL of three chat requests, uploaded
    run = uuid.uuid4().hex[:8]
    words = {f"req-{i}": f"echo {run}w{i}" for i in range(3)}
    file_id = upload(client, [chat_line(cid, text) for cid, text in words.items()])
    assert client.files.retrieve(file_id).bytes > 0
    # When a batch is made of it and polled until it ends
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"run": run})
    assert batch.status == "in_progress" and batch.request_counts.total == 3
    done = until(client, batch.id, ("completed", "failed"))
    # Then it completed, one output line per custom_id, none in error
    assert done.status == "completed" and done.error_file_id is None
    assert done.request_counts.completed == 3 and done.metadata == {"run": run}
    lines = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in lines) == sorted(words)
    # And each body is what POST /v1/chat/completions answers for the same request
    for line in lines:
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = line["response"]["body"]
        live = http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                         json=chat_line("x", words[line["custom_id"]])["body"]).json()
        assert set(body) == set(live) and body["object"] == "chat.completion"
        for name in ("model", "choices", "usage"):
            assert body[name] == live[name]
        assert words[line["custom_id"]].split()[1] in body["choices"][0]["message"]["content"]
    # And went through the provider's batch API: ledger rows marked batch, at half price
    assert sim.stats()["batch_requests"] == 3
    for line in lines:
        row = ledger_row(database_url, line["response"]["request_id"])
        assert row["batch"] is True and row["metadata"]["batch_id"] == batch.id
        assert float(row["cost_usd"]) == pytest.approx(live_cost(api_fleet, row) / 2, rel=1e-6)
    # And the list shows it
    assert batch.id in [b.id for b in client.batches.list(limit=100)]


def test_a_bad_line_is_named_and_another_key_sees_nothing(
        client: OpenAI, api_url: str, engine: Engine) -> None:
    # Given a file whose second line asks for what the fleet does not support
    file_id = upload(client, [chat_line("ok", "fine"), chat_line("bad", "x", logprobs=True),
                              chat_line("ok", "duplicate id")])
    # When a batch is made of it, it fails naming each bad line, and no job is sent
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    assert batch.status == "failed" and batch.errors is not None
    errors = {e.line: e for e in batch.errors.data or []}
    assert sorted(errors) == [2, 3]
    assert errors[2].param == "body.logprobs" and "line 2" in (errors[2].message or "")
    assert errors[3].code == "duplicate_custom_id"
    # And another fleet key can see neither the batch nor the file
    other = create_key(engine, "batch-stranger", None)[1]
    with OpenAI(base_url=f"{api_url}/v1", api_key=other, max_retries=0) as stranger:
        with pytest.raises(openai.NotFoundError):
            stranger.batches.retrieve(batch.id)
        with pytest.raises(openai.NotFoundError):
            stranger.files.content(file_id)
        assert batch.id not in [b.id for b in stranger.batches.list()]
    client.files.delete(file_id)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)


def test_a_cancelled_batch_reports_its_requests_cancelled(client: OpenAI, sim: Any) -> None:
    # Given a batch whose provider batch will not answer soon
    sim.configure(batch_completion_s=10_000)
    run = uuid.uuid4().hex[:8]
    file_id = upload(client, [chat_line(f"c{i}", f"cancel {run} {i}") for i in range(3)])
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    # When it is cancelled mid-way
    assert client.batches.cancel(batch.id).status == "cancelling"
    done = until(client, batch.id, ("cancelled",))
    # Then its requests are in the error file, cancelled
    assert done.status == "cancelled" and done.request_counts.failed == 3
    assert done.error_file_id is not None and done.output_file_id is None
    lines = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert {line["error"]["code"] for line in lines} == {"batch_cancelled"}
    assert sorted(line["custom_id"] for line in lines) == ["c0", "c1", "c2"]


def test_the_deadline_header_sends_a_request_through_a_batch(
        client: OpenAI, sim: Any, api_fleet: FleetConfig, database_url: str) -> None:
    # Given a chat request that can wait two hours
    raw = client.chat.completions.with_raw_response.create(
        model="simple", max_tokens=16, extra_headers={"x-llmfleet-deadline": "2h"},
        messages=[{"role": "user", "content": f"echo deferred {uuid.uuid4().hex}"}])
    # Then it is answered in the request, through the batch API, at half the live price
    assert "deferred" in (raw.parse().choices[0].message.content or "")
    assert sim.stats()["batch_requests"] == 1 and sim.stats()["requests"] == 0
    row = ledger_row(database_url, raw.headers["x-llmfleet-job-id"])
    assert row["batch"] is True
    cost = float(raw.headers["x-llmfleet-cost-usd"])
    assert cost == pytest.approx(float(row["cost_usd"]), abs=1e-9)
    assert cost == pytest.approx(live_cost(api_fleet, row) / 2, rel=1e-6)
    # And a deadline that is no duration is refused naming the header
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="simple", messages=[{"role": "user",
                                                                  "content": "x"}],
                                       extra_headers={"x-llmfleet-deadline": "soon"})
    assert refused.value.body["param"] == "x-llmfleet-deadline"  # type: ignore[index]
