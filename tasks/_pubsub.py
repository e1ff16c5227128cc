"""One Redis pub/sub connection per process, fanning messages out to watchers.

Used by the client's result waiter (its reply channel, on which workers publish the
outcomes of its jobs, and a job's wake channel for jobs of other clients), and by the
workers (a duplicate delivery and identical jobs wait on a job's wake channel). A
message may be lost in a reconnect: watchers also poll, so one lost costs a poll
interval.

Commands go one at a time (``_lock``): redis-py's PubSub takes its connection from the
pool on first use without a lock, so concurrent first subscribes would each take one
and all but the last stay checked out for good.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tasks._redis import as_text

__all__ = ["Channels", "Watch"]


class Watch(asyncio.Event):
    """Set whenever a message arrives on the watched channel; ``data`` is the last
    message's payload (a watcher may use it and spare itself a read)."""

    data: bytes | str | None = None


class Channels:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._pubsub: Any = redis.pubsub(ignore_subscribe_messages=True)  # partly untyped
        self._lock = asyncio.Lock()
        self._events: dict[str, set[Watch]] = {}
        self._handlers: dict[str, Callable[[bytes], None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._watched = asyncio.Event()  # set while anyone watches: the reader sleeps

    @contextlib.asynccontextmanager
    async def watch(self, channel: str) -> AsyncIterator[Watch]:
        """An event set whenever a message arrives on ``channel`` (clear it to wait
        again), holding the message; subscribed for as long as anyone watches."""
        event = Watch()
        watchers = self._events.setdefault(channel, set())
        watchers.add(event)
        self._watched.set()
        try:
            if len(watchers) == 1:
                with contextlib.suppress(RedisError, OSError):
                    async with self._lock:
                        await self._pubsub.subscribe(channel)
                    if self._reader is None or self._reader.done():
                        self._reader = asyncio.get_running_loop().create_task(self._read())
            yield event
        finally:
            watchers.discard(event)
            if not watchers and self._events.get(channel) is watchers:
                del self._events[channel]
                # A gone connection needs no unsubscribe; the next subscribe reconnects.
                with contextlib.suppress(RedisError, OSError):
                    async with self._lock:
                        await self._pubsub.unsubscribe(channel)

    async def listen(self, channel: str, handler: Callable[[bytes], None]) -> None:
        """Call ``handler`` with every message of ``channel`` from now on (a reconnect
        subscribes again, losing what was published meanwhile)."""
        self._handlers[channel] = handler
        self._watched.set()
        async with self._lock:
            await self._pubsub.subscribe(channel)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            if not self._events and not self._handlers:
                self._watched.clear()
                await self._watched.wait()
                continue
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError, RuntimeError):
                # RuntimeError: no subscription yet on a fresh connection.
                await asyncio.sleep(0.1)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            name = as_text(channel)
            handler = self._handlers.get(name)
            if handler is not None:
                handler(message.get("data"))
            for event in self._events.get(name, ()):
                event.data = message.get("data")
                event.set()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._pubsub.aclose()
