"""``[monitoring]`` in the fleet file, and ENABLE_MONITORING."""

from __future__ import annotations

import tomllib
from importlib import resources
from typing import Any

import pytest

from schemas import ConfigError, MonitoringConfig, Settings, parse_fleet_config


def fleet_data(**monitoring: Any) -> dict[str, Any]:
    text = resources.files("schemas").joinpath("default_fleet.toml").read_text("utf-8")
    data = tomllib.loads(text)
    if monitoring:
        data["monitoring"] = monitoring
    return data


def test_the_defaults_are_the_product_briefs() -> None:
    monitoring = parse_fleet_config(fleet_data()).monitoring
    assert monitoring == MonitoringConfig()
    assert (monitoring.enabled, monitoring.window_s, monitoring.min_jobs,
            monitoring.error_rate, monitoring.avg_latency_ms, monitoring.p95_latency_ms,
            monitoring.cost_per_request, monitoring.hysteresis, monitoring.interval_s) == (
        True, 300.0, 20, 0.02, 8000.0, None, 0.10, 0.8, 60.0)


def test_a_fleet_file_sets_monitoring() -> None:
    fleet = parse_fleet_config(fleet_data(window_s=120, min_jobs=5, error_rate=0.05,
                                          p95_latency_ms=12000, hysteresis=0.5,
                                          interval_s=15, enabled=False))
    m = fleet.monitoring
    assert (m.window_s, m.min_jobs, m.error_rate, m.p95_latency_ms, m.hysteresis,
            m.interval_s, m.enabled) == (120, 5, 0.05, 12000, 0.5, 15, False)
    assert m.avg_latency_ms == 8000.0 and m.cost_per_request == 0.10


@pytest.mark.parametrize(("monitoring", "key"), [
    ({"windows": 60}, "monitoring.windows"),
    ({"error_rate": 1.5}, "monitoring.error_rate"),
    ({"hysteresis": 0}, "monitoring.hysteresis"),
    ({"hysteresis": 1.2}, "monitoring.hysteresis"),
    ({"min_jobs": 0}, "monitoring.min_jobs"),
    ({"interval_s": 0}, "monitoring.interval_s"),
])
def test_a_bad_key_stops_start_up_naming_it(monitoring: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_fleet_config(fleet_data(**monitoring))
    assert raised.value.key == key


def test_enable_monitoring_from_the_environment() -> None:
    assert Settings.from_env({}).enable_monitoring is True
    assert Settings.from_env({"ENABLE_MONITORING": "false"}).enable_monitoring is False
    assert Settings.from_env({"ENABLE_MONITORING": "0"}).enable_monitoring is False
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"ENABLE_MONITORING": "maybe"})
    assert raised.value.key == "ENABLE_MONITORING"

