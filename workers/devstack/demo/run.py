"""``llmfleet demo``: the whole fleet, once, on this machine.

Embedded Redis and Postgres (unless the environment names servers), the provider
simulator (unless a provider key is set) with injected failures, a worker per tier,
beat, and three sample agents submitting jobs across the tiers with some repeats; the
coder's prompt comes from a stored template, two versions of it in an A/B experiment;
then RAG over pgvector, an agent with two tools in a loop, and a streamed answer.
Prints a summary and stops everything it started.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import statistics
import time
import uuid
import zlib
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from schemas import CompletionResult, FleetConfig, FleetError, load_config
from tasks import FleetAgent, FleetClient
from workers.devstack.demo.agent_tools import run_tool_agent_demo
from workers.devstack.demo.experiment import prepare_coder_experiment, show_experiment
from workers.devstack.demo.rag import run_rag_demo
from workers.devstack.demo.report import show_accounting, write_demo_fleet_file
from workers.devstack.services import export_service_env, resolve_services
from workers.devstack.supervisor import Supervisor
from workers.store.engines import migrate

__all__ = ["run_demo"]

TOPICS = ["a login form", "a REST endpoint for orders", "a retry decorator", "a CSV parser",
          "a rate limiter", "a React button", "a SQL migration", "a cache layer",
          "a websocket chat", "a CLI for backups", "a pagination helper", "a JWT check"]


class Coder(FleetAgent):
    name, tier = "coder", "complex"
    system_prompt = "You write production code."


class Planner(FleetAgent):
    name, tier = "planner", "medium"
    system_prompt = "You break work into steps."


class Reviewer(FleetAgent):
    name, tier = "reviewer", "simple"
    system_prompt = "You review code for bugs."


@dataclass
class Outcome:
    agent: str
    tier: str
    result: CompletionResult | None
    error: str | None


def _workload(jobs: int, rng: random.Random) -> list[tuple[type[FleetAgent], str]]:
    """Jobs for the three agents; prompts are drawn from small pools, so some repeat."""
    verbs = {Coder: "Write", Planner: "Plan the work for", Reviewer: "Review"}
    agents = [Coder, Planner, Reviewer]
    return [(agent, f"{verbs[agent]} {rng.choice(TOPICS)}.")
            for agent in (rng.choices(agents, weights=[3, 3, 4])[0] for _ in range(jobs))]


def _start_simulator(fleet: FleetConfig, latency_ms: float, stack: ExitStack,
                     console: Console) -> Any:
    from workers.devstack.simulator import SimulatorConfig, SimulatorThread

    primary = fleet.tiers["complex"].models[0] if "complex" in fleet.tiers else None
    failing = {fleet.models[primary].wire_name or primary: 529} if primary else {}
    config = SimulatorConfig(latency_ms=latency_ms, jitter_ms=latency_ms / 5, error_rate=0.05,
                             rate_limit_rate=0.03, retry_after_s=1, fail_models=failing, seed=7,
                             first_token_ms=latency_ms, token_ms=5)
    simulator = stack.enter_context(SimulatorThread(config))
    console.print(f"[yellow]No provider key is set: the bundled provider simulator stands in "
                  f"for providers[/] at {simulator.base_url} ({latency_ms:.0f} ms, 5% server "
                  f"errors, 3% rate limits, {', '.join(failing) or 'no model'} overloaded)")
    return simulator


def _run_agents(client: FleetClient, jobs: int, run_id: str, experiment: str,
                console: Console) -> tuple[list[Outcome], list[FleetAgent]]:
    agents: dict[type[FleetAgent], FleetAgent] = {
        cls: cls(client) for cls in (Coder, Planner, Reviewer)}
    work = _workload(jobs, random.Random(42))
    outcomes: list[Outcome] = []

    def one(cls: type[FleetAgent], prompt: str) -> Outcome:
        agent = agents[cls]
        try:
            if cls is Coder:
                # The coder's prompt is the experiment's template version; its jobs carry
                # the run's id as their user: the demo budget's scope.
                result = agent.call_llm(experiment=experiment, user=run_id, max_tokens=64,
                                        variables={"topic": prompt.removeprefix("Write ")
                                                   .rstrip(".")}, timeout=90)
            else:
                user = f"user-{zlib.crc32(prompt.encode()) % 5}"
                result = agent.call_llm(prompt, max_tokens=48, user=user, timeout=90)
            return Outcome(agent.name, cls.tier, result, None)
        except FleetError as exc:
            return Outcome(agent.name, cls.tier, None, type(exc).__name__)

    with Progress(console=console, transient=False) as progress, \
            ThreadPoolExecutor(max_workers=24) as pool:
        task = progress.add_task(f"{jobs} jobs from coder, planner, reviewer", total=jobs)
        futures = [pool.submit(one, cls, prompt) for cls, prompt in work]
        for future in as_completed(futures):
            outcomes.append(future.result())
            progress.advance(task)
    return outcomes, list(agents.values())


def _percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _summary(outcomes: list[Outcome], console: Console) -> None:
    table = Table(title="Jobs per tier")
    for column in ("tier", "jobs", "ok", "failed", "cached", "retries", "fallbacks", "cost $",
                   "p50 ms", "p95 ms"):
        table.add_column(column, justify="right" if column != "tier" else "left")
    by_tier: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        by_tier[outcome.tier].append(outcome)
    for tier, group in [*sorted(by_tier.items()), ("all", outcomes)]:
        ok = [o.result for o in group if o.result is not None]
        latencies = [r.latency_ms for r in ok]
        table.add_row(tier, str(len(group)), str(len(ok)), str(len(group) - len(ok)),
                      str(sum(r.cache_hit for r in ok)),
                      str(sum(max(0, r.attempts - 1) for r in ok)),
                      str(sum(r.fallback_used for r in ok)), f"{sum(r.cost_usd for r in ok):.5f}",
                      f"{_percentile(latencies, 50):.0f}", f"{_percentile(latencies, 95):.0f}")
    console.print(table)
    errors = Counter(o.error for o in outcomes if o.error)
    if errors:
        console.print("Failed jobs by error: " + ", ".join(f"{k} {v}" for k, v in errors.items()))
    models = Counter(o.result.model for o in outcomes if o.result)
    console.print("Answered by: " + ", ".join(f"{m} {n}" for m, n in models.most_common()))


def run_demo(jobs: int = 200, latency_ms: float = 50.0, keep_servers: bool = False) -> int:
    # A pipe gets 80 columns by default, too few for the summary table.
    console = Console(width=None if Console().is_terminal else 110)
    settings, fleet = load_config()
    started = time.monotonic()
    run_started = dt.datetime.now(dt.UTC)
    run_id = f"demo-{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        services = resolve_services(settings)
        export_service_env(services)
        assert services.database_url is not None
        migrate(services.database_url)
        if not settings.config_path:
            path = write_demo_fleet_file(settings.resolved_data_dir, run_id)
            os.environ["LLMFLEET_CONFIG"] = str(path)
            settings, fleet = load_config()
        where = "embedded" if services.embedded else "from the environment"
        console.print(f"Redis {services.redis_url} and Postgres ({where}) ready "
                      f"in {time.monotonic() - started:.1f}s")
        if services.started and not keep_servers:
            from workers.devstack.embedded import stop_stack

            stack.callback(stop_stack, settings.resolved_data_dir)
        from workers.providers import missing_keys

        simulator = None
        if set(missing_keys(fleet, fleet.tiers, os.environ)) == set(fleet.providers) \
                or settings.simulator_url:
            if not settings.simulator_url:
                simulator = _start_simulator(fleet, latency_ms, stack, console)
                os.environ["LLMFLEET_SIMULATOR_URL"] = simulator.base_url
            settings, fleet = load_config()
        supervisor = Supervisor(env=os.environ,
                                log_dir=settings.resolved_data_dir / "logs" / "demo")
        stack.callback(supervisor.stop)
        for tier in fleet.tiers:
            supervisor.start(f"worker-{tier}", ["worker", "--tiers", tier, "--concurrency",
                                                "16", "--loglevel", "WARNING"])
        supervisor.start("beat", ["beat", "--loglevel", "WARNING"])
        client = stack.enter_context(FleetClient(redis_url=services.redis_url, fleet=fleet))
        count = supervisor.wait_for_workers(client._app, len(fleet.tiers))
        console.print(f"{count} workers up (one per tier: {', '.join(fleet.tiers)}) and beat; "
                      f"logs in {supervisor.log_dir}")
        vectors = client.embed([f"Notes on {t}" for t in TOPICS], agent="planner").get(60)
        console.print(f"Embedded {len(vectors.vectors)} notes on llm.embeddings "
                      f"({vectors.dimensions} dimensions, ${vectors.cost_usd:.6f})")
        experiment = prepare_coder_experiment(client, run_id, console)
        outcomes, agents = _run_agents(client, jobs, run_id, experiment, console)
        _summary(outcomes, console)
        if simulator is not None:
            counts = simulator.stats()
            by_status = ", ".join(f"{n} x {s}" for s, n in sorted(counts["by_status"].items()))
            console.print(f"Provider calls seen by the simulator: {counts['requests']} "
                          f"({by_status})")
        show_experiment(client, experiment, console)
        # The vectors' Postgres: POSTGRES_VECTOR_CONNECTION, else the fleet's own.
        vectors_url = settings.vector_url(services.database_url)
        assert vectors_url is not None
        run_rag_demo(client, vectors_url, console)
        run_tool_agent_demo(client, vectors_url, console)
        if services.database_url and settings.enable_cost_tracking:
            show_accounting(client, services.redis_url, services.database_url, fleet,
                            run_started, run_id, console)
        for agent in agents:
            stats = agent.get_agent_stats(since=run_started.isoformat())
            saved = stats.get("cost_saved_usd")
            console.print(f"  {stats['agent']}: {stats['jobs']} jobs, "
                          f"${stats['total_cost_usd']:.5f}, cache hit rate "
                          f"{stats['cache_hit_rate']:.0%}"
                          + (f", ${saved:.5f} saved" if saved is not None else "")
                          + f" ({stats['source']})")
    ok = sum(o.result is not None for o in outcomes)
    console.print(f"Done in {time.monotonic() - started:.1f}s: {ok} of {len(outcomes)} jobs "
                  f"answered; everything the demo started is stopped.")
    return 0 if ok >= 0.9 * len(outcomes) else 1
