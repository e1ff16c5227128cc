"""Waiting for results: many jobs over one Redis pub/sub connection, sync or async.

Celery's Redis result backend stores a finished task's meta at
``celery-task-meta-<id>`` and publishes the same JSON on a channel of that name. A
private event loop thread watches that channel per job (``tasks._pubsub.Channels``),
reads the key (the job may be done already), takes the published state when its message
comes, and returns the first final state. Any number of threads and event loops wait
through it without a thread each.

A wait outlives a broker restart: while Redis does not answer, it tries again with
backoff until its own timeout, so a job that finishes within its timeout is answered
whatever Redis did meanwhile. ``close`` ends the waits in flight with
``ClientClosedError`` instead of leaving their callers hanging.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas import (
    ClientClosedError,
    FleetUnavailableError,
    JobTimeoutError,
    StreamChunk,
    WorkerError,
)
from tasks._pubsub import Channels, Watch
from tasks._streams import read_chunks, stream_pool

__all__ = ["ResultWaiter"]

META_KEY = "celery-task-meta-{}"
_FINAL = {"SUCCESS", "FAILURE", "REVOKED"}
#: Seconds between reads of the key while no message comes (a reconnect drops what
#: was published meanwhile).
_RECHECK_S = 5.0
#: Backoff between tries while Redis does not answer: from the first to the last.
_RETRY_FIRST_S, _RETRY_MAX_S = 0.1, 2.0
#: Connections of one client's waiter: its pub/sub one and those its GETs share.
MAX_CONNECTIONS = 16


class _Expired(Exception):
    """The wait's own timeout passed (apart from a builtin TimeoutError, which a
    connection to a Redis that does not answer raises too)."""


def _final_meta(raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) and meta.get("status") in _FINAL else None


def outcome_of(meta: dict[str, Any]) -> Any:
    """The task's return value, or raise when the task itself failed."""
    if meta["status"] == "SUCCESS":
        return meta.get("result")
    detail = meta.get("result") or {}
    kind = detail.get("exc_type", meta["status"]) if isinstance(detail, dict) else meta["status"]
    raise WorkerError(f"the task ended in {meta['status']} ({kind})")


class ResultWaiter:
    """One per client. ``wait`` blocks a thread; ``await_`` suits any event loop."""

    def __init__(self, redis_url: str) -> None:
        self._url = redis_url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="llmfleet-results")
        self._thread.start()
        self._redis: aioredis.Redis | None = None
        self._channels: Channels | None = None
        self._streams: aioredis.Redis | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._in_flight: set[concurrent.futures.Future[dict[str, Any]]] = set()

    def _start(self, job_id: str, timeout: float | None
               ) -> concurrent.futures.Future[dict[str, Any]]:
        with self._lock:
            if self._closed:
                raise ClientClosedError("the client is closed: make a new FleetClient")
            future = asyncio.run_coroutine_threadsafe(self._wait(job_id, timeout), self._loop)
            self._in_flight.add(future)
        future.add_done_callback(self._in_flight.discard)
        return future

    def wait(self, job_id: str, timeout: float | None) -> Any:
        future = self._start(job_id, timeout)
        try:
            return outcome_of(future.result())
        except concurrent.futures.CancelledError:
            raise ClientClosedError(f"the client was closed while waiting for {job_id}") \
                from None

    async def await_(self, job_id: str, timeout: float | None) -> Any:
        future = self._start(job_id, timeout)
        try:
            return outcome_of(await asyncio.wrap_future(future))
        except asyncio.CancelledError:
            if future.cancelled() and self._closed:
                raise ClientClosedError(
                    f"the client was closed while waiting for {job_id}") from None
            future.cancel()  # the caller itself was cancelled: stop waiting for it
            raise

    def chunks(self, job_id: str, timeout: float | None, after: int = -1
               ) -> AsyncIterator[StreamChunk]:
        """A streamed job's chunks (``tasks._streams.read_chunks``), to be iterated on
        this waiter's loop."""
        if self._streams is None:
            self._streams = stream_pool(self._url)
        return read_chunks(self._streams, job_id, timeout, after)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def close(self) -> None:
        """End every wait in flight (ClientClosedError), then the connections and the
        loop thread. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._in_flight)
        for future in pending:
            future.cancel()
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    async def _shutdown(self) -> None:
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
        if self._channels is not None:
            await self._channels.close()
        for client in (self._redis, self._streams):
            if client is not None:
                await client.aclose()
                # A pool handed to Redis() is not closed with it.
                await client.connection_pool.disconnect()

    async def _wait(self, job_id: str, timeout: float | None) -> dict[str, Any]:
        key = META_KEY.format(job_id)
        redis, channels = self._connect()
        loop = self._loop
        deadline = None if timeout is None else loop.time() + timeout
        delay = _RETRY_FIRST_S
        while True:
            try:
                async with channels.watch(key) as published:
                    return await self._poll(redis, key, published, deadline)
            except _Expired:
                raise JobTimeoutError(f"no result for job {job_id} within {timeout}s",
                                      job_id=job_id, timeout=timeout) from None
            except (RedisError, OSError) as exc:  # TimeoutError too: a connect timed out
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= delay:
                    raise FleetUnavailableError(
                        f"the result backend did not answer until job {job_id}'s timeout "
                        f"of {timeout}s ({type(exc).__name__})") from exc
                await asyncio.sleep(delay)
                delay = min(_RETRY_MAX_S, delay * 2)

    async def _poll(self, redis: aioredis.Redis, key: str, published: Watch,
                    deadline: float | None) -> dict[str, Any]:
        """The result once its key holds a final state: read at first (the job may be
        done already), taken from its message when one comes (the same JSON as the
        key), and read again now and then (a reconnect drops what was published)."""
        meta = _final_meta(await redis.get(key))
        while meta is None:
            left = _RECHECK_S if deadline is None else deadline - self._loop.time()
            if left <= 0:
                raise _Expired
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(published.wait(), min(left, _RECHECK_S))
            if published.is_set():
                published.clear()
                meta = _final_meta(published.data)
            if meta is None:
                meta = _final_meta(await redis.get(key))
        return meta

    def _connect(self) -> tuple[aioredis.Redis, Channels]:
        if self._redis is None or self._channels is None:
            # Waiters queue for a connection rather than fail when many GET at once.
            pool = aioredis.BlockingConnectionPool.from_url(
                self._url, max_connections=MAX_CONNECTIONS, timeout=None)
            self._redis = aioredis.Redis(connection_pool=pool)
            self._channels = Channels(self._redis)
        return self._redis, self._channels
