"""Waiting for results: many jobs over one Redis pub/sub connection, sync or async.

Celery's Redis result backend stores a finished task's meta at
``celery-task-meta-<id>`` and publishes the same JSON on a channel of that name. A
private event loop thread subscribes per job, checks the key (the job may be done
already), and resolves the waiter on the first final state. Any number of threads and
event loops wait through it without a thread each.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas import FleetUnavailableError, JobTimeoutError, WorkerError

__all__ = ["ResultWaiter"]

META_KEY = "celery-task-meta-{}"
_FINAL = {"SUCCESS", "FAILURE", "REVOKED"}
_RECHECK_S = 5.0
#: Connections of one client's waiter: its pub/sub one and those its GETs share.
MAX_CONNECTIONS = 16


def _final_meta(raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    meta = json.loads(raw)
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
        self._pubsub: Any = None
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        # redis-py's PubSub takes a pool connection per concurrent first subscribe:
        # without this lock, 64 waiters starting together exhaust the pool.
        self._pubsub_lock = asyncio.Lock()

    def wait(self, job_id: str, timeout: float | None) -> Any:
        future = asyncio.run_coroutine_threadsafe(self._wait(job_id, timeout), self._loop)
        try:
            return outcome_of(future.result())
        except concurrent.futures.CancelledError:
            raise WorkerError("the result waiter was closed") from None

    async def await_(self, job_id: str, timeout: float | None) -> Any:
        future = asyncio.run_coroutine_threadsafe(self._wait(job_id, timeout), self._loop)
        return outcome_of(await asyncio.wrap_future(future))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    async def _shutdown(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._pubsub is not None:
            await self._pubsub.aclose()
        if self._redis is not None:
            await self._redis.aclose()
            # A pool handed to Redis() is not closed with it.
            await self._redis.connection_pool.disconnect()

    async def _wait(self, job_id: str, timeout: float | None) -> dict[str, Any]:
        key = META_KEY.format(job_id)
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        try:
            await self._subscribe(key, future)
            return await self._poll(key, future, timeout)
        except TimeoutError:
            raise JobTimeoutError(f"no result for job {job_id} within {timeout}s",
                                  job_id=job_id, timeout=timeout) from None
        except (RedisError, OSError) as exc:
            raise FleetUnavailableError(f"result backend unreachable: {type(exc).__name__}") \
                from exc
        finally:
            await self._unsubscribe(key, future)

    async def _poll(self, key: str, future: asyncio.Future[dict[str, Any]],
                    timeout: float | None) -> dict[str, Any]:
        """The published result, with a GET now and then in case a message was lost
        (a reconnect drops what was published meanwhile)."""
        deadline = None if timeout is None else self._loop.time() + timeout
        while True:
            meta = _final_meta(await self._client().get(key))
            if meta is not None:
                return meta
            left = _RECHECK_S if deadline is None else deadline - self._loop.time()
            if left <= 0:
                raise TimeoutError
            try:
                return await asyncio.wait_for(asyncio.shield(future), min(left, _RECHECK_S))
            except TimeoutError:
                continue

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            # Waiters queue for a connection rather than fail when many GET at once.
            pool = aioredis.BlockingConnectionPool.from_url(
                self._url, max_connections=MAX_CONNECTIONS, timeout=None)
            self._redis = aioredis.Redis(connection_pool=pool)
            self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        return self._redis

    async def _subscribe(self, key: str, future: asyncio.Future[dict[str, Any]]) -> None:
        self._client()
        waiters = self._waiters.setdefault(key, [])
        waiters.append(future)
        if len(waiters) == 1:
            async with self._pubsub_lock:
                await self._pubsub.subscribe(key)
        self._subscribed.set()
        if self._reader is None or self._reader.done():
            self._reader = self._loop.create_task(self._read())

    async def _unsubscribe(self, key: str, future: asyncio.Future[dict[str, Any]]) -> None:
        waiters = self._waiters.get(key, [])
        if future in waiters:
            waiters.remove(future)
        if not waiters and key in self._waiters:
            del self._waiters[key]
            # A gone connection needs no unsubscribe; the next subscribe reconnects.
            with contextlib.suppress(RedisError, OSError):
                async with self._pubsub_lock:
                    await self._pubsub.unsubscribe(key)

    async def _read(self) -> None:
        while True:
            if not self._waiters:
                self._subscribed.clear()
                await self._subscribed.wait()
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError):
                await asyncio.sleep(0.1)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            key = channel.decode() if isinstance(channel, bytes) else channel
            meta = _final_meta(message["data"])
            for future in self._waiters.get(key, []):
                if meta is not None and not future.done():
                    future.set_result(meta)
