"""Experiments: sticky weighted assignment, and an experiment run end to end through a
real worker, Redis and Postgres (the report's statistics:
``tests/workers/store/test_statistics.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
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
from tests.conftest import client_with_worker, wait_until
from workers.cli.experiments import experiments_group
from workers.store.engines import sync_engine

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


# -- end to end ---------------------------------------------------------------


@pytest.fixture(scope="module")
def client(fleet_env: dict[str, str], fleet: FleetConfig,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetClient]:
    logs: Path = tmp_path_factory.mktemp("experiment-logs")
    with client_with_worker(fleet_env, fleet, "simple", "w-experiments", logs / "w.log",
                            agent="experimenter") as client:
        yield client


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
    # hold the flush lock for its 10 s lease)
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
    # (the split of users between variants follows the experiment's random name, so
    # whether 9 successes in 20 differ significantly between them varies by run)
    assert report["p_value"] is not None
    assert (report["winner"] is None) == (report["p_value"] >= report["alpha"])
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


def ledger_by_variant(database_url: str, name: str) -> dict[str, tuple[int, float, float]]:
    """Per variant, straight from SQL: jobs, mean cost, p50 latency."""
    query = text("""
        SELECT metadata->>'variant', count(*), avg(cost_usd),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms)
        FROM job_ledger WHERE metadata->>'experiment' = :e GROUP BY 1""")
    with sync_engine(database_url).connect() as conn:
        return {v: (n, float(cost), float(p50))
                for v, n, cost, p50 in conn.execute(query, {"e": name})}


def outcomes_of(database_url: str, name: str) -> dict[str, tuple[bool | None, float | None]]:
    query = text("SELECT job_id, success, score FROM experiment_outcomes WHERE experiment = :e")
    with sync_engine(database_url).connect() as conn:
        return {j: (s, sc) for j, s, sc in conn.execute(query, {"e": name})}


def test_an_evaluator_records_outcomes_without_feedback(
        client: FleetClient, database_url: str, sim: Any) -> None:
    # Given two template versions, one asking for far more (the simulator's answers
    # echo the prompt, then run to a length drawn from its hash), and an experiment
    # whose evaluator calls an answer a success when it is longer than 150 characters
    template, name = f"eval_t_{uuid.uuid4().hex[:6]}", f"eval_{uuid.uuid4().hex[:6]}"
    client.templates.put(template, "Name {{ thing }}")
    client.templates.put(template, "Describe {{ thing }} in detail: its inputs and outputs, "
                                   "its errors and their messages, the edge cases of each "
                                   "input, and the tests that show it works, step by step, "
                                   "with an example of each")
    client.experiments.create(
        name, unit="job", primary_metric="success_rate",
        evaluator={"kind": "min_length", "chars": 150},
        variants=[{"name": "terse", "template": template, "version": 1},
                  {"name": "wordy", "template": template, "version": 2}])
    client.experiments.start(name)
    # When 80 jobs run, and the same request is made again (a cache hit at submit)
    handles = [client.submit(experiment=name, variables={"thing": f"parser {i}"},
                             tier="simple", max_tokens=64) for i in range(80)]
    results = [h.get(timeout=30) for h in handles]
    for _ in range(20):  # until the job draws the variant that answered it before
        again = client.submit(experiment=name, variables={"thing": "parser 0"},
                              tier="simple", max_tokens=64).get(timeout=30)
        results.append(again)
        if again.cache_hit:
            break
    assert results[-1].cache_hit
    # Then each result names its experiment, variant, template and version
    for result in results:
        assert result.experiment == name and result.variant in ("terse", "wordy")
        assert result.template == template
        assert result.template_version == {"terse": 1, "wordy": 2}[result.variant]
    # And every job got an outcome from the evaluator, judged on its own answer
    wait_until(lambda: len(outcomes_of(database_url, name)) == len(results), timeout=60)
    outcomes = outcomes_of(database_url, name)
    for result in results:
        success, score = outcomes[result.job_id]
        assert score == len(result.content.strip())
        assert success is (len(result.content.strip()) > 150)
    # And an agent's feedback replaces an automatic outcome, never adds one
    client.feedback(results[0].job_id, success=not outcomes[results[0].job_id][0])
    report = client.experiments.report(name)
    assert sum(v["outcomes"] for v in report["variants"]) == len(results)
    # And the report's figures equal the same computed by SQL over the ledger
    by_sql = ledger_by_variant(database_url, name)
    for variant in report["variants"]:
        jobs, mean_cost, p50 = by_sql[variant["name"]]
        assert variant["jobs"] == jobs
        assert variant["mean_cost_usd"] == pytest.approx(mean_cost)
        assert variant["latency_p50_ms"] == pytest.approx(p50)
    # And the longer prompt's longer answers win
    assert report["winner"] == "wordy", report


def test_the_cli_creates_lists_and_declares_from_the_fleet_file(
        database_url: str, redis_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import resources

    declared = f"file_{uuid.uuid4().hex[:6]}"
    fleet_file = tmp_path / "fleet.toml"
    fleet_file.write_text(resources.files("schemas").joinpath("default_fleet.toml").read_text()
                          + f"""
[[experiments]]
name = "{declared}"
unit = "agent"
evaluator = {{ kind = "json" }}
variants = [{{ name = "mini", tier = "simple" }}, {{ name = "big", tier = "medium" }}]
""")
    for key, value in {"DATABASE_URL": database_url, "REDIS_URL": redis_url,
                       "LLMFLEET_CONFIG": str(fleet_file)}.items():
        monkeypatch.setenv(key, value)
    runner = CliRunner()
    made = f"cli_{uuid.uuid4().hex[:6]}"
    # When one is created on the command line, and another's evaluator is wrong
    out = runner.invoke(experiments_group, [
        "create", made, "--variant", "name=a,tier=simple", "--variant",
        "name=b,tier=medium,weight=2", "--evaluator", "kind=regex,pattern=^OK", "--start"])
    assert out.exit_code == 0, out.output
    with_commas = runner.invoke(experiments_group, [
        "create", f"{made}_json", "--variant", "name=a,tier=simple", "--variant",
        '{"name": "b", "tier": "medium"}', "--evaluator",
        '{"kind": "regex", "pattern": "\\\\d{1,3}"}'])
    assert with_commas.exit_code == 0, with_commas.output
    bad = runner.invoke(experiments_group, [
        "create", f"bad_{made}", "--variant", "name=a", "--variant", "name=b",
        "--evaluator", "kind=min_length"])
    assert bad.exit_code != 0 and "chars" in bad.output
    # Then the list holds both it and the fleet file's experiment, as declared
    listed = runner.invoke(experiments_group, ["list", "--json"])
    assert listed.exit_code == 0, listed.output
    by_name = {e["name"]: e for e in json.loads(listed.output)}
    assert by_name[made]["status"] == "running"
    assert by_name[made]["variants"][1] == {"name": "b", "tier": "medium", "weight": 2}
    assert by_name[made]["evaluator"] == {"kind": "regex", "pattern": "^OK"}
    assert by_name[declared]["status"] == "running" and by_name[declared]["unit"] == "agent"
    assert by_name[declared]["evaluator"] == {"kind": "json"}
    assert f"bad_{made}" not in by_name
    assert by_name[f"{made}_json"]["evaluator"] == {"kind": "regex", "pattern": "\\d{1,3}"}
