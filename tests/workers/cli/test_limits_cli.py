"""``llmfleet limits`` and the limits of ``llmfleet keys``, against the session's Redis
and Postgres: what each says, and the options it refuses."""

from __future__ import annotations

import asyncio
import json
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

from schemas.keys import LIMIT_RATE
from workers.admission.limiter import Rate, RateLimiter
from workers.cli import cli

MODEL = "openai/gpt-4o-mini"


@pytest.fixture(scope="module")
def limited_env(fleet_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[dict[str, str], str]:
    """The session's servers and a fleet file with a limit of its own (its name) and a
    tokens-per-minute quota on one model."""
    name = f"cli-{uuid.uuid4().hex[:8]}"
    base = resources.files("schemas").joinpath("default_fleet.toml").read_text()
    header = f'[models."{MODEL}"]\n'
    assert header in base
    text = base.replace(header, header + "tpm = 90000\n") + f"""
[[limits]]
name = "{name}"
scope = "agent:cli-limited"
rpm = 10
concurrency = 3
mode = "queue"
"""
    path = tmp_path_factory.mktemp("limits-fleet") / "fleet.toml"
    path.write_text(text)
    return {**fleet_env, "LLMFLEET_CONFIG": str(path)}, name


def invoke(args: list[str], env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, args, env=env)


def test_limits_explains_itself() -> None:
    done = invoke(["limits", "--help"])
    assert done.exit_code == 0
    for word in ("used", "rejected", "delayed", "key-<key id>", "--json", "[[limits]]"):
        assert word in done.output, word


@pytest.mark.parametrize(("args", "option"), [
    (["--rpm", "0"], "--rpm"),
    (["--tpm", "many"], "--tpm"),
    (["--concurrency", "-1"], "--concurrency"),
    (["--limit-mode", "drop", "--rpm", "5"], "--limit-mode"),
    (["--limit-mode", "queue"], "--limit-mode"),  # a mode with no limit to apply it to
    (["--priority", "urgent"], "--priority"),
])
def test_keys_create_refuses_a_bad_limit_naming_the_option(args: list[str],
                                                           option: str) -> None:
    done = invoke(["keys", "create", "--agent", "cli-agent", *args])
    assert done.exit_code == 2, done.output
    assert option in done.output


def test_a_keys_limits_and_priority_are_kept_listed_and_reported(
        limited_env: tuple[dict[str, str], str]) -> None:
    env, _ = limited_env
    # When a key is made with limits of its own and a priority
    made = invoke(["keys", "create", "--agent", "cli-limited", "--rpm", "5", "--tpm", "1000",
                   "--concurrency", "2", "--limit-mode", "queue", "--priority", "high",
                   "--json"], env)
    assert made.exit_code == 0, made.output
    created = json.loads(made.stdout)
    key_id = created["key_id"]
    assert {k: created[k] for k in ("rpm", "tpm", "concurrency", "limit_mode", "priority")} \
        == {"rpm": 5, "tpm": 1000, "concurrency": 2, "limit_mode": "queue", "priority": "high"}
    # Then the list shows them, as JSON and as text
    listed = {r["key_id"]: r for r in json.loads(invoke(["keys", "list", "--json"], env).stdout)}
    assert {k: listed[key_id][k] for k in ("rpm", "tpm", "concurrency", "limit_mode",
                                           "priority")} == {
        "rpm": 5, "tpm": 1000, "concurrency": 2, "limit_mode": "queue", "priority": "high"}
    line = next(x for x in invoke(["keys", "list"], env).stdout.splitlines()
                if x.startswith(key_id))
    assert "limits=5 rpm, 1000 tpm, 2 in flight (queue)" in line and "priority=high" in line
    # And `llmfleet limits` reports the key's own limit, unused yet
    report = json.loads(invoke(["limits", "--json"], env).stdout)
    own = {r["kind"]: (r["limit"], r["used"], r["mode"], r["scope"], r["source"])
           for r in report["limits"] if r["name"] == f"key-{key_id}"}
    scope = f"key:{key_id}"
    assert own == {"rpm": (5, 0, "queue", scope, "key"), "tpm": (1000, 0, "queue", scope, "key"),
                   "concurrency": (2, 0, "queue", scope, "key")}
    # And a key made without limits has none
    plain = json.loads(invoke(["keys", "create", "--agent", "cli-plain", "--json"], env).stdout)
    assert (plain["rpm"], plain["limit_mode"], plain["priority"]) == (None, "reject", "normal")


def test_limits_reports_the_fleet_files_limits_and_quotas(
        limited_env: tuple[dict[str, str], str], redis_url: str) -> None:
    env, name = limited_env
    # Given one request admitted under the fleet file's limit
    rate = Rate(name, "rpm", LIMIT_RATE.format(name=name, kind="rpm"), 10, 1, 60_000, "queue")

    async def admit_one() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            decision = await RateLimiter(client).admit([rate], [], uuid.uuid4().hex,
                                                       horizon_s=0, lease_s=60)
            assert decision.status == "admitted"
        finally:
            await client.aclose()

    asyncio.run(admit_one())
    # When the limits are asked for, as JSON
    done = invoke(["limits", "--json"], env)
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    rows = {(r["name"], r["kind"]): r for r in report["limits"]}
    # Then the limit shows its use per kind, and the model's quota its size
    assert (rows[name, "rpm"]["used"], rows[name, "rpm"]["limit"]) == (1, 10)
    assert (rows[name, "concurrency"]["used"], rows[name, "concurrency"]["limit"]) == (0, 3)
    assert rows[name, "rpm"]["scope"] == "agent:cli-limited"
    assert rows[name, "rpm"]["mode"] == "queue"
    quota = rows[f"model:{MODEL}", "tpm"]
    assert (quota["limit"], quota["mode"], quota["source"]) == (90000, "queue", "quota")
    assert isinstance(report["parked_jobs"], int) and "generated_at" in report
    # And as a table, a line per limit with its use of each kind
    table = invoke(["limits"], env)
    assert table.exit_code == 0, table.output
    line = next(x for x in table.stdout.splitlines() if name in x)
    assert line.split()[1:5] == ["queue", "1/10", "-", "0/3"]
    assert "0/90,000" in table.stdout and "parked" in table.stdout


def test_limits_says_so_when_redis_is_away(tmp_path: Path,
                                           limited_env: tuple[dict[str, str], str]) -> None:
    env, _ = limited_env
    done = invoke(["limits"], {**env, "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert done.exit_code != 0
    assert "Redis does not answer" in done.output


def test_a_keys_default_deadline_is_kept_and_listed(
        limited_env: tuple[dict[str, str], str]) -> None:
    env, _ = limited_env
    assert invoke(["keys", "create", "--agent", "cli-deadline", "--deadline", "soon"],
                  env).exit_code == 2
    made = invoke(["keys", "create", "--agent", "cli-deadline", "--deadline", "2h", "--json"],
                  env)
    assert made.exit_code == 0, made.output
    key_id = json.loads(made.stdout)["key_id"]
    listed = {r["key_id"]: r for r in json.loads(invoke(["keys", "list", "--json"], env).stdout)}
    assert listed[key_id]["deadline_s"] == 7200
    line = next(x for x in invoke(["keys", "list"], env).stdout.splitlines()
                if x.startswith(key_id))
    assert "deadline=" in line
