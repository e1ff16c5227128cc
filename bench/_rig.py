"""A whole fleet on loopback for ``stream.py`` and ``structured.py``: the embedded
servers (``_fleet.services``), the provider simulator with its stream and JSON knobs, one
worker process, ``llmfleet api`` with a fleet key when asked; an ``Observer`` that counts
the API's CPU apart; and the ledger's rows of one agent, read after the flusher drained
the spool."""

from __future__ import annotations

import contextlib
import json
import shutil
import statistics
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from bench._fleet import Services, child_env, services, tail_logs
from bench._measure import Observer, Phase, log
from bench._simulator import free_port, sim_request, start_simulator
from schemas import FleetConfig, Settings, load_config
from tasks import FleetClient
from tasks.celery_config import celery_settings
from workers.devstack.supervisor import Supervisor

__all__ = ["GROUPS", "FleetObserver", "LedgerRows", "Rig", "ledger_rows", "percentile", "rig"]

#: CPU groups of a phase, in % of one core; "other" is the rest of the machine.
GROUPS = ("client", "workers", "api", "simulator", "redis", "postgres", "other")


def percentile(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


class FleetObserver(Observer):
    """``Observer`` with the API's processes (and their children) as a group of their
    own; ``measure`` also keeps the phase's wall time and CPU seconds."""

    def __init__(self, redis_url: str, postgres_pid: int, log_dir: Path) -> None:
        super().__init__(redis_url, postgres_pid, log_dir)
        self.pids["api"] = []
        self.cpu_s: dict[str, dict[str, float]] = {}  # phase name -> group -> CPU seconds

    def _tree(self, pid: int) -> list[int]:
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            kids = []
        return [pid, *(p for kid in kids for p in self._tree(int(kid)))]

    def _cpu(self) -> dict[str, float]:
        found = super()._cpu()
        api = sum(self._proc(p) for pid in self.pids["api"] for p in self._tree(pid))
        found["api"] = api
        found["other"] -= api
        return found

    @contextlib.contextmanager
    def measure(self, phase: Phase) -> Iterator[None]:
        cpu, commands, sizes = self._cpu(), self._commands(), self._log_sizes()
        started = time.perf_counter()
        try:
            yield
        finally:
            wall = time.perf_counter() - started
            after = self._cpu()
            spent = {k: after[k] - cpu[k] for k in GROUPS}
            self.cpu_s[phase.name] = spent
            phase.cpu = {k: 100 * v / wall for k, v in spent.items()} if wall else {}
            phase.seconds = phase.seconds or wall
            phase.redis_commands = self._commands() - commands
            phase.worker_log = self._new_log_lines(sizes)


@dataclass
class Rig:
    """What a benchmark talks to."""

    found: Services
    env: dict[str, str]
    settings: Settings
    fleet: FleetConfig
    sup: Supervisor
    observer: FleetObserver
    sim: str  # the simulator's base URL
    agent: str
    api: str | None = None  # the HTTP API's base URL
    key: str | None = None  # a fleet key for ``agent``
    clients: list[FleetClient] = field(default_factory=list)

    def client(self) -> FleetClient:
        made = FleetClient(redis_url=self.found.redis_url, fleet=self.fleet,
                           settings=self.settings, agent=self.agent)
        self.clients.append(made)
        return made

    def sim_config(self, **changes: Any) -> dict[str, Any]:
        answer: dict[str, Any] = sim_request(self.sim, "/_sim/config", changes)
        return answer

    def sim_reset(self) -> None:
        """Zero the simulator's request and stream counts."""
        sim_request(self.sim, "/_sim/reset", {})

    def sim_stats(self) -> dict[str, Any]:
        answer: dict[str, Any] = sim_request(self.sim, "/_sim/stats")
        return answer

    def stream_stats(self) -> dict[str, int]:
        answer: dict[str, int] = sim_request(self.sim, "/_sim/stats/streams")
        return answer

    def wire_model(self, tier: str) -> str:
        """The name the tier's primary model goes by at the provider (the simulator)."""
        name = self.fleet.tiers[tier].models[0]
        return self.fleet.models[name].wire_name or name

    def check_alive(self) -> None:
        self.sup.check_alive()


def _status(url: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _start_api(sup: Supervisor, found: Services, agent: str, processes: int,
               limit_s: float = 60) -> tuple[str, str]:
    from workers.api.keys import create_key
    from workers.store.engines import sync_engine

    port = free_port()
    sup.start("api", ["api", "--host", "127.0.0.1", "--port", str(port),
                      "--workers", str(processes)])
    engine = sync_engine(found.database_url)
    key = create_key(engine, agent, "bench")[1]
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + limit_s
    while True:
        sup.check_alive()
        with contextlib.suppress(OSError):
            if _status(f"{base}/v1/models", {"Authorization": f"Bearer {key}"}) == 200:
                return base, key
        if time.monotonic() > deadline:
            raise TimeoutError(f"the API did not answer on {base} within {limit_s:.0f}s")
        time.sleep(0.2)


@contextlib.contextmanager
def rig(*, agent: str, tier: str, concurrency: int, sim_config: dict[str, Any],
        latency_ms: float = 50.0, api_processes: int = 0, redis_db: int = 15,
        env_extra: dict[str, str] | None = None) -> Iterator[Rig]:
    """Servers, the simulator (``sim_config`` applied), one worker for ``tier``, and the
    API with ``api_processes`` processes (0: none); all stopped afterwards, the temp
    directory removed. On an error (not Ctrl-C), the last lines of every log go to
    stderr."""
    tmp = Path(tempfile.mkdtemp(prefix="llmfleet-bench-"))
    log_dir = tmp / "logs"
    log_dir.mkdir()
    made: Rig | None = None
    try:
        with services(tmp, redis_db) as found:
            log(f"redis: {found.redis_url}, postgres: {found.database_url}")
            env = child_env(found, tmp, env_extra or {})
            settings, fleet = load_config(Settings.from_env(env))
            observer = FleetObserver(found.redis_url, found.postgres_pid, log_dir)
            sup = Supervisor(env=env, log_dir=log_dir)
            control = Celery("bench-control", set_as_current=False)
            control.conf.update(celery_settings(found.redis_url, found.redis_url, fleet))
            try:
                sim = start_simulator(sup, latency_ms)
                sim_request(sim, "/_sim/config", sim_config)
                observer.pids["simulator"] = [sup.children["simulator"].pid]
                sup.env = {**env, "LLMFLEET_SIMULATOR_URL": sim}
                log(f"starting a worker (--tiers {tier} --concurrency {concurrency})")
                sup.start("worker", ["worker", "--tiers", tier, "--concurrency",
                                     str(concurrency), "--loglevel", "WARNING",
                                     "--hostname", "bench-stream@%h"])
                sup.wait_for_workers(control, 1, timeout=90)
                observer.pids["workers"] = [sup.children["worker"].pid]
                made = Rig(found, env, settings, fleet, sup, observer, sim, agent)
                if api_processes:
                    log(f"starting llmfleet api ({api_processes} process(es))")
                    made.api, made.key = _start_api(sup, found, agent, api_processes)
                    observer.pids["api"] = [sup.children["api"].pid]
                yield made
            finally:
                for client in made.clients if made else ():
                    with contextlib.suppress(Exception):
                        client.close()
                sup.stop()
                control.close()
    except Exception:
        tail_logs(log_dir)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- the ledger -----------------------------------------------------------------------------


@dataclass
class LedgerRows:
    """One agent's rows: how many, by status, and what the listed jobs' rows say."""

    expected: int
    rows: int
    spooled: int
    distinct_jobs: int
    by_status: dict[str, int]
    cost_usd: float
    attempts: int
    jobs: dict[str, dict[str, Any]]  # job_id -> its row (status, error, cost_usd, ttft_ms)

    @property
    def ok(self) -> bool:
        return self.rows == self.expected == self.distinct_jobs

    def line(self) -> str:
        verdict = "ok" if self.ok else (
            f"{self.expected - self.rows - self.spooled} LOST" if
            self.expected > self.rows + self.spooled else
            f"{self.rows - self.expected} EXTRA" if self.rows > self.expected else "late")
        return (f"ledger: {self.rows} rows ({self.distinct_jobs} distinct jobs) for "
                f"{self.expected} fleet jobs ({self.spooled} rows of any agent still in the "
                f"spool): {verdict}; "
                f"by status {json.dumps(self.by_status, sort_keys=True)}")


def ledger_rows(found: Services, agent: str, expected: int, watch: list[str] | None = None,
                wait_s: float = 20) -> LedgerRows:
    """Wait (up to ``wait_s``) until ``agent`` has ``expected`` rows or the spool has
    been empty for a second; then its rows, and those of the jobs in ``watch`` one by one."""
    from sqlalchemy import func, select

    from schemas.keys import LEDGER_SPOOL
    from schemas.tables import job_ledger as t
    from workers.store.engines import sync_engine

    engine = sync_engine(found.database_url)
    mine = t.c.agent == agent
    client = redis.Redis.from_url(found.redis_url)
    deadline, rows, spooled, empty = time.monotonic() + wait_s, 0, 0, 0
    with contextlib.closing(client):
        while True:
            spooled = int(client.llen(LEDGER_SPOOL))
            empty = empty + 1 if spooled == 0 else 0
            with engine.connect() as connection:
                rows = int(connection.execute(
                    select(func.count()).select_from(t).where(mine)).scalar_one())
            if rows >= expected or empty >= 3 or time.monotonic() > deadline:
                spooled = int(client.llen(LEDGER_SPOOL))
                break
            time.sleep(0.5)
    with engine.connect() as connection:
        distinct, cost, attempts = connection.execute(select(
            func.count(t.c.job_id.distinct()), func.coalesce(func.sum(t.c.cost_usd), 0),
            func.coalesce(func.sum(t.c.attempts), 0)).where(mine)).one()
        by_status = Counter({str(s): int(n) for s, n in connection.execute(
            select(t.c.status, func.count()).where(mine).group_by(t.c.status))})
        jobs: dict[str, dict[str, Any]] = {}
        if watch:
            for row in connection.execute(select(
                    t.c.job_id, t.c.status, t.c.error, t.c.cost_usd, t.c.ttft_ms,
                    t.c.completion_tokens, t.c.attempts).where(t.c.job_id.in_(watch))).mappings():
                jobs[row["job_id"]] = {k: (float(v) if k == "cost_usd" else v)
                                       for k, v in row.items() if k != "job_id"}
    return LedgerRows(expected, rows, spooled, int(distinct), dict(by_status), float(cost),
                      int(attempts), jobs)
