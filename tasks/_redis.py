"""The fleet's Redis from its one URL: redis-py clients and Celery's broker settings.

REDIS_URL is a plain URL (``redis://``, ``rediss://``, ``unix://``), used as it is, or a
Redis Sentinel URL in kombu's own form, so that one string serves the broker, the result
backend and every client of ours (docs/sentinel.md)::

    sentinel://[[user]:password@]host:port[/db];sentinel://host2:port2;...

Each ``;``-separated part names one sentinel (port 26379 when left out). As kombu and
Celery read it, the db and the credentials of the first part are the master's; the
sentinels themselves are reached without a password. The name the sentinels monitor the
master under is LLMFLEET_SENTINEL_MASTER (``mymaster`` by default), read with the URL
when the URL is a Sentinel one.

A Sentinel client asks the sentinels for the master's address before each connection it
opens, and a connection that finds its server demoted (READONLY) is dropped: after a
failover, clients reconnect to the new master.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel as aiosentinel
import redis.sentinel

from schemas.errors import ConfigError
from schemas.settings import masked_url, sentinel_master

__all__ = ["SentinelTarget", "as_text", "async_pool", "celery_broker", "is_sentinel",
           "redbeat_settings", "sentinel_target", "sync_client"]

#: The schemes of plain URLs, which go to redis-py's ``from_url`` as they are.
PLAIN_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEME = "sentinel"
#: A sentinel's port when its part of the URL names none (kombu's default too).
SENTINEL_PORT = 26379
#: Connections to the sentinels themselves: one that does not answer is passed over for
#: the next rather than waited on (the master's connections keep the caller's options).
SENTINEL_KWARGS: dict[str, Any] = {"socket_connect_timeout": 1.0, "socket_timeout": 2.0}


def as_text(value: bytes | str | int | float) -> str:
    """A value read from Redis as text: our clients return bytes (no decode_responses)."""
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """A Sentinel URL, parsed: where the sentinels are, and which master of theirs."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def url(self) -> str:
        """The URL in the form kombu and Celery's result backend both read alike: every
        port written out (Celery's backend would take 6379 for a missing one), and the
        db and the credentials on every part: kombu takes them from the part it is on,
        and moves to the next part each time it fails to connect."""
        auth = ""
        if self.password is not None:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        elif self.username is not None:
            auth = f"{quote(self.username, safe='')}@"
        return ";".join(f"{SENTINEL_SCHEME}://{auth}{_netloc(host, port)}/{self.db}"
                        for host, port in self.sentinels)

    def master_kwargs(self) -> dict[str, Any]:
        """Connection options of the master's connections that the URL gives."""
        found = {"db": self.db, "username": self.username, "password": self.password}
        return {k: v for k, v in found.items() if v is not None}


def is_sentinel(url: str) -> bool:
    return url.lower().startswith(f"{SENTINEL_SCHEME}://")


def sentinel_target(url: str, master: str | None = None) -> SentinelTarget:
    """``url`` (a Sentinel URL) parsed; ``master`` defaults to LLMFLEET_SENTINEL_MASTER.
    A part that does not parse is a ConfigError naming REDIS_URL."""
    first: tuple[int, str | None, str | None] | None = None
    hosts: list[tuple[str, int]] = []
    for part in url.split(";"):
        host, port, extra = _sentinel_part(part.strip(), url)
        hosts.append((host, port))
        if first is None:
            first = extra
        elif extra != (0, None, None) and extra != first:
            raise _bad(url, "the db and the password are the master's: on the first "
                            "sentinel, and the same or none on the others")
    assert first is not None
    db, username, password = first
    return SentinelTarget(tuple(hosts), master or sentinel_master(), db, username, password)


def sync_client(url: str, *, master: str | None = None, **options: Any) -> redis.Redis:
    """A redis-py client of the fleet's Redis (of its master, behind sentinels);
    ``options`` as ``Redis.from_url`` takes them (``socket_timeout``, ...)."""
    if not is_sentinel(url):
        _check_plain(url)
        try:
            return redis.Redis.from_url(url, **options)
        except ValueError as exc:
            raise _bad(url, str(exc)) from None
    target = sentinel_target(url, master)
    # redis-py's sentinel module has no type hints.
    manager = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        target.sentinels, sentinel_kwargs=SENTINEL_KWARGS)
    client: redis.Redis = manager.master_for(  # type: ignore[no-untyped-call]
        target.master, connection_pool_class=_SyncSentinelPool, **target.master_kwargs(),
        **options)
    return client


def async_pool(url: str, max_connections: int, *, master: str | None = None,
               **options: Any) -> aioredis.ConnectionPool:
    """A blocking asyncio connection pool (a caller waits for a free connection, up to
    ``timeout``, as ``BlockingConnectionPool`` does) of the fleet's Redis, of its master
    behind sentinels; hand it to ``redis.asyncio.Redis(connection_pool=...)``, which does
    not close it: ``await pool.disconnect()`` does."""
    if not is_sentinel(url):
        _check_plain(url)
        try:
            return aioredis.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, **options)
        except ValueError as exc:
            raise _bad(url, str(exc)) from None
    target = sentinel_target(url, master)
    manager = aiosentinel.Sentinel(  # type: ignore[no-untyped-call]
        target.sentinels, sentinel_kwargs=SENTINEL_KWARGS)
    return _AsyncSentinelPool(  # type: ignore[no-untyped-call]
        target.master, manager, is_master=True, max_connections=max_connections,
        **target.master_kwargs(), **options)


def celery_broker(url: str, *, master: str | None = None) -> tuple[str, dict[str, Any]]:
    """``url`` as Celery's broker (or result backend) takes it, and the transport options
    it needs besides: none for a plain URL; for a Sentinel one, the master's name
    (``broker_transport_options`` / ``result_backend_transport_options``)."""
    if not is_sentinel(url):
        _check_plain(url)
        return url, {}
    target = sentinel_target(url, master)
    return target.url(), {"master_name": target.master,
                          "sentinel_kwargs": dict(SENTINEL_KWARGS)}


def redbeat_settings(url: str, *, master: str | None = None) -> dict[str, Any]:
    """Where beat's scheduler (RedBeat) keeps its lock and schedule: ``url`` itself, or
    for a Sentinel URL RedBeat's own form of it (``redis-sentinel://`` and options)."""
    if not is_sentinel(url):
        _check_plain(url)
        return {"redbeat_redis_url": url}
    target = sentinel_target(url, master)
    return {"redbeat_redis_url": "redis-sentinel://",
            "redbeat_redis_options": {
                "sentinels": [list(address) for address in target.sentinels],
                "service_name": target.master, "sentinel_kwargs": dict(SENTINEL_KWARGS),
                **target.master_kwargs()}}


class _SyncSentinelPool(redis.sentinel.SentinelConnectionPool):
    """Closing the pool closes the connections to the sentinels too."""

    def close(self) -> None:
        super().close()
        self.sentinel_manager.close()


class _AsyncSentinelPool(aiosentinel.SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """The master's connections, found through the sentinels, in a blocking pool.
    A full disconnect (the owner's, at its end) closes the connections to the sentinels
    too; a failover's (idle connections only) leaves them."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:
            await self.sentinel_manager.aclose()


def _sentinel_part(part: str, url: str) -> tuple[str, int, tuple[int, str | None, str | None]]:
    """One ``sentinel://`` part: its host, port, and (db, username, password)."""
    try:
        pieces = urlsplit(part)
        port = pieces.port or SENTINEL_PORT
    except ValueError as exc:
        raise _bad(url, f"{exc}") from None
    if pieces.scheme.lower() != SENTINEL_SCHEME:
        raise _bad(url, "every part between ';' must be a sentinel:// URL")
    if not pieces.hostname:
        raise _bad(url, "a sentinel:// part names no host")
    if pieces.query or pieces.fragment:
        raise _bad(url, "a sentinel:// URL takes no query (set LLMFLEET_SENTINEL_MASTER)")
    path = pieces.path.strip("/")
    if path and not path.isdigit():
        raise _bad(url, f"the db must be a number, not {path!r}")
    username = unquote(pieces.username) if pieces.username else None
    password = unquote(pieces.password) if pieces.password is not None else None
    return pieces.hostname, port, (int(path or 0), username, password)


def _check_plain(url: str) -> None:
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in PLAIN_SCHEMES:
        raise _bad(url, f"expected {', '.join(s + '://' for s in PLAIN_SCHEMES)} "
                        f"or {SENTINEL_SCHEME}://host:port[;{SENTINEL_SCHEME}://...]")


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bad(url: str, why: str) -> ConfigError:
    shown = ";".join(masked_url(part) for part in url.split(";"))
    return ConfigError(f"REDIS_URL={shown!r}: {why}", key="REDIS_URL")
