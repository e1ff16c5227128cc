"""The simulator's control surface over real HTTP: its counts and its configuration."""

from __future__ import annotations

import httpx
import pytest

from tests.workers.devstack.simulator.conftest import (
    CHAT,
    EMBEDDINGS,
    MESSAGES,
    anthropic,
    chat,
)
from workers.devstack.simulator import SimulatorConfig, SimulatorThread


def test_stats_count_provider_routes_and_reset(sim: SimulatorThread, client: httpx.Client) -> None:
    # Given a mix of successes and errors, and some control calls
    client.post(CHAT, json=chat("m1"))
    client.post(CHAT, json=chat("m1"), headers={"x-sim-status": "500"})
    client.post(MESSAGES, json=anthropic("m2"))
    client.post(EMBEDDINGS, json={"model": "e1", "input": "x"})
    client.get("/_sim/config")
    # When the stats are read over HTTP and from the thread
    over_http = client.get("/_sim/stats").json()
    # Then provider requests are counted by path, model and status; control ones are not
    expected = {
        "requests": 4,
        "by_path": {CHAT: 2, MESSAGES: 1, EMBEDDINGS: 1},
        "by_model": {"m1": 2, "m2": 1, "e1": 1},
        "by_status": {"200": 3, "500": 1},
        "quota_rejected": {},
        "batch_requests": 0,
        "batch_by_model": {},
    }
    assert over_http == expected
    assert sim.stats() == expected
    # And a reset (HTTP or thread) zeroes them
    client.post("/_sim/reset")
    assert client.get("/_sim/stats").json()["requests"] == 0
    client.post(CHAT, json=chat())
    sim.reset_stats()
    assert sim.stats() == {"requests": 0, "by_path": {}, "by_model": {}, "by_status": {},
                           "quota_rejected": {}, "batch_requests": 0, "batch_by_model": {}}


def test_config_over_http(sim: SimulatorThread, client: httpx.Client) -> None:
    # Given the control routes
    # When a valid change, an unknown field and a bad value are posted
    ok = client.post("/_sim/config", json={"error_rate": 0.25, "fail_models": {"x": 503}})
    unknown = client.post("/_sim/config", json={"latency": 5})
    bad = client.post("/_sim/config", json={"error_rate": 2})
    # Then the valid change applies (to the thread's config too); the others are 400
    assert ok.status_code == 200
    assert ok.json()["error_rate"] == 0.25
    assert sim.config.fail_models == {"x": 503}
    assert client.get("/_sim/config").json() == sim.config.to_dict()
    assert unknown.status_code == 400
    assert "latency" in unknown.json()["error"]
    assert bad.status_code == 400
    assert sim.config.error_rate == 0.25


def test_config_update_validates_names() -> None:
    # Given a config; When an unknown field is set; Then ValueError names it
    config = SimulatorConfig()
    with pytest.raises(ValueError, match="nope"):
        config.update(latency_ms=1, nope=2)
    # And nothing was half-applied
    assert config.latency_ms == 50.0


def test_configure_on_running_thread_rejects_unknown(sim: SimulatorThread) -> None:
    # Given a running simulator; When configure gets an unknown field; Then ValueError
    with pytest.raises(ValueError, match="bogus"):
        sim.configure(bogus=1)
    assert sim.openai_base_url == sim.base_url + "/v1"


STREAM_FIELDS = {"malformed_rate": 0.2, "first_token_ms": 150.0, "token_ms": 20.0,
                 "stream_failure_rate": 0.1}


def test_new_fields_over_http(sim: SimulatorThread, client: httpx.Client) -> None:
    # Given the JSON and streaming knobs
    # When they are posted, then bad values for each
    ok = client.post("/_sim/config", json=STREAM_FIELDS)
    bad = [client.post("/_sim/config", json={name: value})
           for name, value in [("malformed_rate", 1.5), ("stream_failure_rate", -0.1),
                               ("token_ms", "fast"), ("first_token_ms", True)]]
    # Then the valid ones apply (to the thread's config too); the others are 400
    assert ok.status_code == 200
    assert {k: ok.json()[k] for k in STREAM_FIELDS} == STREAM_FIELDS
    assert sim.config.token_ms == 20.0
    assert [r.status_code for r in bad] == [400] * 4
    assert {k: getattr(sim.config, k) for k in STREAM_FIELDS} == STREAM_FIELDS


def test_cli_flags_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the simulator command, its server replaced by a recorder
    from click.testing import CliRunner

    import workers.devstack.simulator as package
    from workers.cli.fleet import simulator

    served: list[SimulatorConfig] = []
    monkeypatch.setattr(package, "run_simulator",
                        lambda host, port, config: served.append(config))
    # When it runs with the new flags, then with an out-of-range rate
    args = ["--malformed-rate", "0.2", "--first-token-ms", "150", "--token-ms", "20",
            "--stream-failure-rate", "0.1"]
    result = CliRunner().invoke(simulator, args)
    refused = CliRunner().invoke(simulator, ["--malformed-rate", "2"])
    # Then the config carries them, and the bad rate is refused
    assert result.exit_code == 0, result.output
    assert {k: getattr(served[0], k) for k in STREAM_FIELDS} == STREAM_FIELDS
    assert refused.exit_code == 2 and "--malformed-rate" in refused.output
