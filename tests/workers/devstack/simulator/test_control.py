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
    }
    assert over_http == expected
    assert sim.stats() == expected
    # And a reset (HTTP or thread) zeroes them
    client.post("/_sim/reset")
    assert client.get("/_sim/stats").json()["requests"] == 0
    client.post(CHAT, json=chat())
    sim.reset_stats()
    assert sim.stats() == {"requests": 0, "by_path": {}, "by_model": {}, "by_status": {}}


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
