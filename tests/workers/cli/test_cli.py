"""The command line as a user runs it: help everywhere, the demo end to end, submit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from schemas import load_fleet_config
from workers.cli import cli
from workers.providers import missing_keys

COMMANDS = ["demo", "up", "worker", "beat", "simulator", "submit", "down"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_itself(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output and len(result.output.splitlines()) > 4


def test_an_unknown_tier_is_refused_naming_the_option(tmp_path: Path) -> None:
    env = {"LLMFLEET_DATA_DIR": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:1/0"}
    result = CliRunner().invoke(cli, ["worker", "--tiers", "simple,huge"], env=env)
    assert result.exit_code == 2
    assert "--tiers" in result.output and "huge" in result.output


def test_missing_keys_are_reported_only_for_providers_in_use() -> None:
    fleet = load_fleet_config()
    assert missing_keys(fleet, ["embeddings"], {}) == {"openai": "OPENAI_API_KEY"}
    assert missing_keys(fleet, ["simple"], {"ANTHROPIC_API_KEY": "k"}) == {
        "openrouter": "OPENROUTER_API_KEY"}


def test_a_broken_fleet_file_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text('[providers.p]\nkind = "openai"\nbase_url = "http://x"\n'
                    '[models.m]\nprovider = "p"\ncontext_window = 10\n'
                    '[tiers.simple]\nmodels = ["m"]\n')
    env = {**os.environ, "LLMFLEET_CONFIG": str(path)}
    done = subprocess.run([sys.executable, "-m", "workers.cli", "submit", "hi"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "models.m.input_per_mtok" in done.stderr


def test_the_demo_runs_the_whole_fleet_and_stops_it(tmp_path: Path) -> None:
    # Given a fresh data directory and no servers or keys in the environment
    env = {k: v for k, v in os.environ.items() if k not in (
        "REDIS_URL", "DATABASE_URL", "OPENROUTER_API_KEY", "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY", "LLMFLEET_SIMULATOR_URL")}
    env["LLMFLEET_DATA_DIR"] = str(tmp_path)
    # When the demo runs
    done = subprocess.run([sys.executable, "-m", "workers.cli", "demo", "--jobs", "60",
                           "--latency-ms", "20"], env=env, capture_output=True, text=True,
                          timeout=240)
    # Then it answers its jobs, prints the summary and leaves nothing running
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "simulator stands in" in out
    assert "Jobs per tier" in out and "60 of 60 jobs answered" in out
    assert "Provider calls seen by the simulator" in out
    # And the coder's prompt came from its template, in an experiment with a report
    assert "template 'coder_task'" in out and "Experiment coder_prompt_demo-" in out
    assert re.search(r"terse\W+\d+\W+\d+", out) and re.search(r"detailed\W+\d+\W+\d+", out)
    assert re.search(r"p = [\d.e-]+, (winner: \w+|no winner yet)", out), out[-3000:]
    # And an agent ran a loop with both of its tools, then streamed an answer
    assert re.search(r"multiply\W+\{\"a\":3\.0,\"b\":0\.5\}\W+1\.5", out), out[-3000:]
    assert "search_docs" in out and "id: retries" in out
    assert re.search(r"The run's cost: \$0\.\d+ over 2 jobs", out)
    assert re.search(r"Streamed answer: \d+ chunks, first after \d+ ms", out)
    assert not (tmp_path / "stack.json").exists()
