"""Fleet keys with limits of their own and a priority, through the running API: a key
over its rpm answers 429 in OpenAI's shape and headers, the ledger keeps the refusal,
and ``llmfleet limits``, the admin API and /metrics show it; a key's priority (or the
request's) chooses the queue its jobs wait in."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import Engine, select

from schemas import FleetConfig
from schemas.tables import job_ledger
from tasks import FleetClient
from tests.conftest import intercept_sends, wait_until
from tests.workers.api.conftest import ADMIN_KEY
from workers.api.errors import ApiError
from workers.api.keys import FleetKey, KeyLimits, create_key
from workers.api.openai_routes import admission_fields
from workers.cli.limits import limits_command

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def chat(http: httpx.Client, key: str, **headers: str) -> httpx.Response:
    return http.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}",
                                                      **headers},
                     json={"model": "simple", "max_tokens": 16,
                           "messages": [{"role": "user", "content": uuid.uuid4().hex}]})


@dataclass(frozen=True)
class OverLimit:
    key_id: str
    agent: str
    answers: list[httpx.Response]


@pytest.fixture(scope="module")
def over_rpm(http: httpx.Client, engine: Engine, sim: Any) -> OverLimit:
    """A key of 2 requests per minute (reject) that made three requests at once."""
    agent = f"limited-{uuid.uuid4().hex[:6]}"
    key_id, key = create_key(engine, agent, "u1", limits=KeyLimits(rpm=2))
    return OverLimit(key_id, agent, [chat(http, key) for _ in range(3)])


@pytest.fixture(scope="module")
def sim(simulator: Any) -> Any:
    """The session simulator answering cleanly, for the module (``over_rpm`` outlives
    one test)."""
    simulator.configure(latency_ms=0, jitter_ms=0, error_rate=0, rate_limit_rate=0,
                        fail_models={}, known_models=None, context_limits={},
                        omit_usage=False, malformed_rate=0, first_token_ms=0, token_ms=0,
                        stream_failure_rate=0)
    return simulator


def test_the_third_request_in_a_minute_is_429_in_openais_shape(over_rpm: OverLimit) -> None:
    first, second, third = over_rpm.answers
    assert (first.status_code, second.status_code) == (200, 200), second.text
    assert third.status_code == 429, third.text
    error = third.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert f"key-{over_rpm.key_id}" in error["message"]
    headers = third.headers
    # Two per minute: the next fits about 30 s after the first
    assert 1 <= int(headers["retry-after"]) <= 31
    assert headers["x-should-retry"] == "true"
    assert (headers["x-ratelimit-limit-requests"],
            headers["x-ratelimit-remaining-requests"]) == ("2", "0")
    assert re.fullmatch(r"\d+(\.\d+)?s", headers["x-ratelimit-reset-requests"])
    assert "x-ratelimit-limit-tokens" not in headers


def test_the_refusal_is_a_rejected_row_of_the_ledger(over_rpm: OverLimit, engine: Engine,
                                                     spool_empty: Any) -> None:
    spool_empty()
    query = select(job_ledger.c.status, job_ledger.c.error, job_ledger.c.error_message) \
        .where(job_ledger.c.agent == over_rpm.agent).order_by(job_ledger.c.id)
    rows: list[Any] = []

    def three() -> bool:
        with engine.connect() as connection:
            rows[:] = connection.execute(query).all()
        return len(rows) == 3

    wait_until(three, timeout=30)
    assert sorted(r.status for r in rows) == ["rejected", "succeeded", "succeeded"]
    rejected = next(r for r in rows if r.status == "rejected")
    assert rejected.error == "RateLimitedError"
    # (the ledger masks anything shaped like an API key, "key-<id>" included)
    assert "limit 'key-" in rejected.error_message
    assert "2 requests per minute" in rejected.error_message


def test_llmfleet_limits_shows_the_keys_use_and_refusal(over_rpm: OverLimit,
                                                        api_env: dict[str, str]) -> None:
    done = CliRunner().invoke(limits_command, ["--json"], env=api_env)
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    rows = [r for r in report["limits"] if r["name"] == f"key-{over_rpm.key_id}"]
    assert [(r["kind"], r["used"], r["limit"], r["rejected"], r["source"]) for r in rows] == [
        ("rpm", 2, 2, 1, "key")]
    assert report["parked_jobs"] >= 0
    table = CliRunner().invoke(limits_command, [], env={**api_env, "COLUMNS": "160"})
    line = next(x for x in table.stdout.splitlines() if f"key-{over_rpm.key_id}" in x)
    assert line.split()[1:3] == ["reject", "2/2"] and line.split()[-2:] == ["1", "0"]


def test_the_admin_api_and_metrics_show_the_limit(over_rpm: OverLimit,
                                                  http: httpx.Client, key: str) -> None:
    name = f"key-{over_rpm.key_id}"
    assert http.get("/api/admin/ml-ops/limits").status_code == 401
    assert http.get("/api/admin/ml-ops/limits",
                    headers={"authorization": f"Bearer {key}"}).status_code == 401
    page = http.get("/api/admin/ml-ops/limits", headers=ADMIN)
    assert page.status_code == 200, page.text
    row = next(r for r in page.json()["limits"] if r["name"] == name)
    assert (row["scope"], row["kind"], row["used"], row["rejected"]) == (
        f"key:{over_rpm.key_id}", "rpm", 2, 1)
    text = http.get("/metrics", headers=ADMIN).text
    assert f'llmfleet_limit{{kind="rpm",limit="{name}"}} 2.0' in text
    assert f'llmfleet_limit_used{{kind="rpm",limit="{name}"}} 2.0' in text
    assert f'llmfleet_limit_rejected_total{{limit="{name}"}} 1.0' in text
    assert f'llmfleet_limit_delayed_total{{limit="{name}"}} 0.0' in text
    assert re.search(r"^llmfleet_parked_jobs \d+\.0$", text, re.M)


# -- priority ------------------------------------------------------------------------

def test_a_high_priority_key_is_served_and_a_bad_priority_header_is_400(
        http: httpx.Client, engine: Engine, sim: Any) -> None:
    _, key = create_key(engine, "prio-high", None, limits=KeyLimits(priority="high"))
    assert chat(http, key).status_code == 200  # from llm.simple.high
    assert chat(http, key, **{"x-llmfleet-priority": "low"}).status_code == 200
    bad = chat(http, key, **{"x-llmfleet-priority": "urgent"})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "x-llmfleet-priority"
    assert "x-llmfleet-priority" in bad.json()["error"]["message"]
    # A caller may yield its key's place, never jump above it
    _, normal = create_key(engine, "prio-normal", None)
    above = chat(http, normal, **{"x-llmfleet-priority": "high"})
    assert above.status_code == 400 and "above this key's priority" in above.text


def test_the_job_carries_the_keys_id_limit_and_priority_to_its_queue(
        redis_url: str, api_fleet: FleetConfig) -> None:
    # Given a high-priority key with limits, and a client whose sends are recorded
    caller = FleetKey("0123456789ab", "prio-agent", None, None,
                      KeyLimits(rpm=5, concurrency=2, mode="queue", priority="high"))
    sent: list[tuple[str, Any, str]] = []
    client = FleetClient(redis_url=redis_url, fleet=api_fleet, agent="api")
    intercept_sends(client, lambda m: bool(sent.append((m.name, m.args[0], m.queue))))
    try:
        # When the route's fields go with a job, as the request names no priority
        # and then as it asks for low
        for header in (None, "LOW"):
            asyncio.run(client.asubmit(uuid.uuid4().hex, tier="simple", agent=caller.agent,
                                       **admission_fields(caller, header)))
        client.embed([uuid.uuid4().hex], **admission_fields(caller, None))
    finally:
        client.close()
    # Then each job went to its priority's queue carrying the key's id and own limit
    assert [queue for _, _, queue in sent] == ["llm.simple.high", "llm.simple.low",
                                               "llm.embeddings.high"]
    payload = sent[0][1]
    assert (payload["priority"], payload["key_id"]) == ("high", "0123456789ab")
    assert payload["key_limits"] == [{"name": "key-0123456789ab", "scope": "key:0123456789ab",
                                      "rpm": 5, "tpm": None, "concurrency": 2,
                                      "mode": "queue"}]
    # And a key with no limit sends none; a bad header names itself
    plain = FleetKey("ba9876543210", "a", None, None)
    assert admission_fields(plain, None) == {"key_id": "ba9876543210", "priority": "normal",
                                             "key_limits": []}
    with pytest.raises(ApiError) as refused:
        admission_fields(plain, "urgent")
    assert (refused.value.status, refused.value.param) == (400, "x-llmfleet-priority")


def test_the_limit_headers_of_a_token_limit(http: httpx.Client, engine: Engine,
                                            sim: Any, redis_url: str) -> None:
    # Given a key of 100 tokens per minute, a request whose max_tokens alone passes it
    key_id, key = create_key(engine, "tpm-tester", None, limits=KeyLimits(tpm=100))
    answer = http.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                       json={"model": "simple", "max_tokens": 500,
                             "messages": [{"role": "user", "content": "hi"}]})
    # Then it is refused for good: no Retry-After, no retry, the token headers
    assert answer.status_code == 429, answer.text
    error = answer.json()["error"]
    assert error["type"] == "tokens" and f"key-{key_id}" in error["message"]
    assert answer.headers["x-should-retry"] == "false"
    assert "retry-after" not in answer.headers
    assert answer.headers["x-ratelimit-limit-tokens"] == "100"
    assert answer.headers["x-ratelimit-remaining-tokens"] == "0"
    # And nothing of the limit was taken
    client = redis.Redis.from_url(redis_url)
    try:
        assert not client.exists(f"llmfleet:limit:key-{key_id}:tpm")
    finally:
        client.close()


def test_a_refused_stream_ends_at_once_with_the_refusal(http: httpx.Client, engine: Engine,
                                                         api_url: str, sim: Any) -> None:
    import openai

    _, key = create_key(engine, "stream-limited", None, limits=KeyLimits(rpm=1))
    sdk = openai.OpenAI(base_url=f"{api_url}/v1", api_key=key, max_retries=0, timeout=30)
    with sdk:
        ask = [{"role": "user", "content": uuid.uuid4().hex}]
        assert "".join(c.choices[0].delta.content or "" for c in sdk.chat.completions.create(
            model="simple", messages=ask, stream=True) if c.choices)  # type: ignore[arg-type]
        # The second, over the limit: the stream's error event names it, with no wait
        again = [{"role": "user", "content": uuid.uuid4().hex}]
        with pytest.raises(openai.APIError, match="key-"):
            list(sdk.chat.completions.create(model="simple", messages=again, stream=True,  # type: ignore[arg-type]
                                             extra_headers={"x-llmfleet-timeout": "20"}))
