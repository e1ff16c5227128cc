"""Experiments: sticky weighted assignment, the report's statistics (simulated), and an
experiment run end to end through a real worker, Redis and Postgres."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from schemas import ExperimentError, FleetConfig, UnknownJobError
from tasks import FleetClient
from tasks.experiments import assign
from tests.conftest import start_worker, stop_process, wait_until
from workers.cli_experiments import experiments_group
from workers.db import sync_engine
from workers.experiment_stats import Arm, decide, wilson_interval

WEIGHTED = [{"name": "a", "weight": 1}, {"name": "b", "weight": 3}, {"name": "c", "weight": 2}]

# -- assignment ---------------------------------------------------------------


def test_assignment_follows_the_weights() -> None:
    # Given variants weighted 1:3:2
    # When 10,000 users are assigned
    counts = Counter(assign("weights", f"user-{i}", WEIGHTED) for i in range(10_000))
    # Then each share is within 2 points of its weight
    for variant, share in {"a": 1 / 6, "b": 3 / 6, "c": 2 / 6}.items():
        assert abs(counts[variant] / 10_000 - share) < 0.02, counts


def test_assignment_is_sticky_across_processes() -> None:
    # Given the assignments of 1,000 users in this process
    here = [assign("sticky", f"u{i}", WEIGHTED) for i in range(1000)]
    # When another Python process (another hash seed) assigns the same users
    code = ("import json; from tasks.experiments import assign; "
            f"v = {WEIGHTED!r}; "
            "print(json.dumps([assign('sticky', f'u{i}', v) for i in range(1000)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "12345", "PATH": ""}, cwd=".")
    # Then every user lands in the same variant, and another experiment shuffles them
    assert json.loads(out.stdout) == here
    assert [assign("other", f"u{i}", WEIGHTED) for i in range(1000)] != here


# -- statistics (the function the report calls) ------------------------------


def simulate(rng: random.Random, name: str, n: int, rate: float) -> Arm:
    return Arm(name, n, sum(rng.random() < rate for _ in range(n)))


def test_a_real_difference_in_rates_is_found() -> None:
    # Given 2,000 outcomes each at 60% and 50% success
    rng = random.Random(7)
    arms = [simulate(rng, "control", 2000, 0.50), simulate(rng, "better", 2000, 0.60)]
    # When the report's decision is made
    decision = decide(arms, "success_rate", alpha=0.05)
    # Then it is significant and names the better variant
    assert decision["significant"] and decision["winner"] == "better"
    assert decision["p_value"] < 1e-6 and decision["needed_per_variant"] is None


def test_equal_variants_rarely_get_a_winner() -> None:
    # Given 200 simulated experiments whose two variants are the same (55%)
    rng = random.Random(11)
    winners = 0
    for _ in range(200):
        arms = [simulate(rng, "a", 500, 0.55), simulate(rng, "b", 500, 0.55)]
        # When each is decided at alpha 0.05
        winners += decide(arms, "success_rate", alpha=0.05)["winner"] is not None
    # Then a winner is called in at most 10% of them (about 5% expected)
    assert winners <= 20, winners


def test_scores_use_welch_and_say_how_many_more_are_needed() -> None:
    # Given clearly different scores, and barely different ones
    rng = random.Random(3)
    far = [Arm("low", 0, scores=[rng.gauss(0.5, 0.2) for _ in range(300)]),
           Arm("high", 0, scores=[rng.gauss(0.6, 0.3) for _ in range(300)])]
    near = [Arm("x", 0, scores=[rng.gauss(0.50, 0.2) for _ in range(30)]),
            Arm("y", 0, scores=[rng.gauss(0.52, 0.2) for _ in range(30)])]
    # When decided
    found, unclear = decide(far, "score", 0.05), decide(near, "score", 0.05)
    # Then the first names its winner, the second asks for more outcomes
    assert found["winner"] == "high"
    assert unclear["winner"] is None and unclear["needed_per_variant"] > 30


def test_the_wilson_interval_stays_inside_zero_and_one() -> None:
    low, high = wilson_interval(0, 10) or (None, None)
    assert low == 0.0 and 0.2 < high < 0.35
    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(500, 1000) or (0, 0)
    assert 0.46 < low < 0.5 < high < 0.54


# -- end to end ---------------------------------------------------------------


@pytest.fixture(scope="module")
def client(fleet_env: dict[str, str], fleet: FleetConfig, redis_url: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetClient]:
    logs: Path = tmp_path_factory.mktemp("experiment-logs")
    worker = start_worker(fleet_env, "simple", "w-experiments", logs / "w.log")
    client = FleetClient(redis_url=redis_url, fleet=fleet, agent="experimenter")
    try:
        end = time.monotonic() + 60
        while not client._app.control.ping(timeout=0.5):
            assert worker.poll() is None, "the worker died at start"
            assert time.monotonic() < end, "the worker did not come up"
        yield client
    finally:
        client.close()
        stop_process(worker)


def ledger_metadata(database_url: str, job_id: str) -> Any:
    with sync_engine(database_url).connect() as conn:
        return conn.execute(text("SELECT metadata FROM job_ledger WHERE job_id = :j"),
                            {"j": job_id}).scalar()


def test_an_experiment_runs_from_submit_to_report(
        client: FleetClient, database_url: str, redis_url: str, sim: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a template at two versions and a running experiment over them, by user
    template, name = f"exp_t_{uuid.uuid4().hex[:6]}", f"exp_{uuid.uuid4().hex[:6]}"
    client.templates.put(template, "Write {{ thing }}")
    client.templates.put(template, "Write {{ thing }} with tests")
    client.experiments.create(name, unit="user", primary_metric="success_rate", variants=[
        {"name": "v1", "template": template, "version": 1, "weight": 1},
        {"name": "v2", "template": template, "version": 2, "weight": 1}])
    with pytest.raises(ExperimentError):  # a draft assigns nobody
        client.submit(experiment=name, variables={"thing": "x"}, user="u0", tier="simple")
    client.experiments.start(name)
    # When twenty users submit (one of them twice) and each job gets feedback
    handles = [client.submit(experiment=name, variables={"thing": "a parser"}, user=f"u{i}",
                             tier="simple", max_tokens=16) for i in range(20)]
    again = client.submit(experiment=name, variables={"thing": "a parser"}, user="u3",
                          tier="simple", max_tokens=16)
    results = [h.get(timeout=30) for h in [*handles, again]]
    # (rows reach Postgres through the spool; a worker killed by an earlier test may
    # hold the flush lock for its 30 s lease)
    wait_until(lambda: all(ledger_metadata(database_url, r.job_id) for r in results),
               timeout=60)
    for index, result in enumerate(results[:20]):
        client.feedback(result.job_id, success=index % 2 == 0)
    client.feedback(results[0].job_id, success=False)  # the last word counts
    # Then each ledger row names experiment, variant and the variant's template version
    first = ledger_metadata(database_url, results[3].job_id)
    assert first["experiment"] == name and first["variant"] in ("v1", "v2")
    assert first["template_version"] == int(first["variant"][1])
    assert ledger_metadata(database_url, results[20].job_id)["variant"] == first["variant"]
    # And the report counts every job and one outcome per job
    report = client.experiments.report(name)
    by_name = {v["name"]: v for v in report["variants"]}
    assert sum(v["jobs"] for v in by_name.values()) == 21
    assert sum(v["outcomes"] for v in by_name.values()) == 20
    assert sum(v["successes"] for v in by_name.values()) == 9
    assert report["p_value"] is not None and report["winner"] is None
    # And the CLI prints the same report
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    printed = CliRunner().invoke(experiments_group, ["report", name, "--json"])
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.output)["variants"] == report["variants"]


def test_feedback_for_an_unknown_job_is_a_typed_error(client: FleetClient, sim: Any) -> None:
    # Given a job outside any experiment, and a job id nobody ran
    plain = client.submit([{"role": "user", "content": "hi"}], tier="simple", max_tokens=8)
    plain.get(timeout=30)
    # When feedback names them / Then UnknownJobError
    with pytest.raises(UnknownJobError):
        client.feedback(plain.job_id, success=True)
    with pytest.raises(UnknownJobError) as info:
        client.feedback("f" * 32, success=True)
    assert info.value.job_id == "f" * 32
