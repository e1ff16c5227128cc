"""Drill: the official SDK's request whose job outlives its wait, and the retries that
follow it (the SDK's own, a caller's with an Idempotency-Key): one provider call, one
charge, one row."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import stop_process, wait_until
from tests.drills.conftest import (
    DrillStack,
    assert_budget_exact,
    running_worker,
    wait_for_rows,
)
from tests.workers.api.conftest import free_port
from workers.api.keys import create_key
from workers.store.engines import sync_engine

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def api(drill_stack: DrillStack, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[tuple[str, str]]:
    """(``llmfleet api``'s URL on the drill stack, a fleet key of agent "sdk")."""
    port = free_port()
    log = (tmp_path_factory.mktemp("sdk-api") / "api.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "api", "--port", str(port)],
        env=drill_stack.env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert process.poll() is None, "the API process died at start"
        try:
            return httpx.get(f"{url}/api/admin/ml-ops/health", timeout=2).status_code > 0
        except httpx.TransportError:
            return False

    try:
        wait_until(answers, timeout=60)
        yield url, create_key(sync_engine(drill_stack.database_url), "sdk", "u1")[1]
    finally:
        stop_process(process)
        log.close()


def test_a_request_that_outlives_its_wait_is_called_and_charged_once(
        drill_stack: DrillStack, api: tuple[str, str], sim: Any, tmp_path: Path) -> None:
    url, key = api
    sim.configure(latency_ms=3000)
    body = {"model": "simple", "max_tokens": 16,
            "messages": [{"role": "user", "content": f"slow {uuid.uuid4()}"}]}
    with running_worker(drill_stack, "sdk-worker", tmp_path / "worker.log"):
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=2)
        # Given the SDK's request whose job takes longer than the request waits
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as info:
            sdk.chat.completions.create(**body, extra_headers={"x-llmfleet-timeout": "1"})
        # Then the SDK does not retry it (x-should-retry: false): one answer, at 1 s
        assert info.value.status_code == 504
        assert info.value.response.headers["x-should-retry"] == "false"
        assert time.monotonic() - started < 2.5
        # And its automatic retry, had it sent one, attaches to the same job
        with httpx.Client(base_url=url, timeout=30,
                          headers={"authorization": f"Bearer {key}"}) as http:
            retry = http.post("/v1/chat/completions", json=body,
                              headers={"x-stainless-retry-count": "1"})
            # (the SDK marks its first attempt with 0: that one started the job)
        assert retry.status_code == 200, retry.text
        job_id = retry.headers["x-llmfleet-job-id"]
        # And so does a caller's repeat with an Idempotency-Key, across the job's end
        keyed = {**body, "messages": [{"role": "user", "content": f"keyed {uuid.uuid4()}"}]}
        first = sdk.with_options(max_retries=0).chat.completions.with_raw_response.create(
            **keyed, extra_headers={"idempotency-key": "order-42"})
        again = sdk.chat.completions.with_raw_response.create(
            **keyed, extra_headers={"idempotency-key": "order-42"})
        assert first.headers["x-llmfleet-job-id"] == again.headers["x-llmfleet-job-id"]
        assert first.parse().choices[0].message.content == \
            again.parse().choices[0].message.content
        # while the same key with another body is refused, not run
        with pytest.raises(openai.BadRequestError):
            sdk.chat.completions.create(**body, extra_headers={"idempotency-key": "order-42"})
        rows = wait_for_rows(drill_stack, "sdk", 2, timeout=30)
    # One provider call per job, one row each
    assert sim.stats()["requests"] == 2
    assert sorted(r["job_id"] for r in rows) == sorted(
        [job_id, first.headers["x-llmfleet-job-id"]])
    assert_budget_exact(drill_stack, "sdk")
