"""The audit log end to end: every administrative action through its real entry point
(the ``llmfleet`` commands through click's runner, the dashboard and the keys over HTTP
against a running ``llmfleet api``) is exactly one row naming its actor, resource and
outcome, and no row holds a secret; the rows read back through ``/audit``, ``llmfleet
audit`` and the dashboard's session; a state-changing admin route is audited by its
route class."""

from __future__ import annotations

import getpass
import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import redis
from click.testing import CliRunner, Result
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from schemas.keys import AUTH_FAILURES
from schemas.tables import audit_log
from tests.workers.api.conftest import ADMIN_KEY
from workers.api import sessions
from workers.api.admin_routes import AuditedRoute
from workers.api.errors import ApiError, install_handlers
from workers.cli import cli
from workers.store import audit

AUDIT = "/api/admin/ml-ops/audit"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
CLI_ACTOR = f"cli:{getpass.getuser()}@{socket.gethostname()}"
#: A client address no other test uses (TEST-NET-3), sent through the trusted proxy
#: header as a reverse proxy would: the wrong keys here count against it, never against
#: 127.0.0.1, which the other tests share.
CLIENT_IP = "203.0.113.77"
FORWARDED = {"x-forwarded-for": CLIENT_IP}


class Log:
    """The audit rows written since a mark: what one step of the walk wrote."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.start = self.mark()

    def mark(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(select(func.coalesce(func.max(audit_log.c.id), 0)))
                       .scalar_one())

    def since(self, mark: int) -> list[dict[str, Any]]:
        query = select(audit_log).where(audit_log.c.id > mark).order_by(audit_log.c.id)
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def one(self, mark: int, action: str, actor: str, resource: str,
            outcome: str = "ok", address: str | None = None) -> dict[str, Any]:
        """The step's one row, checked; the step wrote nothing else."""
        rows = self.since(mark)
        assert len(rows) == 1, [(r["action"], r["resource"]) for r in rows]
        row = rows[0]
        assert (row["action"], row["actor"], row["resource"], row["outcome"],
                row["address"]) == (action, actor, resource, outcome, address), row
        return row


@pytest.fixture()
def guard_counter(redis_url: str) -> Iterator[None]:
    """The failure counter of CLIENT_IP, gone before and after the test."""
    client = redis.Redis.from_url(redis_url)
    client.delete(AUTH_FAILURES.format(address=CLIENT_IP))
    yield
    client.delete(AUTH_FAILURES.format(address=CLIENT_IP))
    client.close()


def run(env: dict[str, str], *args: str, ok: bool = True) -> Result:
    done = CliRunner().invoke(cli, list(args), env=env)
    assert (done.exit_code == 0) == ok, done.output
    return done


def test_every_admin_action_is_one_row_with_its_actor_and_no_secret(
        api_env: dict[str, str], api_url: str, engine: Engine, tmp_path: Path,
        guard_counter: None) -> None:
    log, tag = Log(engine), uuid.uuid4().hex[:8]
    secrets: list[str] = [ADMIN_KEY]

    # keys create (one to revoke, one that expires at once)
    mark = log.mark()
    made = json.loads(run(api_env, "keys", "create", "--agent", f"audit-{tag}", "--user",
                          "u1", "--rpm", "60", "--json").stdout)
    secrets.append(made["key"])
    row = log.one(mark, "key.create", CLI_ACTOR, f"key:{made['key_id']}")
    assert row["after"]["agent"] == f"audit-{tag}" and row["after"]["rpm"] == 60
    mark = log.mark()
    expiring = json.loads(run(api_env, "keys", "create", "--agent", f"audit-{tag}",
                              "--expires", "1s", "--json").stdout)
    secrets.append(expiring["key"])
    log.one(mark, "key.create", CLI_ACTOR, f"key:{expiring['key_id']}")

    # keys revoke: by its id; then again, pasting the whole key by mistake (refused)
    mark = log.mark()
    run(api_env, "keys", "revoke", made["key_id"])
    row = log.one(mark, "key.revoke", CLI_ACTOR, f"key:{made['key_id']}")
    assert row["before"] == {"revoked_at": None} and row["after"]["revoked_at"]
    mark = log.mark()
    run(api_env, "keys", "revoke", made["key"], ok=False)
    log.one(mark, "key.revoke", CLI_ACTOR, f"key:{made['key_id']}", "refused")

    # key.expire: the expired key presented again and again, to both API processes
    time.sleep(1.2)
    mark = log.mark()
    for _ in range(4):
        answer = httpx.get(f"{api_url}/v1/models", headers={
            "authorization": f"Bearer {expiring['key']}", **FORWARDED})
        assert answer.status_code == 401
    row = log.one(mark, "key.expire", audit.SYSTEM, f"key:{expiring['key_id']}")
    assert row["before"]["expires_at"]

    # templates put: a good body, then a body that does not parse (refused)
    good, bad = tmp_path / "good.j2", tmp_path / "bad.j2"
    good.write_text("{# role: user #}\nReview {{ diff }}")
    bad.write_text("{% if %}")
    name = f"audit-{tag}"
    mark = log.mark()
    run(api_env, "templates", "put", name, str(good))
    row = log.one(mark, "template.put", CLI_ACTOR, f"template:{name}")
    assert row["before"] is None and row["after"]["version"] == 1
    assert "Review" not in json.dumps(row["after"])  # a hash of the text, not the text
    mark = log.mark()
    run(api_env, "templates", "put", name, str(bad), ok=False)
    log.one(mark, "template.put", CLI_ACTOR, f"template:{name}", "refused")

    # templates sync: one row for the directory, listing what it wrote
    folder = tmp_path / "sync" / "review"
    folder.mkdir(parents=True)
    (folder / f"sync-{tag}.j2").write_text("Check {{ code }}")
    mark = log.mark()
    run(api_env, "templates", "sync", str(tmp_path / "sync"))
    row = log.one(mark, "template.sync", CLI_ACTOR,
                  f"templates:{(tmp_path / 'sync').resolve()}")
    assert [t["name"] for t in row["after"]["written"]] == [f"sync-{tag}"]

    # experiments create, start, start again (refused), stop
    experiment = f"audit-{tag}"
    mark = log.mark()
    run(api_env, "experiments", "create", experiment, "--variant", "name=a,tier=simple",
        "--variant", "name=b,tier=medium")
    row = log.one(mark, "experiment.create", CLI_ACTOR, f"experiment:{experiment}")
    assert row["after"]["status"] == "draft"
    for action, command, outcome, status in (
            ("experiment.start", "start", "ok", "running"),
            ("experiment.start", "start", "refused", None),
            ("experiment.stop", "stop", "ok", "stopped")):
        mark = log.mark()
        run(api_env, "experiments", command, experiment, ok=outcome == "ok")
        row = log.one(mark, action, CLI_ACTOR, f"experiment:{experiment}", outcome)
        if status:
            assert row["after"]["status"] == status

    # ledger replay
    mark = log.mark()
    run(api_env, "ledger", "replay")
    row = log.one(mark, "ledger.replay", CLI_ACTOR, "ledger:dead-letters")
    assert isinstance(row["after"]["moved"], int)

    # dashboard login: a wrong key (refused), the right one, then logout
    wrong = f"{ADMIN_KEY}-but-wrong"
    secrets.append(wrong)
    with httpx.Client(base_url=api_url, timeout=30, headers=FORWARDED) as browser:
        mark = log.mark()
        assert browser.post("/dashboard/login", json={"key": wrong}).status_code == 401
        log.one(mark, "dashboard.login_failed", "anonymous", "dashboard", "refused",
                CLIENT_IP)
        mark = log.mark()
        assert browser.post("/dashboard/login", json={"key": ADMIN_KEY}).status_code == 200
        token = browser.cookies[sessions.COOKIE]
        secrets.append(token)
        session = sessions.verify(token, ADMIN_KEY)
        assert session is not None
        secrets.append(session.nonce)
        row = log.one(mark, "dashboard.login", f"dashboard:{session.id}", "dashboard",
                      address=CLIENT_IP)
        assert row["after"]["session"] == session.id
        # Reading the log is no action: the session reads it and writes nothing
        mark = log.mark()
        page = browser.get(AUDIT, params={"actor": CLI_ACTOR, "action": "key.*",
                                          "limit": 1000})
        assert page.status_code == 200 and log.since(mark) == []
        assert {e["resource"] for e in page.json()["entries"]} >= {
            f"key:{made['key_id']}", f"key:{expiring['key_id']}"}
        mark = log.mark()
        assert browser.post("/dashboard/logout").status_code == 200
        log.one(mark, "dashboard.logout", f"dashboard:{session.id}", "dashboard",
                address=CLIENT_IP)

    # Budgets and limits have no runtime path that changes them: no such rows
    rows = log.since(log.start)
    assert not [r for r in rows if r["action"].startswith(("budget.", "limit."))]
    # And no row anywhere in the walk holds a secret
    text = json.dumps(rows, default=str)
    for secret in secrets:
        assert secret not in text
    assert "key_hash" not in text and "lfk_" not in text.replace(
        f"lfk_{made['key_id']}_[redacted]", "")


def test_the_audit_route_needs_the_admin_key_and_filters(http: httpx.Client, engine: Engine,
                                                         guard_counter: None) -> None:
    tag = uuid.uuid4().hex[:8]
    for action in ("key.create", "key.revoke", "template.put"):
        audit.record(engine, "admin-key", action, f"audit-route-{tag}:x")
    assert http.get(AUDIT).status_code == 401
    assert http.get(AUDIT, headers={"authorization": "Bearer nope",
                                    **FORWARDED}).status_code == 401

    def actions(**params: Any) -> list[str]:
        answer = http.get(AUDIT, headers=ADMIN,
                          params={"resource": f"audit-route-{tag}:*", **params})
        assert answer.status_code == 200, answer.text
        return [e["action"] for e in answer.json()["entries"]]

    assert actions() == ["template.put", "key.revoke", "key.create"]
    assert actions(action="key.*") == ["key.revoke", "key.create"]
    assert actions(limit=1, offset=2) == ["key.create"]
    assert actions(since="1h", until="2999-01-01") == actions()
    assert actions(until="2000-01-01") == []
    assert http.get(AUDIT, headers=ADMIN, params={"since": "later"}).status_code == 400
    assert http.get(AUDIT, headers=ADMIN, params={"limit": 0}).status_code in (400, 422)


def test_llmfleet_audit_prints_a_table_or_json_lines(api_env: dict[str, str],
                                                     engine: Engine) -> None:
    tag = uuid.uuid4().hex[:8]
    audit.record(engine, "cli:ann@host", "template.put", f"cli-audit-{tag}:a",
                 after={"version": 2})
    audit.record(engine, "cli:ann@host", "key.revoke", f"cli-audit-{tag}:b",
                 outcome="refused")
    filters = ["--resource", f"cli-audit-{tag}:*", "--since", "1h"]
    lines = run(api_env, "audit", *filters, "--json").stdout.splitlines()
    rows = [json.loads(line) for line in lines]
    assert [(r["action"], r["outcome"]) for r in rows] == [("key.revoke", "refused"),
                                                           ("template.put", "ok")]
    table = run(api_env, "audit", *filters, "--action", "template.*").stdout
    assert "template.put" in table and "key.revoke" not in table
    assert "No audit rows match" in run(api_env, "audit", *filters, "--until",
                                        "2000-01-01").stdout
    assert run(api_env, "audit", "--since", "whenever", ok=False).exit_code == 2
    helped = run(api_env, "audit", "--help").stdout
    for word in ("--json", "--since", "AUDIT_RETENTION_DAYS", "key.expire", "refused"):
        assert word in helped, word


def test_a_state_changing_admin_route_is_audited_by_its_route_class(
        engine: Engine) -> None:
    # Given an admin router of the API's kind with a route that changes state
    tag = uuid.uuid4().hex[:8]

    async def admitted(request: Request) -> None:
        if request.headers.get("authorization") != "Bearer ok":
            raise ApiError(401, "admin key required")
        request.state.audit_actor = "admin-key"

    router = APIRouter(prefix=f"/admin-{tag}", dependencies=[Depends(admitted)],
                       route_class=AuditedRoute)

    @router.post("/things/{name}")
    async def put_thing(name: str) -> dict[str, str]:
        if name == "bad":
            raise ApiError(409, "taken")
        if name == "boom":
            raise RuntimeError("disk full")
        return {"put": name}

    @router.get("/things")
    async def things() -> dict[str, str]:
        return {}

    app = FastAPI()
    app.state.fleet = SimpleNamespace(engine=engine)
    install_handlers(app)
    app.include_router(router)
    log = Log(engine)
    with TestClient(app, raise_server_exceptions=False) as client:
        auth = {"authorization": "Bearer ok"}
        # When it is called: well, refused by the route, failing, read, and not admitted
        assert client.post(f"/admin-{tag}/things/one", headers=auth).status_code == 200
        assert client.post(f"/admin-{tag}/things/bad", headers=auth).status_code == 409
        assert client.post(f"/admin-{tag}/things/boom", headers=auth).status_code == 500
        assert client.get(f"/admin-{tag}/things", headers=auth).status_code == 200
        assert client.post(f"/admin-{tag}/things/one").status_code == 401
    # Then each admitted change is one row; the read and the unadmitted call none
    rows = [r for r in log.since(log.start) if r["resource"].startswith(f"/admin-{tag}")]
    assert [(r["action"], r["actor"], r["resource"], r["outcome"], r["after"]["status"])
            for r in rows] == [
        ("admin.put_thing", "admin-key", f"/admin-{tag}/things/one", "ok", 200),
        ("admin.put_thing", "admin-key", f"/admin-{tag}/things/bad", "refused", 409),
        ("admin.put_thing", "admin-key", f"/admin-{tag}/things/boom", "error", 500)]
