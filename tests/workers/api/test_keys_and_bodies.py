"""Fleet keys (401 for anything but a live key, nothing enqueued), the keys CLI, and
bodies that are not JSON, too large or fuzzed: never a 500."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import httpx
import openai
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import OpenAI

from workers.api.keys import create_key, revoke_key
from workers.cli.api import keys_group

CHAT = {"model": "simple", "messages": [{"role": "user", "content": "hello"}]}


def sdk(api_url: str, key: str) -> OpenAI:
    return OpenAI(base_url=f"{api_url}/v1", api_key=key, max_retries=0)


@pytest.mark.parametrize("presented", ["", "not-a-key", "lfk_0123456789ab_" + "x" * 43])
def test_a_missing_or_wrong_key_is_401_and_nothing_runs(
        api_url: str, sim: Any, presented: str) -> None:
    with sdk(api_url, presented or "x") as client, \
            pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    headers = {} if not presented else {"authorization": f"Bearer {presented}"}
    assert httpx.post(f"{api_url}/v1/chat/completions", json=CHAT,
                      headers=headers).status_code == 401
    assert sim.stats()["requests"] == 0


def test_an_expired_key_is_401(api_url: str, engine: Any, sim: Any) -> None:
    _, key = create_key(engine, "api-tester", None, dt.timedelta(seconds=-1))
    with sdk(api_url, key) as client, pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_a_revoked_key_stops_working_within_seconds(api_url: str, engine: Any,
                                                    sim: Any) -> None:
    key_id, key = create_key(engine, "api-tester", "u1")
    with sdk(api_url, key) as client:
        assert client.models.list().data  # verified, now cached in the API process
        assert revoke_key(engine, key_id)
        time.sleep(5.5)
        with pytest.raises(openai.AuthenticationError):
            client.models.list()


def test_the_keys_cli_creates_lists_and_revokes(api_env: dict[str, str], api_url: str) -> None:
    runner = CliRunner()
    made = runner.invoke(keys_group, ["create", "--agent", "cli-agent", "--user", "u7",
                                      "--expires", "30d", "--json"], env=api_env)
    assert made.exit_code == 0, made.output
    created = json.loads(made.stdout)
    listed = runner.invoke(keys_group, ["list", "--json"], env=api_env)
    rows = {r["key_id"]: r for r in json.loads(listed.stdout)}
    assert rows[created["key_id"]]["agent"] == "cli-agent"
    assert created["key"] not in listed.stdout and "hash" not in listed.stdout
    with sdk(api_url, created["key"]) as client:
        assert client.models.list().data
    assert runner.invoke(keys_group, ["revoke", created["key_id"]], env=api_env).exit_code == 0
    again = runner.invoke(keys_group, ["revoke", created["key_id"]], env=api_env)
    assert again.exit_code != 0
    bad = runner.invoke(keys_group, ["create", "--agent", "a b"], env=api_env)
    assert bad.exit_code != 0


def test_a_body_that_is_not_json_is_400(http: httpx.Client, key: str) -> None:
    auth = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    for body in (b"{not json", b"[1, 2]", b"\xff\xfe", b""):
        response = http.post("/v1/chat/completions", content=body, headers=auth)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_body_over_the_limit_is_413(http: httpx.Client, key: str) -> None:
    auth = {"authorization": f"Bearer {key}"}
    big = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 9_000_000}]})
    response = http.post("/v1/chat/completions", content=big, headers=auth)
    assert response.status_code == 413 and response.json()["error"]["code"]

    def chunks() -> Any:
        for _ in range(10):
            yield b"x" * 1_000_000

    streamed = http.post("/v1/chat/completions", content=chunks(), headers=auth)
    assert streamed.status_code == 413


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=3),
    max_leaves=8)
_FIELDS = ["model", "messages", "max_tokens", "temperature", "top_p", "stop", "n", "stream",
           "seed", "user", "presence_penalty", "frequency_penalty", "input", "dimensions",
           "encoding_format", "max_completion_tokens"]
_MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "x"]),
                                  "content": st.text(max_size=30) | _JSON})
_BODY = st.dictionaries(
    st.sampled_from(_FIELDS) | st.text(max_size=10),
    st.sampled_from(["simple", "tier/medium", "embeddings", "gpt-9"]) | st.lists(_MESSAGE,
                                                                                  max_size=3)
    | _JSON, max_size=6) | _JSON
#: A valid body with one field fuzzed: reaches the job's own validation and the worker.
_NEAR = st.builds(lambda name, value: {**CHAT, "max_tokens": 8, name: value},
                  st.sampled_from(_FIELDS), _JSON | st.sampled_from(["simple", "embeddings"]))


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=_BODY | _NEAR, path=st.sampled_from(["/v1/chat/completions", "/v1/embeddings"]))
def test_fuzzed_bodies_are_never_a_500(http: httpx.Client, key: str, body: Any,
                                       path: str) -> None:
    # json.dumps writes Infinity for inf: a body no strict encoder would send.
    response = http.post(path, content=json.dumps(body), headers={
        "authorization": f"Bearer {key}", "content-type": "application/json",
        "x-llmfleet-timeout": "10"})
    assert response.status_code < 500, (body, response.text)
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
