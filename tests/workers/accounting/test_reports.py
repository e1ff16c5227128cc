"""Reports and their CLI commands against the real Postgres and Redis of the session.

Rows go in under unique agent names, in years only this module writes (2041-2046).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import Engine, insert

from schemas import FleetConfig, load_fleet_config, parse_fleet_config, parse_since
from schemas.tables import metrics_rollup
from tests.workers.accounting.conftest import add, row
from workers.accounting.budgets import budget_key, period_of
from workers.accounting.reports import agent_stats, budgets_state
from workers.accounting.reports import costs as cost_report
from workers.accounting.reports import stats as stats_report
from workers.cli.reports import REPORT_COMMANDS, budgets, costs, stats

UTC = dt.UTC


def mine(rows: list[dict[str, Any]], key: str, tag: str) -> list[dict[str, Any]]:
    return [r for r in rows if str(r[key]).startswith(tag)]


def test_costs_group_by_agent_model_and_day(engine: Engine, tag: str) -> None:
    # Given two agents' jobs over two days
    day = dt.datetime(2041, 3, 1, 10, tzinfo=UTC)
    add(engine, row(f"{tag}-a", day, 1.0, model="m-big", user_id=f"{tag}-u"),
        row(f"{tag}-a", day + dt.timedelta(days=1), 2.0, cache_hit=True, cost_saved_usd=0.5),
        row(f"{tag}-b", day, 4.0, prompt_tokens=100, completion_tokens=50))
    since = dt.datetime(2041, 3, 1, tzinfo=UTC)
    # Then per agent, dearest first, with tokens, cache hits and savings
    by_agent = mine(cost_report(engine, since, "agent"), "agent", tag)
    assert [(r["agent"], r["jobs"], r["cost_usd"]) for r in by_agent] == [
        (f"{tag}-b", 1, 4.0), (f"{tag}-a", 2, 3.0)]
    assert by_agent[1]["cache_hits"] == 1 and by_agent[1]["cost_saved_usd"] == 0.5
    assert by_agent[0]["tokens"] == 150
    # And per model, and per user (no user is "")
    models = {r["model"]: r["cost_usd"] for r in cost_report(engine, since, "model")}
    assert models["m-big"] >= 1.0
    users = mine(cost_report(engine, since, "user"), "user", tag)
    assert users == [{"user": f"{tag}-u", "jobs": 1, "cost_usd": 1.0, "prompt_tokens": 10,
                      "completion_tokens": 5, "cache_hits": 0, "cost_saved_usd": 0.0,
                      "tokens": 15}]
    # And per day, in order
    days = [r for r in cost_report(engine, since, "day") if r["day"] < "2041-03-03"]
    assert [(r["day"], r["cost_usd"]) for r in days] == [("2041-03-01", 5.0),
                                                        ("2041-03-02", 2.0)]


def test_costs_reach_past_the_retention_through_rollups(engine: Engine, tag: str) -> None:
    # Given a day the ledger purged, kept in the daily roll-ups, and recent ledger rows
    now = dt.datetime(2042, 6, 30, 12, tzinfo=UTC)
    with engine.begin() as connection:
        connection.execute(insert(metrics_rollup), [{
            "granularity": "day", "bucket_start": dt.datetime(2042, 5, 10, tzinfo=UTC),
            "model": "m-small", "agent": tag, "tier": "simple", "jobs": 7, "errors": 0,
            "cache_hits": 2, "prompt_tokens": 70, "completion_tokens": 35, "cost_usd": 3.5,
            "cost_saved_usd": 0.25}])
    # (a ledger row of the rolled-up day, not yet purged, must not count twice)
    add(engine, row(tag, dt.datetime(2042, 5, 10, 9, tzinfo=UTC), 3.5),
        row(tag, dt.datetime(2042, 6, 10, tzinfo=UTC), 1.0))
    since = dt.datetime(2042, 5, 1, tzinfo=UTC)
    # When costs are asked for 60 days with a 30-day retention
    (total,) = mine(cost_report(engine, since, "agent", retention_days=30, now=now),
                    "agent", tag)
    # Then the purged day comes from the roll-ups, the rest from the ledger
    assert (total["jobs"], total["cost_usd"], total["cache_hits"]) == (8, 4.5, 2)
    assert total["tokens"] == 105 + 15
    # And without the retention, everything comes from the ledger
    (ledger_only,) = mine(cost_report(engine, since, "agent"), "agent", tag)
    assert (ledger_only["jobs"], ledger_only["cost_usd"]) == (2, 4.5)


def test_stats_fleet_wide_and_per_tier(engine: Engine, tag: str) -> None:
    # Given the only jobs of 2046: eleven answered, two failed, one rejected
    at = dt.datetime(2046, 1, 2, 3, tzinfo=UTC)
    latencies = [float(10 * i) for i in range(1, 12)]
    add(engine, *[row(tag, at, 0.5, latency_ms=ms, cache_hit=i < 3, cost_saved_usd=0.1)
                  for i, ms in enumerate(latencies)],
        row(tag, at, tier="complex", status="failed", latency_ms=200.0),
        row(tag, at, tier="complex", status="failed", latency_ms=400.0),
        row(tag, at, tier=None, model=None, status="rejected", latency_ms=0.0))
    # When stats are asked since then
    s = stats_report(engine, dt.datetime(2046, 1, 1, tzinfo=UTC))
    # Then the totals, rates and percentiles (rejected jobs never waited) add up
    assert (s["jobs"], s["errors"], s["cache_hits"]) == (14, 3, 3)
    assert s["by_status"] == {"failed": 2, "rejected": 1, "succeeded": 11}
    assert s["error_rate"] == 3 / 14 and s["cache_hit_rate"] == 3 / 14
    assert s["cost_usd"] == 5.5 and abs(s["cost_saved_usd"] - 1.1) < 1e-9
    assert s["latency_p50_ms"] == 70.0  # median of 10..110, 200 and 400
    tiers = {t["tier"]: t for t in s["per_tier"]}
    assert sorted(tiers) == ["", "complex", "simple"]
    assert tiers["complex"]["jobs"] == 2 and tiers["complex"]["error_rate"] == 1.0
    assert tiers["simple"]["latency_p50_ms"] == 60.0
    assert tiers[""]["latency_p50_ms"] is None


def test_stats_of_nothing(engine: Engine) -> None:
    s = stats_report(engine, dt.datetime(2099, 1, 1, tzinfo=UTC))
    assert (s["jobs"], s["error_rate"], s["latency_p95_ms"], s["per_tier"]) == (0, 0.0, None,
                                                                                [])


def test_agent_stats(engine: Engine, tag: str) -> None:
    at = dt.datetime(2043, 2, 2, tzinfo=UTC)
    add(engine, row(tag, at, 0.0, cache_hit=True, cost_saved_usd=1.25),
        row(tag, at, 0.75, status="failed"), row(tag, at - dt.timedelta(days=30), 10.0))
    assert agent_stats(engine, tag, since=at - dt.timedelta(days=1)) == {
        "agent": tag, "jobs": 2, "total_cost_usd": 0.75, "cache_hits": 1,
        "cache_hit_rate": 0.5, "cost_saved_usd": 1.25, "tokens_saved": 15,
        "prompt_tokens": 20, "completion_tokens": 10, "errors": 1}
    assert agent_stats(engine, tag)["jobs"] == 3
    assert agent_stats(engine, f"{tag}-nobody")["cache_hit_rate"] == 0.0


def _fleet(*budgets: dict[str, Any]) -> FleetConfig:
    data = load_fleet_config().model_dump()
    data["budgets"] = list(budgets)
    return parse_fleet_config(data)


def test_budgets_state_adds_live_reservations(engine: Engine, client: redis.Redis,
                                             tag: str) -> None:
    # Given a budget at 85% of its limit with one live and one expired reservation
    now = dt.datetime(2044, 4, 4, 12, tzinfo=UTC)
    fleet = _fleet({"name": tag, "limit_usd": 10.0, "scope": f"agent:{tag}"})
    add(engine, row(tag, now, 8.5))
    live, gone = int(now.timestamp()) + 60, int(now.timestamp()) - 60
    key = budget_key(fleet.budgets[0], period_of(fleet.budgets[0], now, "UTC"))
    client.hset(key, mapping={"spent": 1, "r:a": f"500000000:{live}", "r:b": f"7:{gone}"})
    # Then spent comes from the ledger, reserved from the live reservation
    (state,) = budgets_state(engine, client, fleet, now)
    assert state == {
        "name": tag, "period": "daily", "scope": f"agent:{tag}",
        "period_start": "2044-04-04T00:00:00+00:00", "period_end": "2044-04-05T00:00:00+00:00",
        "spent_usd": 8.5, "reserved_usd": 0.5, "limit_usd": 10.0, "share": 0.85,
        "alert_threshold": 0.8, "action": "reject", "state": "alert"}


# -- the CLI ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(services: tuple[str, str | None]) -> dict[str, str]:
    redis_url, database_url = services
    assert database_url is not None
    return {"REDIS_URL": redis_url, "DATABASE_URL": database_url, "DAILY_BUDGET_LIMIT": "1000",
            "LLMFLEET_CONFIG": ""}


def test_the_commands_are_listed_for_the_cli() -> None:
    assert [c.name for c in REPORT_COMMANDS] == ["costs", "budgets", "stats"]


def test_costs_command_prints_json_and_a_table(engine: Engine, tag: str,
                                               env: dict[str, str]) -> None:
    add(engine, row(tag, dt.datetime(2045, 5, 5, tzinfo=UTC), 2.5))
    result = CliRunner().invoke(costs, ["--since", "2045-05-01", "--by", "agent", "--json"],
                                env=env)
    assert result.exit_code == 0, result.output
    assert mine(json.loads(result.output), "agent", tag)[0]["cost_usd"] == 2.5
    table = CliRunner().invoke(costs, ["--since", "2045-05-01", "--by", "agent"], env=env)
    assert table.exit_code == 0 and tag in table.output and "$2.50" in table.output


def test_a_bad_since_names_the_option(env: dict[str, str]) -> None:
    result = CliRunner().invoke(stats, ["--since", "last tuesday"], env=env)
    assert result.exit_code == 2 and "--since" in result.output


def test_budgets_and_stats_commands(env: dict[str, str]) -> None:
    listed = CliRunner().invoke(budgets, ["--json"], env=env)
    assert listed.exit_code == 0, listed.output
    daily = next(b for b in json.loads(listed.output) if b["name"] == "daily_limit")
    assert daily["limit_usd"] == 1000.0 and daily["state"] in ("ok", "alert", "exceeded")
    assert "daily_limit" in CliRunner().invoke(budgets, [], env=env).output
    shown = CliRunner().invoke(stats, ["--since", "24h", "--json"], env=env)
    assert shown.exit_code == 0 and "per_tier" in json.loads(shown.output)
    table = CliRunner().invoke(stats, ["--since", "2099-01-01"], env=env)
    assert table.exit_code == 0 and "no jobs" in table.output


def test_parse_since() -> None:
    now = dt.datetime(2030, 1, 31, 12, tzinfo=UTC)
    assert parse_since("24h", now) == now - dt.timedelta(hours=24)
    assert parse_since("7d", now) == dt.datetime(2030, 1, 24, 12, tzinfo=UTC)
    assert parse_since("2030-01-01", now) == dt.datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_since("2030-01-01T05:00:00-05:00", now).hour == 5
    with pytest.raises(ValueError):
        parse_since("7 days", now)


def test_a_server_that_does_not_answer_is_one_line_not_a_traceback(
        env: dict[str, str]) -> None:
    # Given Redis named at a port where nothing listens (with a password in its URL)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = {**env, "REDIS_URL": f"redis://:hunter2@127.0.0.1:{port}/0"}
    # When budgets are asked for
    result = CliRunner().invoke(budgets, [], env=down)
    # Then the command says which server and what to do, and shows no secret
    assert result.exit_code == 1 and "Redis does not answer" in result.output
    assert "Traceback" not in result.output and "hunter2" not in result.output
