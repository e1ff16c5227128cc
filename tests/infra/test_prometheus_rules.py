"""``infra/prometheus-rules.yml``: the thresholds are ``[monitoring]``'s defaults, over
metrics ``/metrics`` serves; and promtool's unit test of its hysteresis
(``prometheus_rules_test.yml``) when promtool is installed (Debian's ``prometheus``)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from schemas import MonitoringConfig

HERE = Path(__file__).parent
RULES = HERE.parents[1] / "infra" / "prometheus-rules.yml"
#: Metrics ``workers.api.metrics`` serves (its families, with their suffixes).
SERVED = {"llmfleet_jobs_total", "llmfleet_cost_usd_total", "llmfleet_job_latency_seconds_sum",
          "llmfleet_job_latency_seconds_count", "llmfleet_job_latency_seconds_bucket",
          "ALERTS"}
#: Each kind's threshold in the rules' unit: latency in seconds.
UNIT = {"error_rate": 1.0, "avg_latency_ms": 1000.0, "cost_per_request": 1.0}


def rules() -> list[dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_alert_states_the_default_thresholds() -> None:
    defaults = MonitoringConfig()
    alerts = [r for r in rules() if "alert" in r]
    assert {(r["labels"]["kind"], r["labels"]["scope"]) for r in alerts} == {  # type: ignore[index]
        ("error_rate", "tier"), ("error_rate", "model"), ("error_rate", "agent"),
        ("avg_latency_ms", "tier"), ("cost_per_request", "tier"),
        ("cost_per_request", "model"), ("cost_per_request", "agent")}
    for rule in alerts:
        kind = rule["labels"]["kind"]  # type: ignore[index]
        threshold = getattr(defaults, kind) / UNIT[kind]
        expr = " ".join(str(rule["expr"]).split())
        assert f"> {threshold:g}" in expr, rule["alert"]
        assert f">= {threshold * defaults.hysteresis:g}" in expr, rule["alert"]
        assert f">= {defaults.min_jobs}" in expr, rule["alert"]


def test_the_rules_read_only_metrics_the_fleet_serves_over_the_window() -> None:
    assert MonitoringConfig().window_s == 5 * 60
    recorded = {str(r["record"]) for r in rules() if "record" in r}
    for rule in rules():
        names = set(re.findall(r"\b(llmfleet[:_][A-Za-z0-9_:]+|ALERTS)\b", str(rule["expr"])))
        assert names <= SERVED | recorded, names - SERVED - recorded
        windows = set(re.findall(r"\[(\w+)\]", str(rule["expr"])))
        assert windows <= {"5m"}, windows


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    for args in (["check", "rules", str(RULES)],
                 ["test", "rules", str(HERE / "prometheus_rules_test.yml")]):
        done = subprocess.run(["promtool", *args], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
