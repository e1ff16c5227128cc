"""Provider batches over real HTTP: OpenAI's Files and Batch APIs through the official
SDK, Anthropic's Message Batches with its real headers (the anthropic SDK is not a
dependency here)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import openai
import pytest

from tests.workers.devstack.simulator.conftest import (
    CHAT,
    EMBEDDINGS,
    MESSAGES,
    anthropic,
    anthropic_error,
    chat,
    openai_error,
)
from workers.devstack.simulator import SimulatorConfig, SimulatorThread

T = TypeVar("T")
CLAUDE = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
BATCHES = "/v1/messages/batches"


def wait_for(read: Callable[[], T], done: Callable[[T], bool], timeout: float = 5.0) -> T:
    end = time.monotonic() + timeout
    while True:
        value = read()
        if done(value) or time.monotonic() > end:
            return value
        time.sleep(0.03)


def line(custom_id: str, body: dict[str, Any], url: str = CHAT, method: str = "POST") -> str:
    return json.dumps({"custom_id": custom_id, "method": method, "url": url, "body": body})


def upload(oai: openai.OpenAI, lines: list[str], name: str = "in.jsonl") -> str:
    data = ("\n".join(lines) + "\n").encode()
    return oai.files.create(file=(name, data), purpose="batch").id


def submit(oai: openai.OpenAI, lines: list[str], endpoint: str = CHAT) -> Any:
    return oai.batches.create(input_file_id=upload(oai, lines), endpoint=endpoint,  # type: ignore[arg-type]
                              completion_window="24h", metadata={"job": "t"})


def jsonl(oai: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(x) for x in oai.files.content(file_id).text.splitlines()]


def ended(oai: openai.OpenAI, batch_id: str, timeout: float = 5.0) -> Any:
    return wait_for(lambda: oai.batches.retrieve(batch_id),
                    lambda b: b.status in ("completed", "failed", "expired", "cancelled"),
                    timeout)


def completed(batch: Any) -> int:
    """A Batch's requests answered successfully so far."""
    return int(batch.request_counts.completed)


def questions(n: int) -> list[dict[str, Any]]:
    return [chat(messages=[{"role": "user", "content": f"question number {i}"}])
            for i in range(n)]


def stable(body: dict[str, Any]) -> dict[str, Any]:
    """A response body without what differs between two identical calls."""
    return {k: v for k, v in body.items() if k not in ("id", "created")}


# -- OpenAI ---------------------------------------------------------------------------


def test_openai_batch_answers_as_live_calls(sim: SimulatorThread, oai: openai.OpenAI,
                                             client: httpx.Client) -> None:
    # Given chat bodies (one with structured output) and an embeddings batch
    sim.configure(batch_completion_s=0.3)
    as_json = [{"role": "user", "content": "Reply in JSON: the weather"}]
    bodies = [*questions(3), chat(messages=as_json, response_format={"type": "json_object"})]
    embed = {"model": "text-embedding-3-small", "input": ["alpha", "beta"]}
    # When they run as batches, and then as live calls
    batch = submit(oai, [line(f"q{i}", b) for i, b in enumerate(bodies)])
    vectors = submit(oai, [line("e0", embed, EMBEDDINGS)], endpoint=EMBEDDINGS)
    batch, vectors = ended(oai, batch.id), ended(oai, vectors.id)
    batch_stats = sim.stats()
    live = [client.post(CHAT, json=b).json() for b in bodies]
    live_vector = client.post(EMBEDDINGS, json=embed).json()
    # Then each item's body is the live call's, usage included
    assert batch.status == "completed" and batch.model == "gpt-4o-mini"
    assert batch.request_counts.model_dump() == {"total": 4, "completed": 4, "failed": 0}
    assert batch.error_file_id is None and batch.metadata == {"job": "t"}
    assert batch.completed_at and batch.finalizing_at and batch.in_progress_at
    out = {x["custom_id"]: x for x in jsonl(oai, batch.output_file_id)}
    assert sorted(out) == ["q0", "q1", "q2", "q3"]
    for i, body in enumerate(live):
        got = out[f"q{i}"]
        assert got["error"] is None and got["id"].startswith("batch_req_")
        assert got["response"]["status_code"] == 200 and got["response"]["request_id"]
        assert stable(got["response"]["body"]) == stable(body)
    assert batch.usage is not None
    assert batch.usage.input_tokens == sum(b["usage"]["prompt_tokens"] for b in live)
    assert batch.usage.output_tokens == sum(b["usage"]["completion_tokens"] for b in live)
    (vector,) = jsonl(oai, vectors.output_file_id)
    assert vector["response"]["body"] == live_vector
    # And batch items are counted apart from live requests
    assert batch_stats["requests"] == 0 and batch_stats["batch_requests"] == 5
    assert batch_stats["batch_by_model"] == {"gpt-4o-mini": 4, "text-embedding-3-small": 1}
    assert sim.stats()["requests"] == 5 and sim.stats()["batch_requests"] == 5


def test_openai_batch_progresses_and_lists(sim: SimulatorThread, oai: openai.OpenAI) -> None:
    # Given a batch of 20 requests taking 1 s
    sim.configure(batch_completion_s=1.0)
    batch = submit(oai, [line(f"r{i}", b) for i, b in enumerate(questions(20))])
    # When it is polled midway, then at its end
    first = batch.status
    midway = wait_for(lambda: oai.batches.retrieve(batch.id),
                      lambda b: completed(b) >= 5, 2.0)
    done = ended(oai, batch.id)
    # Then it went validating -> in_progress with partial counts -> completed
    assert first == "validating"
    assert midway.status == "in_progress" and 5 <= completed(midway) < 20
    assert done.status == "completed" and completed(done) == 20
    # And a fresh client (a restarted fleet process) finds it, newest first in the list
    later = submit(oai, [line("x", chat())])
    with openai.OpenAI(base_url=sim.openai_base_url, api_key="k", max_retries=0) as fresh:
        assert fresh.batches.retrieve(batch.id).status == "completed"
        page = fresh.batches.list(limit=1)
        assert [b.id for b in page.data] == [later.id] and page.has_more
        assert [b.id for b in fresh.batches.list(after=later.id).data] == [batch.id]


def test_openai_item_errors_are_counted_and_shaped(sim: SimulatorThread,
                                                   oai: openai.OpenAI) -> None:
    # Given half the items drawn to fail, and one body the live route refuses
    sim.configure(batch_completion_s=0.2, batch_item_error_rate=0.5, seed=7)
    lines = [line(f"r{i}", b) for i, b in enumerate(questions(12))]
    lines.append(line("bad", {"model": "gpt-4o-mini"}))  # no messages
    # When the batch ends
    batch = ended(oai, submit(oai, lines).id)
    # Then failures are counted and written to the error file with their HTTP status
    out, errors = jsonl(oai, batch.output_file_id), jsonl(oai, batch.error_file_id)
    assert batch.status == "completed"
    assert batch.request_counts.failed == len(errors) >= 2
    assert batch.request_counts.completed == len(out) >= 2 and len(out) + len(errors) == 13
    statuses = {x["custom_id"]: x["response"]["status_code"] for x in errors}
    assert statuses.pop("bad") == 400 and set(statuses.values()) == {500}
    for x in errors:
        assert x["error"] is None
        assert set(x["response"]["body"]["error"]) == {"message", "type", "param", "code"}
    assert next(x for x in errors if x["custom_id"] == "bad")["response"]["body"]["error"][
        "param"] == "messages"


def test_openai_cancel_midway_keeps_finished_items(sim: SimulatorThread,
                                                   oai: openai.OpenAI) -> None:
    # Given a batch of 20 requests taking 2 s, partly done
    sim.configure(batch_completion_s=2.0)
    batch = submit(oai, [line(f"r{i}", b) for i, b in enumerate(questions(20))])
    wait_for(lambda: oai.batches.retrieve(batch.id), lambda b: completed(b) >= 4)
    # When it is cancelled
    cancelling = oai.batches.cancel(batch.id)
    done = ended(oai, batch.id)
    # Then it goes cancelling -> cancelled; answered items kept, the rest cancelled
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    assert done.status == "cancelled" and done.cancelled_at
    kept = completed(done)
    assert 4 <= kept < 20
    assert len(jsonl(oai, done.output_file_id)) == kept
    errors = jsonl(oai, done.error_file_id)
    assert len(errors) == 20 - kept
    assert {x["error"]["code"] for x in errors} == {"batch_cancelled"}
    assert all(x["response"] is None for x in errors)
    # And an ended batch cannot be cancelled again
    with pytest.raises(openai.ConflictError):
        oai.batches.cancel(batch.id)


def test_openai_expiry_and_stall(sim: SimulatorThread, oai: openai.OpenAI) -> None:
    # Given every batch set to expire
    sim.configure(batch_completion_s=0.6, batch_expire=True)
    # When one runs out its time
    batch = ended(oai, submit(oai, [line(f"r{i}", b) for i, b in enumerate(questions(10))]).id)
    # Then it expired with about half its items answered, the rest batch_expired
    assert batch.status == "expired" and batch.expired_at and batch.expires_at
    assert 2 <= completed(batch) <= 8
    errors = jsonl(oai, batch.error_file_id)
    assert len(errors) == 10 - completed(batch)
    assert {x["error"]["code"] for x in errors} == {"batch_expired"}
    # And a stalled batch stays in progress, expiring after the 24-hour window
    sim.configure(batch_completion_s=1e9, batch_expire=False)
    stalled = submit(oai, [line("s", chat())])
    time.sleep(0.2)
    again = oai.batches.retrieve(stalled.id)
    assert again.status in ("validating", "in_progress") and completed(again) == 0
    assert again.expires_at is not None and again.expires_at - again.created_at == 24 * 3600


def test_openai_bad_input_refused_as_openai_does(oai: openai.OpenAI,
                                                 client: httpx.Client) -> None:
    # Given files with a duplicate custom_id, a line for another endpoint, a bad method
    good = line("a", chat())
    dup = submit(oai, [good, good])
    other = submit(oai, [good, line("b", chat(), EMBEDDINGS), line("c", chat(), method="GET"),
                         "not json"])
    # When validation has run
    dup, other = ended(oai, dup.id), ended(oai, other.id)
    # Then each batch failed, naming the line and the code
    assert dup.status == "failed" and dup.failed_at and dup.errors is not None
    assert [(e.code, e.line) for e in dup.errors.data or []] == [("duplicate_custom_id", 2)]
    assert other.errors is not None
    assert [(e.code, e.line, e.param) for e in other.errors.data or []] == [
        ("url_mismatch", 2, "url"), ("invalid_method", 3, "method"),
        ("invalid_json_line", 4, None)]
    assert dup.output_file_id is None and dup.error_file_id is None
    # And a missing file, an unsupported endpoint or window, a bad upload are refused at once
    file_id = upload(oai, [good])
    with pytest.raises(openai.NotFoundError):
        oai.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions",
                           completion_window="24h")
    posted = [client.post("/v1/batches", json={"input_file_id": file_id, **extra})
              for extra in ({"endpoint": "/v1/images/edits", "completion_window": "24h"},
                            {"endpoint": CHAT, "completion_window": "1h"},
                            {"endpoint": CHAT})]
    params = [openai_error(r, 400, "invalid_request_error")["param"] for r in posted]
    assert params == ["endpoint", "completion_window", "completion_window"]
    openai_error(client.get("/v1/batches/batch_nope"), 404, "invalid_request_error")
    with pytest.raises(openai.BadRequestError, match=r"Must be \.jsonl"):
        oai.files.create(file=("in.txt", b"{}"), purpose="batch")


def test_openai_files_round_trip(oai: openai.OpenAI) -> None:
    # Given an uploaded batch file
    lines = [line("a", chat())]
    file_id = upload(oai, lines)
    # When it is read back and deleted
    info = oai.files.retrieve(file_id)
    data = oai.files.content(file_id).content
    deleted = oai.files.delete(file_id)
    # Then it was stored as sent, and is gone
    assert info.purpose == "batch" and info.filename == "in.jsonl" and info.bytes == len(data)
    assert data == (lines[0] + "\n").encode()
    assert deleted.deleted and deleted.id == file_id
    with pytest.raises(openai.NotFoundError):
        oai.files.retrieve(file_id)


def test_batch_routes_check_the_api_key(sim: SimulatorThread, client: httpx.Client) -> None:
    # Given a simulator with an api_key
    sim.configure(api_key="sk-ant-test")
    # When batch routes are called with the wrong key, then the right one
    bearer = {"Authorization": "Bearer nope"}
    # Then each format refuses in its own shape
    openai_error(client.get("/v1/batches", headers=bearer), 401, "authentication_error")
    anthropic_error(client.get(BATCHES, headers={**CLAUDE, "x-api-key": "nope"}), 401,
                    "authentication_error")
    assert client.get(BATCHES, headers=CLAUDE).status_code == 200


# -- Anthropic ------------------------------------------------------------------------


def claude_batch(client: httpx.Client, params: list[dict[str, Any]]) -> dict[str, Any]:
    requests = [{"custom_id": f"m{i}", "params": p} for i, p in enumerate(params)]
    response = client.post(BATCHES, json={"requests": requests}, headers=CLAUDE)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def claude_poll(client: httpx.Client, batch_id: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"{BATCHES}/{batch_id}", headers=CLAUDE).json()
    return body


def claude_end(client: httpx.Client, batch_id: str) -> dict[str, Any]:
    return wait_for(lambda: claude_poll(client, batch_id),
                    lambda b: b["processing_status"] == "ended")


def claude_results(client: httpx.Client, batch: dict[str, Any]) -> dict[str, dict[str, Any]]:
    text = client.get(batch["results_url"], headers=CLAUDE).text
    return {x["custom_id"]: x["result"] for x in map(json.loads, text.splitlines())}


def test_anthropic_batch_answers_as_live_calls(sim: SimulatorThread,
                                               client: httpx.Client) -> None:
    # Given Messages bodies, one of them invalid (no max_tokens)
    sim.configure(batch_completion_s=0.3)
    params = [anthropic(messages=[{"role": "user", "content": f"question {i}"}])
              for i in range(3)]
    broken = {k: v for k, v in anthropic().items() if k != "max_tokens"}
    # When they run as a batch, then as live calls
    created = claude_batch(client, [*params, broken])
    batch = claude_end(client, created["id"])
    results = claude_results(client, batch)
    live = [client.post(MESSAGES, json=p) for p in [*params, broken]]
    # Then the batch has Anthropic's shape, and each result is the live call's answer
    assert created["type"] == "message_batch" and created["id"].startswith("msgbatch_")
    assert created["processing_status"] == "in_progress" and created["results_url"] is None
    assert batch["request_counts"] == {"processing": 0, "succeeded": 3, "errored": 1,
                                       "canceled": 0, "expired": 0}
    assert batch["ended_at"] and batch["expires_at"] > batch["created_at"]
    assert batch["results_url"].endswith(f"/v1/messages/batches/{batch['id']}/results")
    for i, response in enumerate(live[:3]):
        assert results[f"m{i}"]["type"] == "succeeded"
        assert stable(results[f"m{i}"]["message"]) == stable(response.json())
    assert results["m3"] == {"type": "errored", "error": live[3].json()}
    assert live[3].status_code == 400
    assert sim.stats()["batch_by_model"] == {"claude-3-5-haiku": 4}


def test_anthropic_progress_errors_cancel_expiry(sim: SimulatorThread,
                                                 client: httpx.Client) -> None:
    # Given a slow batch with injected item errors
    sim.configure(batch_completion_s=2.0, batch_item_error_rate=0.3, seed=3)
    batch = claude_batch(client, [anthropic() for _ in range(20)])
    # When it is polled midway, then cancelled
    midway = wait_for(lambda: claude_poll(client, batch["id"]),
                      lambda b: b["request_counts"]["processing"] <= 15)
    cancel = client.post(f"{BATCHES}/{batch['id']}/cancel", headers=CLAUDE).json()
    done = claude_end(client, batch["id"])
    # Then counts were partial, cancel went canceling -> ended, finished items were kept
    counts = midway["request_counts"]
    assert midway["processing_status"] == "in_progress" and 0 < counts["processing"] < 20
    assert cancel["processing_status"] == "canceling" and cancel["cancel_initiated_at"]
    final = done["request_counts"]
    assert final["processing"] == 0 and 5 <= final["succeeded"] + final["errored"] < 20
    results = claude_results(client, done)
    kinds = [r["type"] for r in results.values()]
    assert kinds.count("canceled") == final["canceled"] > 0
    assert kinds.count("errored") == final["errored"] > 0
    error = next(r for r in results.values() if r["type"] == "errored")["error"]
    assert error == {"type": "error", "error": {"type": "api_error",
                                                "message": "Internal server error (simulated)."}}
    # And an expiring batch ends with its unfinished requests expired
    sim.configure(batch_completion_s=0.4, batch_item_error_rate=0.0, batch_expire=1.0)
    expired = claude_end(client, claude_batch(client, [anthropic() for _ in range(10)])["id"])
    assert 0 < expired["request_counts"]["expired"] < 10
    assert expired["request_counts"]["succeeded"] + expired["request_counts"]["expired"] == 10
    assert {r["type"] for r in claude_results(client, expired).values()} == {"succeeded",
                                                                            "expired"}


def test_anthropic_bad_input_refused_as_anthropic_does(sim: SimulatorThread,
                                                       client: httpx.Client) -> None:
    # Given requests with a duplicate custom_id, a bad custom_id, none at all
    twice = [{"custom_id": "a", "params": anthropic()}] * 2
    bad_id = [{"custom_id": "has space", "params": anthropic()}]
    # When they are posted; Then each is a 400 invalid_request_error naming the field
    for requests, field in ((twice, "requests.1.custom_id"), (bad_id, "requests.0.custom_id"),
                            ([], "requests")):
        response = client.post(BATCHES, json={"requests": requests}, headers=CLAUDE)
        assert anthropic_error(response, 400, "invalid_request_error").startswith(field)
    # And unknown batches are 404, results before the end 400; an ended batch lists,
    # and deletes
    anthropic_error(client.get(f"{BATCHES}/msgbatch_nope", headers=CLAUDE), 404,
                    "not_found_error")
    sim.configure(batch_completion_s=0.5)
    running = claude_batch(client, [anthropic()])
    early = client.get(f"{BATCHES}/{running['id']}/results", headers=CLAUDE)
    anthropic_error(early, 400, "invalid_request_error")
    claude_end(client, running["id"])
    listed = client.get(BATCHES, params={"limit": 5}, headers=CLAUDE).json()
    assert listed["data"][0]["id"] == running["id"] and listed["first_id"] == running["id"]
    gone = client.delete(f"{BATCHES}/{running['id']}", headers=CLAUDE).json()
    assert gone == {"id": running["id"], "type": "message_batch_deleted"}


# -- Knobs ----------------------------------------------------------------------------


def test_batch_knobs_validate_and_reach_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a config; When the batch knobs are set, well and badly
    config = SimulatorConfig()
    config.update(batch_completion_s=0.5, batch_item_error_rate=0.1, batch_expire=True)
    # Then they apply (a bool expiry is a share), and bad values are refused
    assert (config.batch_completion_s, config.batch_item_error_rate,
            config.batch_expire) == (0.5, 0.1, 1.0)
    for name, value in (("batch_completion_s", -1), ("batch_completion_s", float("inf")),
                        ("batch_item_error_rate", 1.5), ("batch_expire", 2), ("batch_expire", "x")):
        with pytest.raises(ValueError, match=name):
            config.update(**{name: value})
    # And the simulator command passes its flags on
    from click.testing import CliRunner

    import workers.devstack.simulator as package
    from workers.cli.fleet import simulator

    served: list[SimulatorConfig] = []
    monkeypatch.setattr(package, "run_simulator",
                        lambda host, port, config: served.append(config))
    result = CliRunner().invoke(simulator, ["--batch-completion-s", "1e6",
                                            "--batch-item-error-rate", "0.2",
                                            "--batch-expire", "0.5"])
    assert result.exit_code == 0, result.output
    assert (served[0].batch_completion_s, served[0].batch_item_error_rate,
            served[0].batch_expire) == (1e6, 0.2, 0.5)
