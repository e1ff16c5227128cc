"""Drill: hostile payloads (NUL and control characters, lone surrogates, huge and deep
JSON, wrong types, over-long names) through FleetClient, through the HTTP API, and as
raw messages that skipped the client. Every rejection is a clear error naming its field;
nothing stalls the ledger, kills the worker or answers 500.

``LLMFLEET_HOSTILE_EXAMPLES`` sets how many payloads each way (200 here; the issue's
goal was measured with 10,000).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import FleetError, JobTimeoutError, JobValidationError
from schemas.keys import LEDGER_DEAD_LETTERS, LEDGER_SPOOL
from tasks.names import COMPLETE, queue_for
from tests.conftest import stop_process, wait_until
from tests.drills.conftest import DrillStack, running_worker
from tests.workers.api.conftest import free_port
from workers.api.keys import create_key
from workers.store.engines import sync_engine

EXAMPLES = int(os.environ.get("LLMFLEET_HOSTILE_EXAMPLES", "200"))

pytestmark = pytest.mark.timeout(900)

#: Text no one should send: NUL and the other control characters, lone surrogates,
#: right-to-left marks, emoji; now and then a huge one.
_NASTY = st.text(alphabet=st.characters(codec=None, categories=["Cc", "Cs", "Cf", "So", "L"]),
                 max_size=40)
_TEXT = _NASTY | st.sampled_from(["a\x00b", "\ud800", "x" * 2_000_001, "é" * 300, ""])
_SCALAR = st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) \
    | st.floats() | _TEXT
_JSON = st.recursive(_SCALAR, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(_TEXT, inner, max_size=3), max_leaves=10)
_DEEP = st.integers(min_value=50, max_value=400).map(
    lambda depth: json.loads("[" * depth + "]" * depth))
_NAME = _TEXT | st.text(min_size=201, max_size=300) | st.sampled_from(["simple", "t" * 41])
_MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "tool", "x"])
                                  | _SCALAR, "content": _TEXT | _JSON})
#: submit()'s keywords, each hostile or absent.
_OPTIONS = st.fixed_dictionaries({}, optional={
    "messages": st.lists(_MESSAGE, max_size=3) | _JSON,
    "tier": _NAME, "model": _NAME, "agent": _NAME, "user": _NAME,
    "metadata": st.dictionaries(_TEXT, _JSON, max_size=4) | _DEEP | _JSON,
    "max_tokens": _SCALAR, "temperature": _SCALAR, "top_p": _SCALAR, "seed": _SCALAR,
    "stop": st.lists(_TEXT, max_size=6) | _SCALAR, "timeout": _SCALAR,
    "submitted_at": _SCALAR, "cache": _SCALAR, "fallback": _SCALAR,
})
_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                     suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def api(drill_stack: DrillStack, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[tuple[str, str]]:
    port = free_port()
    log = (tmp_path_factory.mktemp("hostile-api") / "api.log").open("ab")
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
        yield url, create_key(sync_engine(drill_stack.database_url), "hostile", "u1")[1]
    finally:
        stop_process(process)
        log.close()


def test_hostile_payloads_never_stall_kill_or_500(drill_stack: DrillStack,
                                                  api: tuple[str, str], sim: Any,
                                                  tmp_path: Path) -> None:
    url, key = api
    outcomes: Counter[str] = Counter()
    handles: list[Any] = []
    with running_worker(drill_stack, "hostile", tmp_path / "worker.log") as (worker, client):
        @_SETTINGS
        @given(options=_OPTIONS)
        def through_the_client(options: dict[str, Any]) -> None:
            messages = options.pop("messages", [{"role": "user", "content": "hi"}])
            try:
                handles.append(client.submit(messages, **options))
                outcomes["client: accepted"] += 1
            except JobValidationError as exc:
                # a clear error naming its field
                assert exc.field, exc  # type: ignore[attr-defined]
                outcomes["client: refused, field named"] += 1

        @_SETTINGS
        @given(body=_OPTIONS | _JSON, path=st.sampled_from(["/v1/chat/completions",
                                                             "/v1/embeddings"]))
        def through_the_api(http: httpx.Client, body: Any, path: str) -> None:
            raw = json.dumps(body, ensure_ascii=True)  # lone surrogates as \\ud800 escapes
            response = http.post(path, content=raw, headers={
                "content-type": "application/json", "x-llmfleet-timeout": "20"})
            assert response.status_code < 500, (body, response.text[:300])
            outcomes[f"api: {response.status_code}"] += 1
            if response.status_code >= 400 and response.status_code != 429:
                error = response.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}

        @_SETTINGS
        @given(options=_OPTIONS)
        def as_raw_messages(options: dict[str, Any]) -> None:
            payload = {"job_id": uuid.uuid4().hex, **options}
            try:
                client._send(COMPLETE, payload, queue_for("simple"), payload["job_id"])
            except (FleetError, TypeError, ValueError, OverflowError):
                outcomes["raw: not even serialisable"] += 1
                return
            handles.append(payload["job_id"])
            outcomes["raw: sent"] += 1

        # When hostile payloads come every way in
        through_the_client()
        with httpx.Client(base_url=url, timeout=60,
                          headers={"authorization": f"Bearer {key}"}) as http:
            through_the_api(http)
        as_raw_messages()
        # Then every job sent is answered, with a result or a typed error
        for handle in handles:
            if isinstance(handle, str):  # a raw message: its envelope
                envelope = client._waiter.wait(handle, 60)
                outcomes["answered: " + ("result" if envelope["ok"] else
                                         envelope["error"]["type"])] += 1
                continue
            try:  # the client's handle (a cache hit at submit holds its answer)
                handle.get(timeout=60)
                outcomes["answered: result"] += 1
            except FleetError as exc:
                assert not isinstance(exc, JobTimeoutError), exc
                outcomes[f"answered: {type(exc).__name__}"] += 1
        # And the worker lives, and the ledger drains with nothing set aside
        assert worker.poll() is None, "the worker died"
        with redis.Redis.from_url(drill_stack.redis_url) as r:
            wait_until(lambda: r.llen(LEDGER_SPOOL) == 0, timeout=60)
            dead = r.llen(LEDGER_DEAD_LETTERS)
    print(f"\nhostile payloads ({EXAMPLES} each way): {dict(sorted(outcomes.items()))}; "
          f"dead letters {dead}")
    assert dead == 0
