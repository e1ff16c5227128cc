"""REDIS_URL into Redis clients and Celery settings (tasks/_redis.py): a plain URL as
redis-py and kombu always took it, a Sentinel URL in kombu's own form read alike by
kombu, Celery's result backend and our clients. No server is needed: nothing connects."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from kombu import Connection

from schemas import FleetConfig, Settings
from schemas.errors import ConfigError
from tasks._redis import (
    SentinelTarget,
    async_pool,
    celery_broker,
    sentinel_target,
    sync_client,
)
from tasks.celery_config import celery_settings, visibility_timeout

THREE = "sentinel://:s3cret@10.0.0.1:26379/2;sentinel://10.0.0.2:26380;sentinel://10.0.0.3"


# -- parsing ------------------------------------------------------------------------------


def test_several_sentinels_with_a_password_and_a_db() -> None:
    # Given three sentinels, the first carrying the master's password and db
    # When the URL is parsed with a master name
    target = sentinel_target(THREE, "fleet-master")
    # Then every sentinel is there, a missing port is Sentinel's own
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380),
                                ("10.0.0.3", 26379))
    # And the db and the password are the master's
    assert (target.master, target.db, target.username, target.password) == (
        "fleet-master", 2, None, "s3cret")
    assert target.master_kwargs() == {"db": 2, "password": "s3cret"}
    # And the password stays out of the repr
    assert "s3cret" not in repr(target)


def test_the_master_name_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMFLEET_SENTINEL_MASTER", raising=False)
    assert sentinel_target("sentinel://h:1").master == "mymaster"
    monkeypatch.setenv("LLMFLEET_SENTINEL_MASTER", "fleet-a")
    assert sentinel_target("sentinel://h:1").master == "fleet-a"
    assert Settings.from_env({"LLMFLEET_SENTINEL_MASTER": "fleet-b"}).sentinel_master == "fleet-b"
    assert Settings.from_env({}).sentinel_master == "mymaster"


def test_a_master_name_with_spaces_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"LLMFLEET_SENTINEL_MASTER": "my master"})
    assert caught.value.key == "LLMFLEET_SENTINEL_MASTER"


def test_username_and_quoted_password() -> None:
    target = sentinel_target("sentinel://fleet:p%40ss%3Bword@h:26379/0", "m")
    assert (target.username, target.password, target.db) == ("fleet", "p@ss;word", 0)


def test_ipv6_sentinels() -> None:
    target = sentinel_target("sentinel://[::1]:26379;sentinel://[::1]:26380", "m")
    assert target.sentinels == (("::1", 26379), ("::1", 26380))
    assert target.url() == "sentinel://[::1]:26379/0;sentinel://[::1]:26380/0"


@pytest.mark.parametrize(("url", "why"), [
    ("sentinel://h:1;redis://h:2", "every part"),
    ("sentinel://:26379", "no host"),
    ("sentinel://h:notaport", "Port"),
    ("sentinel://h:1/x", "db must be a number"),
    ("sentinel://h:1?master=x", "no query"),
    ("sentinel://h:1/1;sentinel://:other@h:2/3", "the same or none"),
    ("http://h:6379", "expected redis://"),
    ("localhost:6379", "expected redis://"),
])
def test_a_bad_url_is_a_config_error_naming_redis_url(url: str, why: str) -> None:
    # Given a URL that is neither a plain Redis URL nor a Sentinel one
    # When a client, a pool or Celery's settings are made of it
    for make in (lambda: sync_client(url), lambda: async_pool(url, 4),
                 lambda: celery_broker(url, master="m")):
        with pytest.raises(ConfigError) as caught:
            make()
        # Then a ConfigError names REDIS_URL and says what is wrong
        assert caught.value.key == "REDIS_URL"
        assert why.lower() in str(caught.value).lower()


def test_a_bad_url_does_not_show_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        sync_client("sentinel://:hunter2@h:1/x")
    assert "hunter2" not in str(caught.value)


# -- what kombu and Celery read ---------------------------------------------------------


def test_the_broker_url_reads_the_same_in_kombu() -> None:
    # Given the URL as Celery's broker takes it
    url, options = celery_broker(THREE, master="fleet-master")
    assert options["master_name"] == "fleet-master"
    # Then kombu sees the same sentinels, password and db as our clients do
    connection = Connection(url, transport_options=options)
    assert connection.transport_cls == "sentinel"
    assert (connection.password, connection.virtual_host) == ("s3cret", "2")
    hosts = [Connection(part).hostname + f":{Connection(part).port}"
             for part in connection.alt]
    assert hosts == ["10.0.0.1:26379", "10.0.0.2:26380", "10.0.0.3:26379"]
    # And after kombu moves to another sentinel (it does at each failed connect), the
    # master's password and db are still the URL's
    for _ in connection.alt:
        connection.maybe_switch_next()
        assert (connection.password, connection.virtual_host) == ("s3cret", "2")
    # And the URL parses back to the same target
    assert sentinel_target(url, "fleet-master") == sentinel_target(THREE, "fleet-master")


def test_the_result_backend_reads_the_same_sentinels() -> None:
    # Given Celery configured from a Sentinel URL
    from celery import Celery

    app = Celery("t", set_as_current=False)
    settings = celery_settings(THREE, THREE, _fleet())
    app.conf.update(settings)
    # When Celery builds its result backend
    backend: Any = app.backend
    # Then it is the Sentinel backend, on the same sentinels, db and password
    assert type(backend).__name__ == "SentinelBackend"
    params = backend.connparams
    assert [(h["host"], h["port"]) for h in params["hosts"]] == [
        ("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379)]
    assert (params["db"], params["password"]) == (2, "s3cret")
    assert settings["result_backend_transport_options"]["master_name"] == "mymaster"


def test_sentinel_options_merge_with_the_fleets_broker_options(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMFLEET_SENTINEL_MASTER", "fleet-x")
    fleet = _fleet()
    options = celery_settings(THREE, THREE, fleet)["broker_transport_options"]
    assert options["master_name"] == "fleet-x"
    assert options["visibility_timeout"] == visibility_timeout(fleet)
    assert "unacked_restore_interval" in options


# -- plain URLs, as before ----------------------------------------------------------------


@pytest.mark.parametrize("url", ["redis://localhost:6379/3", "rediss://:pw@h:6380/0",
                                 "unix:///tmp/redis.sock?db=1"])
def test_plain_urls_are_unchanged(url: str) -> None:
    # Celery gets the URL as it is, with no extra transport option
    assert celery_broker(url) == (url, {})
    settings = celery_settings(url, url, _fleet())
    assert settings["broker_url"] == settings["result_backend"] == url
    assert "master_name" not in settings["broker_transport_options"]
    # And redis-py's clients are what from_url made
    client = sync_client(url, socket_timeout=5)
    expected = redis.Redis.from_url(url, socket_timeout=5)
    assert type(client.connection_pool) is type(expected.connection_pool)
    # (the options given or read from the URL; objects of redis-py's own, one per client,
    # left aside)
    kwargs, plain = ({k: v for k, v in c.connection_pool.connection_kwargs.items()
                      if v is None or isinstance(v, str | int | float)}
                     for c in (client, expected))
    assert kwargs == plain and kwargs["socket_timeout"] == 5
    client.close()
    expected.close()
    pool = async_pool(url, 7, timeout=None)
    assert isinstance(pool, aioredis.BlockingConnectionPool)
    assert (pool.max_connections, pool.timeout) == (7, None)


# -- Sentinel clients ---------------------------------------------------------------------


def test_sentinel_clients_ask_the_sentinels_for_the_master() -> None:
    # Given a sync client and an async pool made of a Sentinel URL
    client = sync_client(THREE, master="m", socket_timeout=5)
    pool = async_pool(THREE, 9, master="m", timeout=None)
    # Then both are Sentinel pools of master "m", with the URL's db and password
    for made in (client.connection_pool, pool):
        assert type(made).__name__.endswith("SentinelPool")
        assert made.service_name == "m"  # type: ignore[attr-defined]
        assert made.connection_kwargs["db"] == 2
        assert made.connection_kwargs["password"] == "s3cret"
        hosts = [(s.connection_pool.connection_kwargs["host"],
                  s.connection_pool.connection_kwargs["port"])
                 for s in made.sentinel_manager.sentinels]  # type: ignore[attr-defined]
        assert hosts == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379)]
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 5
    # And the async pool keeps the blocking pool's semantics
    assert isinstance(pool, aioredis.BlockingConnectionPool)
    assert (pool.max_connections, pool.timeout) == (9, None)
    client.close()
    asyncio.run(pool.disconnect())


def test_the_canonical_url_writes_every_port() -> None:
    target = SentinelTarget((("a", 26379), ("b", 1)), "m", 4, "u", "p w")
    assert target.url() == "sentinel://u:p%20w@a:26379/4;sentinel://u:p%20w@b:1/4"


def test_beat_reads_the_sentinels_in_redbeats_form() -> None:
    from tasks._redis import redbeat_settings

    assert redbeat_settings("redis://h:1/0") == {"redbeat_redis_url": "redis://h:1/0"}
    settings = redbeat_settings(THREE, master="m")
    assert settings["redbeat_redis_url"] == "redis-sentinel://"
    assert settings["redbeat_redis_options"] | {"sentinel_kwargs": None} == {
        "sentinels": [["10.0.0.1", 26379], ["10.0.0.2", 26380], ["10.0.0.3", 26379]],
        "service_name": "m", "db": 2, "password": "s3cret", "sentinel_kwargs": None}


def _fleet() -> FleetConfig:
    from schemas import load_config

    return load_config(Settings.from_env({}))[1]
