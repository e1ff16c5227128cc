"""The audit log against the session's Postgres: append-only by trigger, purged only
through its own path, queried by its filters, and never a secret in a row."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, func, insert, select, text
from sqlalchemy.exc import DBAPIError

from schemas.tables import audit_log
from workers.accounting.periodic import purge_expired
from workers.store import audit
from workers.store.engines import sync_engine

UTC = dt.UTC


@pytest.fixture(scope="module")
def engine(database_url: str) -> Engine:
    return sync_engine(database_url)


@pytest.fixture()
def tag() -> str:
    """A resource prefix of this test's own, so that other rows never match."""
    return f"t-{uuid.uuid4().hex[:10]}"


def add(engine: Engine, tag: str, at: dt.datetime, action: str = "key.create",
        actor: str = "cli:ann@host", name: str = "a") -> None:
    """A row written at ``at`` (record() lets the database date it: now)."""
    with engine.begin() as connection:
        connection.execute(insert(audit_log).values(
            at=at, actor=actor, action=action, resource=f"{tag}:{name}", outcome="ok"))


def rows_of(engine: Engine, tag: str) -> list[dict[str, object]]:
    return audit.query(engine, resource=f"{tag}:*", limit=1000)


@pytest.fixture()
def written(engine: Engine, tag: str) -> Iterator[int]:
    """One row of this test's, by record(); its id."""
    assert audit.record(engine, "cli:ann@host", "template.put", f"{tag}:coder",
                        before={"version": 1}, after={"version": 2})
    yield int(rows_of(engine, tag)[0]["id"])  # type: ignore[call-overload]


# -- append-only -----------------------------------------------------------------

def test_an_update_is_refused_and_the_row_stays(engine: Engine, tag: str,
                                                written: int) -> None:
    # When a row is updated
    with pytest.raises(DBAPIError, match="append-only: UPDATE refused"), engine.begin() as c:
        c.execute(audit_log.update().where(audit_log.c.id == written).values(actor="eve"))
    # Then it is as it was written
    assert rows_of(engine, tag)[0]["actor"] == "cli:ann@host"


def test_a_delete_and_a_truncate_are_refused(engine: Engine, tag: str, written: int) -> None:
    with pytest.raises(DBAPIError, match="append-only: DELETE refused"), engine.begin() as c:
        c.execute(audit_log.delete().where(audit_log.c.id == written))
    with pytest.raises(DBAPIError, match="append-only: TRUNCATE refused"), engine.begin() as c:
        c.execute(text("TRUNCATE audit_log"))
    assert [r["id"] for r in rows_of(engine, tag)] == [written]


def test_not_even_the_purge_setting_lets_an_update_through(engine: Engine,
                                                          written: int) -> None:
    with pytest.raises(DBAPIError, match="UPDATE refused"), engine.begin() as c:
        c.execute(select(func.set_config(audit.PURGE_SETTING, "on", True)))
        c.execute(audit_log.update().where(audit_log.c.id == written).values(actor="eve"))


# -- retention -------------------------------------------------------------------

def test_purge_deletes_the_old_rows_only_and_its_leave_ends_with_it(engine: Engine,
                                                                    tag: str) -> None:
    # Given rows of 100, 10 and 0 days ago
    now = dt.datetime.now(UTC)
    for days, name in ((100, "old"), (10, "recent"), (0, "new")):
        add(engine, tag, now - dt.timedelta(days=days), name=name)
    # When rows older than 90 days are purged
    deleted = audit.purge(engine, now - dt.timedelta(days=90))
    # Then the old row is gone and the others stay
    assert deleted >= 1
    assert sorted(str(r["resource"]) for r in rows_of(engine, tag)) == [
        f"{tag}:new", f"{tag}:recent"]
    # And the purge's leave ended with its transaction: a plain DELETE is refused again
    with pytest.raises(DBAPIError, match="DELETE refused"), engine.begin() as c:
        c.execute(audit_log.delete().where(audit_log.c.resource == f"{tag}:recent"))
    with engine.connect() as c:
        assert c.execute(text("SELECT current_setting('llmfleet.audit_purge', true)")
                         ).scalar() in (None, "")


def test_beats_purge_applies_the_audit_retention(engine: Engine, tag: str) -> None:
    # Given an audit row of 100 days ago and one of 10
    now = dt.datetime.now(UTC)
    add(engine, tag, now - dt.timedelta(days=100), name="old")
    add(engine, tag, now - dt.timedelta(days=10), name="recent")
    # When beat's purge runs with ledger retention off and AUDIT_RETENTION_DAYS=30
    summary = purge_expired(engine, 0, now, audit_retention_days=30)
    # Then the audit row past 30 days is gone, the ledger untouched
    assert summary["deleted"] == 0 and summary["audit_deleted"] >= 1
    assert [r["resource"] for r in rows_of(engine, tag)] == [f"{tag}:recent"]
    # And with the audit retention 0, nothing of the log is purged
    assert "audit_deleted" not in purge_expired(engine, 0, now + dt.timedelta(days=999),
                                                audit_retention_days=0)
    assert len(rows_of(engine, tag)) == 1


# -- query -----------------------------------------------------------------------

def test_query_filters_by_time_actor_action_and_resource(engine: Engine, tag: str) -> None:
    # Given rows of two actors and actions, a day apart
    now = dt.datetime.now(UTC)
    add(engine, tag, now - dt.timedelta(days=2), "key.create", "cli:ann@host", "k1")
    add(engine, tag, now - dt.timedelta(days=1), "key.revoke", "cli:ann@host", "k1")
    add(engine, tag, now - dt.timedelta(hours=1), "template.put", "admin-key", "t1")

    def names(**filters: object) -> list[tuple[str, str]]:
        found = audit.query(engine, **{"resource": f"{tag}:*", **filters})  # type: ignore[arg-type]
        return [(str(r["action"]), str(r["resource"]).split(":")[1]) for r in found]

    # Then each filter narrows, newest first
    assert names() == [("template.put", "t1"), ("key.revoke", "k1"), ("key.create", "k1")]
    assert names(since=now - dt.timedelta(hours=36)) == [("template.put", "t1"),
                                                          ("key.revoke", "k1")]
    assert names(until=now - dt.timedelta(hours=36)) == [("key.create", "k1")]
    assert names(actor="admin-key") == [("template.put", "t1")]
    assert names(actor="cli:*") == [("key.revoke", "k1"), ("key.create", "k1")]
    assert names(action="key.*") == [("key.revoke", "k1"), ("key.create", "k1")]
    assert names(action="key.create") == [("key.create", "k1")]
    assert names(resource=f"{tag}:t1") == [("template.put", "t1")]
    assert names(limit=1, offset=1) == [("key.revoke", "k1")]
    # And a prefix is a prefix, not a pattern: % and _ in it match only themselves
    assert names(action="key_%*") == []


def test_query_refuses_a_bad_page(engine: Engine) -> None:
    with pytest.raises(ValueError, match="limit"):
        audit.query(engine, limit=0)
    with pytest.raises(ValueError, match="offset"):
        audit.query(engine, offset=-1)


# -- what is written -------------------------------------------------------------

def test_no_secret_is_written(engine: Engine, tag: str) -> None:
    # When a caller passes a fleet key and secret-named fields, by mistake
    key = "lfk_0123456789ab_" + "S3cretS3cretS3cretS3cretS3cret"
    assert audit.record(engine, f"cli:{key}", "key.create", f"{tag}:{key}",
                        before={"password": "hunter2", "nested": [{"admin_key": "adm1n"}]},
                        after={"key": key, "note": f"made {key}", "key_id": "0123456789ab",
                               "api_token": "tok"})
    # Then the row keeps the key's id and drops every secret
    row = rows_of(engine, tag)[0]
    flat = repr(row)
    for secret in ("S3cret", "hunter2", "adm1n", "'tok'"):
        assert secret not in flat, secret
    assert row["resource"] == f"{tag}:lfk_0123456789ab_[redacted]"
    assert row["after"] == {"key": "[redacted]", "note": "made lfk_0123456789ab_[redacted]",
                            "key_id": "0123456789ab", "api_token": "[redacted]"}
    assert row["before"] == {"password": "[redacted]", "nested": [{"admin_key": "[redacted]"}]}


def test_a_failed_write_never_reaches_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    # Given a database that does not answer
    dead = sync_engine("postgresql://nobody:pw@127.0.0.1:1/none?connect_timeout=1")
    before = audit.write_failures()
    # When an action is recorded
    with caplog.at_level(logging.ERROR, logger="workers.store.audit"):
        assert audit.record(dead, "cli:ann@host", "key.revoke", "key:0123456789ab") is False
        assert audit.record_once(dead, "system", "key.expire", "key:0123456789ab") is False
    # Then nothing was raised: it was logged at ERROR and counted
    assert audit.write_failures() == before + 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and "key.revoke on key:0123456789ab" in errors[0].getMessage()
    assert "pw" not in errors[0].getMessage()


def test_record_once_writes_an_action_on_a_resource_once(engine: Engine, tag: str) -> None:
    assert audit.record_once(engine, "system", "key.expire", f"{tag}:k")
    assert not audit.record_once(engine, "system", "key.expire", f"{tag}:k")
    assert audit.record_once(engine, "system", "key.expire", f"{tag}:other")
    assert len(rows_of(engine, tag)) == 2


def test_recording_writes_one_row_however_the_action_ends(engine: Engine, tag: str) -> None:
    # An action that went well, one refused and one that failed
    with audit.recording(engine, "admin-key", "template.put", f"{tag}:ok") as entry:
        entry.after = {"version": 3}
    with pytest.raises(KeyError), audit.recording(engine, "admin-key", "template.put",
                                                  f"{tag}:refused", refusals=(KeyError,)):
        raise KeyError("no such template")
    with pytest.raises(RuntimeError), audit.recording(engine, "admin-key", "template.put",
                                                      f"{tag}:error", refusals=(KeyError,)):
        raise RuntimeError("disk full")
    outcomes = {str(r["resource"]).split(":")[1]: (r["outcome"], r["after"])
                for r in rows_of(engine, tag)}
    assert outcomes == {
        "ok": ("ok", {"version": 3}),
        "refused": ("refused", {"error": "KeyError", "message": "'no such template'"}),
        "error": ("error", {"error": "RuntimeError", "message": "disk full"})}


def test_a_bad_outcome_is_a_failed_write_not_a_crash(engine: Engine, tag: str) -> None:
    before = audit.write_failures()
    assert not audit.record(engine, "x", "y", f"{tag}:z", outcome="maybe")  # type: ignore[arg-type]
    assert audit.write_failures() == before + 1 and rows_of(engine, tag) == []
