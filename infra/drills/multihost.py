#!/usr/bin/env python3
"""Multi-host drill: a worker host cut off mid-run, its jobs run again elsewhere.

Three hosts are network namespaces on a bridge, each with its own address: h1 runs
Redis, Postgres (pgvector) and the provider simulator, and the agents; h2 and h3 run a
worker each. Agents submit ``--jobs`` jobs; once ``--cut-at`` of them are answered, h3 is
cut off (its link to the bridge down: its connections hang, as a host gone) and after
``--grace-s`` its worker is killed. The sweeper (``workers.recovery``) hands h3's jobs
to h2. Then every job must be answered, leave one ``job_ledger`` row and be charged
once, and h3's jobs must run again within ``--recovery-limit-s``. Prints a timeline
(``--json``: the figures as JSON); exit code 0 when every check holds, 1 when one does
not, 2 when the drill cannot run here (it needs root on Linux and ``ip``).

    sudo python infra/drills/multihost.py [--jobs 3000] [--sweep-every-s 3 ...]

Everything it makes (namespaces, links, the bridge, processes, a temporary directory)
is named with a suffix of its own and removed at the end, however the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import ipaddress
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from decimal import Decimal
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

REDIS_PORT, POSTGRES_PORT, SIMULATOR_PORT = 6379, 5432, 8765
#: The hosts: 1 serves and runs the agents, 2 and 3 work; 3 is cut off.
SERVER, SURVIVOR, VICTIM = 1, 2, 3
#: Celery's log line for a message a worker took or finished (``--loglevel INFO``).
TASK_LINE = re.compile(r"Task \S+\[([^\]]+)\] (received|succeeded)")
SWEPT_LINE = "sweeper: the message of job(s)"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.role == "setup":
        return _setup_databases()
    if args.role == "agents":
        return _run_agents(args)
    problem = _unsupported()
    if problem:
        print(f"multihost drill: {problem}", file=sys.stderr)
        return 2
    drill = Drill(args)
    atexit.register(drill.close)
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, _exit_on_signal)
    try:
        return drill.run()
    finally:
        drill.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Three hosts (network namespaces) on a bridge: servers and agents on "
                    "h1, a worker on h2 and on h3; h3 is cut off mid-run and its jobs "
                    "must run again on h2. Run as root on Linux.")
    add = parser.add_argument
    add("--jobs", type=int, default=3000, help="jobs to submit (default 3000)")
    add("--agents", type=int, default=8, help="agents, each with one batch in flight (8)")
    add("--batch", type=int, default=16, help="jobs per agent batch, at most 32 (16)")
    add("--cut-at", type=float, default=0.5,
        help="cut h3 off once this share of the jobs is answered (0.5)")
    add("--grace-s", type=float, default=5.0,
        help="seconds between the cut and killing h3's worker (5)")
    add("--sweep-every-s", type=float, default=None,
        help="the fleet file's sweep_every_s (default: the fleet's, 10)")
    add("--sweep-min-age-s", type=float, default=None,
        help="the fleet file's sweep_min_age_s (default: the fleet's, 30)")
    add("--latency-ms", type=float, default=200.0, help="the simulator's latency (200)")
    add("--concurrency", type=int, default=64, help="each worker's concurrency (64)")
    add("--subnet", default="10.231.0.0/24", help="the hosts' subnet (10.231.0.0/24)")
    add("--recovery-limit-s", type=float, default=60.0,
        help="h3's jobs must run again within this long after the cut (60)")
    add("--timeout-s", type=float, default=150.0,
        help="longest wait for a job's answer after it was sent (150)")
    add("--keep", action="store_true", help="keep the logs' directory")
    add("--json", action="store_true", help="print the figures as JSON on stdout")
    # Internal: the parts that run inside h1.
    add("--role", choices=("setup", "agents"), help=argparse.SUPPRESS)
    add("--suffix", help=argparse.SUPPRESS)
    add("--out", help=argparse.SUPPRESS)
    return parser


def _unsupported() -> str | None:
    if not sys.platform.startswith("linux"):
        return "needs Linux (network namespaces)"
    if os.geteuid() != 0:
        return "needs root (it creates network namespaces and a bridge)"
    if shutil.which("ip") is None:
        return "needs the `ip` command (iproute2)"
    if shutil.which("setpriv") is None:
        return "needs `setpriv` (util-linux) to run Postgres unprivileged"
    return None


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class Network:
    """A bridge and three namespaces on it, each with a veth into the bridge."""

    def __init__(self, suffix: str, subnet: str) -> None:
        self.suffix = suffix
        self.subnet = ipaddress.IPv4Network(subnet)
        self.bridge = f"lfbr-{suffix}"

    def ns(self, host: int) -> str:
        return f"lf-h{host}-{self.suffix}"

    def veth(self, host: int) -> str:
        """The host side (in the bridge) of the host's link."""
        return f"lfv{host}-{self.suffix}"

    def addr(self, host: int) -> str:
        return str(self.subnet.network_address + host)

    def up(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("link", "set", self.bridge, "up")
        for host in (SERVER, SURVIVOR, VICTIM):
            ns, peer = self.ns(host), f"lfp{host}-{self.suffix}"
            _ip("netns", "add", ns)
            _ip("link", "add", self.veth(host), "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", ns)
            _ip("link", "set", self.veth(host), "master", self.bridge, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", peer, "name", "eth0")
            _ip("-n", ns, "addr", "add", f"{self.addr(host)}/{self.subnet.prefixlen}",
                "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def cut(self, host: int) -> None:
        """The host's link down on the bridge's side: its packets go nowhere."""
        _ip("link", "set", self.veth(host), "down")

    def down(self) -> None:
        """Kill whatever still runs in the namespaces, delete them and the bridge."""
        for host in (SERVER, SURVIVOR, VICTIM):
            pids = _ip("netns", "pids", self.ns(host), check=False).stdout.split()
            for pid in pids:
                _signal(int(pid), signal.SIGKILL, group=False)
            _ip("netns", "del", self.ns(host), check=False)
            _ip("link", "del", self.veth(host), check=False)
        _ip("link", "del", self.bridge, check=False)


def _signal(pid: int, signum: int, *, group: bool = True) -> None:
    try:
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


class Drill:
    """The orchestrator, in the root namespace: builds the hosts, starts everything,
    cuts h3 off when the agents say so, and tears it all down."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.suffix = uuid.uuid4().hex[:6]
        self.net = Network(self.suffix, args.subnet)
        self.work = Path(tempfile.mkdtemp(prefix=f"lf-multihost-{self.suffix}-"))
        self.processes: list[subprocess.Popen[bytes]] = []
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.events: dict[str, float] = {}
        self.failed = False
        self._closed = False

    def run(self) -> int:
        self.net.up()
        self._start_servers()
        for host in (SURVIVOR, VICTIM):
            self.workers[host] = self._start_worker(host)
        agents = self._drive_agents()
        report = analyse(agents, self.events, self._logs(), self.args)
        report["suffix"], report["logs"] = self.suffix, str(self.work)
        self.failed = bool(report["failed"])
        (self.work / "report.json").write_text(json.dumps(report, indent=2))
        print_report(report, self.args.json)
        return 1 if self.failed else 0

    # -- processes ---------------------------------------------------------

    def _env(self, host: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("OPENROUTER_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
        server = self.net.addr(SERVER)
        data = self.work / f"h{host}"
        data.mkdir(exist_ok=True)
        env.update(REDIS_URL=f"redis://{server}:{REDIS_PORT}/0",
                   DATABASE_URL=f"postgresql://postgres@{server}:{POSTGRES_PORT}/llmfleet",
                   LLMFLEET_SIMULATOR_URL=f"http://{server}:{SIMULATOR_PORT}",
                   LLMFLEET_DATA_DIR=str(data), LLMFLEET_CONFIG=str(self._fleet_file()),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                            env.get("PYTHONPATH")])))
        return env

    def _fleet_file(self) -> Path:
        path = self.work / "fleet.toml"
        if not path.exists():
            path.write_text(fleet_text(self.args.sweep_every_s, self.args.sweep_min_age_s))
        return path

    def _start(self, host: int, argv: list[str], log: str, *, stdout: int | None = None,
               env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A process in the host's namespace, in a process group of its own."""
        with (self.work / log).open("ab") as out:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.net.ns(host), *argv], cwd=REPO,
                env=env or self._env(host), stdin=subprocess.DEVNULL,
                stdout=out if stdout is None else stdout,
                stderr=out, start_new_session=True)
        self.processes.append(process)
        return process

    def _start_servers(self) -> None:
        from workers.devstack.embedded._postgres import _initdb, _prepare, pg_bin_dir
        from workers.devstack.embedded._redis import redis_server_binary

        server, data = self.net.addr(SERVER), self.work / f"h{SERVER}"
        data.mkdir(exist_ok=True)
        (data / "redis").mkdir()
        self._start(SERVER, [str(redis_server_binary()), "--bind", server, "--port",
                             str(REDIS_PORT), "--protected-mode", "no", "--dir",
                             str(data / "redis"), "--appendonly", "yes", "--appendfsync",
                             "everysec", "--save", ""], "redis.log")
        owner = _prepare(data)  # the unprivileged account Postgres runs as
        _initdb(data / "pg", owner)
        with (data / "pg" / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {self.net.subnet} trust\n")
        self._start(SERVER, ["setpriv", f"--reuid={owner['user']}",
                             f"--regid={owner['group']}", "--clear-groups",
                             str(pg_bin_dir() / "postgres"), "-D", str(data / "pg"),
                             "-c", f"listen_addresses={server}",
                             "-c", f"port={POSTGRES_PORT}", "-c", "unix_socket_directories=",
                             "-c", "max_connections=200"], "postgres.log")
        self._start(SERVER, [sys.executable, "-m", "workers.cli", "simulator", "--host",
                             server, "--port", str(SIMULATOR_PORT), "--latency-ms",
                             str(self.args.latency_ms)], "simulator.log")
        setup = self._start(SERVER, [sys.executable, __file__, "--role", "setup"],
                            "setup.log")
        if setup.wait(timeout=180) != 0:
            raise RuntimeError(f"setting up Redis and Postgres failed: see "
                               f"{self.work / 'setup.log'}")

    def _start_worker(self, host: int) -> subprocess.Popen[bytes]:
        return self._start(host, [sys.executable, "-m", "workers.cli", "worker", "--tiers",
                                  "simple", "--concurrency", str(self.args.concurrency),
                                  "--loglevel", "INFO", "--hostname",
                                  f"h{host}-{self.suffix}@%h"], f"worker-h{host}.log")

    def _drive_agents(self) -> dict[str, Any]:
        """Run the agents in h1; cut h3 off when they report the share answered."""
        out = self.work / "agents.json"
        argv = [sys.executable, __file__, "--role", "agents", "--suffix", self.suffix,
                "--out", str(out), *_passed_options(self.args)]
        agents = self._start(SERVER, argv, "agents.log", stdout=subprocess.PIPE)
        watchdog = threading.Timer(self.args.timeout_s + 240, _signal,
                                   (agents.pid, signal.SIGKILL))
        watchdog.start()
        try:
            assert agents.stdout is not None
            for line in agents.stdout:
                event = json.loads(line)
                if event.get("event") == "cut":
                    self._cut()
        finally:
            watchdog.cancel()
        if agents.wait() != 0 or not out.exists():
            raise RuntimeError(f"the agents failed: see {self.work / 'agents.log'}")
        result: dict[str, Any] = json.loads(out.read_text())
        return result

    def _cut(self) -> None:
        self.net.cut(VICTIM)
        self.events["cut"] = time.time()
        time.sleep(self.args.grace_s)
        victim = self.workers[VICTIM]
        _signal(victim.pid, signal.SIGKILL)
        victim.wait()
        self.events["killed"] = time.time()

    def _logs(self) -> dict[int, str]:
        return {host: (self.work / f"worker-h{host}.log").read_text(errors="replace")
                for host in (SURVIVOR, VICTIM)}

    def close(self) -> None:
        """Stop every process, remove the hosts and the bridge; idempotent."""
        if self._closed:
            return
        self._closed = True
        for process in self.processes:
            _signal(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(process.pid, signal.SIGKILL)
                process.wait()
        for process in self.processes:
            _signal(process.pid, signal.SIGKILL)  # the group's stragglers
        self.net.down()
        if self.failed or self.args.keep:
            print(f"multihost drill: logs kept in {self.work}", file=sys.stderr)
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def _passed_options(args: argparse.Namespace) -> list[str]:
    return ["--jobs", str(args.jobs), "--agents", str(args.agents), "--batch",
            str(args.batch), "--cut-at", str(args.cut_at), "--timeout-s", str(args.timeout_s)]


def fleet_text(every_s: float | None, min_age_s: float | None) -> str:
    """The default fleet file, with the sweeper's settings when given."""
    base = resources.files("schemas").joinpath("default_fleet.toml").read_text()
    extra = "".join(f"\n{key} = {value}" for key, value in
                    (("sweep_every_s", every_s), ("sweep_min_age_s", min_age_s))
                    if value is not None)
    anchor = "default_max_tokens = 1024"
    if anchor not in base:
        raise RuntimeError(f"the default fleet file no longer has {anchor!r}")
    return base.replace(anchor, anchor + extra, 1)


# -- inside h1: the databases' setup, and the agents ---------------------------


def _setup_databases() -> int:
    """Wait for Redis and Postgres, create the database with pgvector, migrate."""
    import psycopg
    import redis

    from workers.store.engines import migrate

    url = os.environ["DATABASE_URL"]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    deadline = time.monotonic() + 120
    while True:
        try:
            redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=2).ping()
            with psycopg.connect(admin, autocommit=True, connect_timeout=2) as conn:
                if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'llmfleet'"
                                ).fetchone() is None:
                    conn.execute("CREATE DATABASE llmfleet")
            break
        except (redis.RedisError, psycopg.OperationalError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    migrate(url)
    return 0


def _emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def _run_agents(args: argparse.Namespace) -> int:
    from tasks import FleetClient

    prefix = f"mh{args.suffix}"
    client = FleetClient(redis_url=os.environ["REDIS_URL"], agent=prefix)
    try:
        _wait_for_workers(client, [f"h{h}-{args.suffix}@" for h in (SURVIVOR, VICTIM)])
        started = time.time()
        records = asyncio.run(_agents(client, args, prefix))
        answered = sum(1 for record in records if record.get("ok"))
        ledger = _ledger(os.environ["DATABASE_URL"], prefix, answered)
    finally:
        client.close()
    Path(args.out).write_text(json.dumps({"started": started, "records": records,
                                          "ledger": ledger}))
    return 0


def _wait_for_workers(client: Any, names: list[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        replies = str(client._app.control.ping(timeout=1.0))
        if all(name in replies for name in names):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers {names} did not answer pings: {replies}")


async def _agents(client: Any, args: argparse.Namespace, prefix: str
                  ) -> list[dict[str, Any]]:
    """``--agents`` agents, each submitting a batch, awaiting its jobs, and again."""
    from schemas import FleetError
    from tasks.handles import JobHandle

    records: list[dict[str, Any]] = []
    pending: dict[str, float] = {}  # job id: when it was sent
    threshold = math.ceil(args.jobs * args.cut_at)
    shares = [args.jobs // args.agents + (k < args.jobs % args.agents)
              for k in range(args.agents)]

    async def answer(job_id: str, record: dict[str, Any]) -> None:
        try:
            result = await JobHandle(client, job_id).wait(args.timeout_s)
            record.update(ok=True, cost=result.cost_usd)
        except (FleetError, TimeoutError) as exc:
            record.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        record["answered"] = time.time()
        records.append(record)
        pending.pop(job_id, None)
        if len(records) == threshold:
            _emit({"event": "cut", "answered": len(records)})

    async def agent(number: int, share: int) -> None:
        name = f"{prefix}-{number}"
        for start in range(0, share, args.batch):
            specs = [{"messages": [{"role": "user", "content":
                                    f"multihost {prefix} {name} job {start + i}"}],
                      "tier": "simple", "max_tokens": 16, "agent": name, "cache": "skip",
                      "timeout": args.timeout_s}
                     for i in range(min(args.batch, share - start))]
            sent = time.time()
            batch = await asyncio.to_thread(client.submit_many, specs)
            message = "batch-" + batch.job_ids[0]  # one message: at most 32 jobs
            pending.update(dict.fromkeys(batch.job_ids, sent))
            await asyncio.gather(*(answer(job_id, {"job": job_id, "agent": name,
                                                   "message": message, "sent": sent})
                                   for job_id in batch.job_ids))

    watch = asyncio.create_task(_watch(records, pending))
    try:
        await asyncio.gather(*(agent(k, share) for k, share in enumerate(shares)))
    finally:
        watch.cancel()
    return records


async def _watch(records: list[dict[str, Any]], pending: dict[str, float]) -> None:
    """Progress on stderr (the agents' log) every 5 s; the jobs waited on for long."""
    import redis

    from schemas.keys import JOB_STATE

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    server = client.connection_pool.connection_kwargs["host"]
    victim = str(ipaddress.IPv4Address(server) + VICTIM - SERVER) + ":"
    while True:
        await asyncio.sleep(5)
        now = time.time()
        late = [job for job, sent in pending.items() if now - sent > 20]
        h3 = [c for c in client.client_list() if c["addr"].startswith(victim)]
        print(f"{time.strftime('%H:%M:%S')} answered {len(records)}, waiting for "
              f"{len(pending)} ({len(late)} for over 20 s); h3's connections to Redis: "
              f"{len(h3)}, blocked: {sum('b' in c['flags'] for c in h3)}",
              file=sys.stderr, flush=True)
        for job in late[:5]:
            state = client.get(JOB_STATE.format(job_id=job))
            print(f"  {job}: {state!r:.200}", file=sys.stderr, flush=True)


def _ledger(database_url: str, prefix: str, expected: int, wait_s: float = 60
            ) -> dict[str, Any]:
    """The run's ledger rows, once there is one per answered job (the flusher writes
    them in batches) and a second later, or at the deadline."""
    import psycopg

    deadline = time.monotonic() + wait_s
    query = "SELECT job_id, status, cost_usd FROM job_ledger WHERE agent LIKE %s"
    settled = False
    while True:
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(query, (prefix + "-%",)).fetchall()
        if settled or time.monotonic() > deadline:
            break
        settled = len(rows) >= expected
        time.sleep(1.0 if settled else 0.5)
    with psycopg.connect(database_url) as conn:  # who holds up the ledger, if anyone
        sessions = conn.execute(
            "SELECT client_addr::text, state, wait_event_type, wait_event, "
            "left(query, 60) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state <> 'idle'").fetchall()
    return {"rows": [[job_id, status, str(cost)] for job_id, status, cost in rows],
            "sessions": [" ".join(str(v) for v in session) for session in sessions]}


# -- the figures -----------------------------------------------------------------


def _messages(logs: dict[int, str]) -> dict[int, dict[str, set[str]]]:
    """Per worker host: the messages it took (received) and finished (succeeded)."""
    seen: dict[int, dict[str, set[str]]] = {}
    for host, text in logs.items():
        seen[host] = {"received": set(), "succeeded": set()}
        for match in TASK_LINE.finditer(text):
            seen[host][match.group(2)].add(match.group(1))
    return seen


def analyse(agents: dict[str, Any], events: dict[str, float], logs: dict[int, str],
            args: argparse.Namespace) -> dict[str, Any]:
    records: list[dict[str, Any]] = agents["records"]
    t0, cut, killed = agents["started"], events.get("cut"), events.get("killed")
    seen = _messages(logs)
    ran_on = {message: host for host, kinds in seen.items()
              for message in kinds["succeeded"]}
    victim = seen[VICTIM]
    held_messages = victim["received"] - victim["succeeded"]
    held = [r for r in records if r["message"] in held_messages]
    if not seen[VICTIM]["received"] and cut is not None:  # no log: in flight, answered late
        held = [r for r in records if r["sent"] < cut and r["answered"] > (killed or cut)]
    if cut is not None:  # a held batch's jobs answered before the cut were not held
        held = [r for r in held if not r.get("ok") or r["answered"] > cut]
    taken = set().union(*(kinds["received"] for kinds in seen.values()))
    lost = [r for r in records if not r.get("ok") and r["message"] not in taken]
    answered = sorted(r["answered"] for r in records if r.get("ok"))
    by_victim = [r["answered"] for r in records if ran_on.get(r["message"]) == VICTIM
                 and cut is not None and r["answered"] <= cut]
    end = answered[-1] if answered else t0
    first_rerun = min((r["answered"] for r in held if r.get("ok")), default=None)
    swept = [_log_time(line) for line in logs[SURVIVOR].splitlines() if SWEPT_LINE in line]
    figures: dict[str, Any] = {
        "jobs": args.jobs, "submitted": len(records),
        "answered": sum(1 for r in records if r.get("ok")),
        "errors": sorted({r["error"] for r in records if not r.get("ok")})[:5],
        "jobs_on_h2": sum(1 for r in records if ran_on.get(r["message"]) == SURVIVOR),
        "jobs_on_h3": sum(1 for r in records if ran_on.get(r["message"]) == VICTIM),
        "held_by_h3_at_cut": len(held),
        "held_answered": sum(1 for r in held if r.get("ok")),
        "swept_messages": len(swept),
        "never_taken_jobs": len(lost),
        "never_taken_messages": len({r["message"] for r in lost}),
        "never_taken_sent_after_cut_s": sorted({round(r["sent"] - cut, 2) for r in lost})
        if cut is not None else [],
        "sweep_every_s": args.sweep_every_s or 10.0,
        "sweep_min_age_s": args.sweep_min_age_s or 30.0,
        "t_cut_s": _rel(cut, t0), "t_killed_s": _rel(killed, t0),
        "t_last_h3_before_cut_s": _rel(max(by_victim, default=None), t0),
        "t_first_sweep_s": _rel(min(swept, default=None), t0),
        "t_first_rerun_s": _rel(first_rerun, t0),
        "t_last_rerun_s": _rel(max((r["answered"] for r in held if r.get("ok")),
                                   default=None), t0),
        "t_all_answered_s": _rel(end, t0),
        "recovery_s": None if first_rerun is None or cut is None
        else round(first_rerun - cut, 2),
        "rate_before_per_s": _rate(answered, t0, cut, before=True),
        "rate_after_per_s": _rate(answered, cut, end, before=False),
    }
    figures.update(_ledger_figures(records, agents["ledger"]["rows"]))
    figures["postgres_busy_sessions"] = agents["ledger"]["sessions"]
    figures["failed"] = _failed_checks(figures, args)
    figures["timeline"] = timeline(figures)
    return figures


def _log_time(line: str) -> float:
    """When a worker's log line was written (logging's local time, to the ms)."""
    stamp, _, millis = line[:23].partition(",")
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000


def _rel(moment: float | None, t0: float) -> float | None:
    return None if moment is None else round(moment - t0, 2)


def _rate(answered: list[float], start: float | None, end: float | None, *,
          before: bool) -> float | None:
    if start is None or end is None or end <= start:
        return None
    count = sum(1 for a in answered if (a <= end if before else a > start))
    return round(count / (end - start), 1)


def _ledger_figures(records: list[dict[str, Any]], rows: list[list[str]]) -> dict[str, Any]:
    jobs = {r["job"] for r in records}
    ids = [row[0] for row in rows]
    nano = Decimal("0.000000001")
    charged = sum((Decimal(row[2]) for row in rows), Decimal(0))
    results = sum((Decimal(repr(r["cost"])).quantize(nano) for r in records if r.get("ok")),
                  Decimal(0))
    return {"ledger_rows": len(rows), "ledger_jobs": len(set(ids)),
            "ledger_missing": len(jobs - set(ids)), "ledger_extra": len(set(ids) - jobs),
            "ledger_not_succeeded": sum(1 for row in rows if row[1] != "succeeded"),
            "charged_usd": str(charged), "results_usd": str(results),
            "charge_difference_usd": str(charged - results)}


def _failed_checks(f: dict[str, Any], args: argparse.Namespace) -> list[str]:
    checks = [
        (f["answered"] == f["jobs"] == f["submitted"],
         f"{f['answered']} of {f['jobs']} jobs answered ({f['errors']})"),
        (f["never_taken_jobs"] == 0,
         f"{f['never_taken_jobs']} jobs ({f['never_taken_messages']} messages, sent "
         f"{f['never_taken_sent_after_cut_s']} s after the cut) were never taken by any "
         "worker: no log line, no job state (popped by h3's pending BRPOP?)"),
        (f["ledger_rows"] == f["ledger_jobs"] == f["jobs"] and not f["ledger_missing"]
         and not f["ledger_extra"],
         f"{f['ledger_rows']} ledger rows for {f['ledger_jobs']} jobs of {f['jobs']} "
         f"({f['ledger_missing']} missing, {f['ledger_extra']} unknown)"),
        (f["ledger_not_succeeded"] == 0, f"{f['ledger_not_succeeded']} rows not succeeded"),
        (abs(Decimal(f["charge_difference_usd"])) <= Decimal("1e-9") * max(1, f["jobs"]),
         f"charged {f['charged_usd']} USD, results cost {f['results_usd']} USD"),
        (f["t_cut_s"] is not None and f["held_by_h3_at_cut"] > 0,
         "h3 held no jobs when it was cut off: nothing was recovered"),
        (f["held_answered"] == f["held_by_h3_at_cut"],
         f"{f['held_answered']} of h3's {f['held_by_h3_at_cut']} jobs answered again"),
        (f["recovery_s"] is not None and f["recovery_s"] < args.recovery_limit_s,
         f"h3's jobs ran again {f['recovery_s']} s after the cut "
         f"(limit {args.recovery_limit_s:g} s)"),
    ]
    failed = [message for holds, message in checks if not holds]
    if f["ledger_missing"] and f["postgres_busy_sessions"]:
        failed.append("Postgres sessions still busy at the end (the ledger's flush blocked?): "
                      + "; ".join(f["postgres_busy_sessions"][:4]))
    return failed


def timeline(f: dict[str, Any]) -> list[str]:
    def at(seconds: float | None) -> str:
        return "t=   ?   " if seconds is None else f"t={seconds:7.2f} s"

    lines = [
        f"{at(0.0)}  agents start submitting ({f['jobs']} jobs; both workers up)",
        f"{at(f['t_last_h3_before_cut_s'])}  last job answered by h3 before the cut",
        f"{at(f['t_cut_s'])}  h3 cut off (its link down); it holds "
        f"{f['held_by_h3_at_cut']} jobs",
        f"{at(f['t_killed_s'])}  h3's worker killed (SIGKILL)",
        f"{at(f['t_first_sweep_s'])}  h2's sweeper puts h3's first message back",
        f"{at(f['t_first_rerun_s'])}  first of h3's jobs answered again, by h2",
        f"{at(f['t_last_rerun_s'])}  last of h3's jobs answered again",
        f"{at(f['t_all_answered_s'])}  all {f['answered']} jobs answered",
        f"recovery: {f['recovery_s']} s from the cut to the first re-run (sweep every "
        f"{f['sweep_every_s']:g} s, min age {f['sweep_min_age_s']:g} s); "
        f"{f['swept_messages']} messages swept back",
        f"throughput: {f['rate_before_per_s']} jobs/s before the cut, "
        f"{f['rate_after_per_s']} after",
        f"ran on h2: {f['jobs_on_h2']} jobs, on h3: {f['jobs_on_h3']}",
        f"ledger: {f['ledger_rows']} rows for {f['ledger_jobs']} jobs, "
        f"{f['ledger_not_succeeded']} not succeeded; charged {f['charged_usd']} USD, "
        f"results {f['results_usd']} USD",
    ]
    return lines


def print_report(report: dict[str, Any], as_json: bool) -> None:
    human = sys.stderr if as_json else sys.stdout
    print(f"multi-host drill {report['suffix']}:", file=human)
    for line in report["timeline"]:
        print("  " + line, file=human)
    for failure in report["failed"]:
        print(f"  FAILED: {failure}", file=human)
    if not report["failed"]:
        print("  every check holds", file=human)
    if as_json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(main())
