"""Waiting for results: many jobs over one Redis pub/sub connection, sync or async.

A job's outcome is stored in its state key (``JOB_STATE``) and published on the reply
channel of the client that sent it (``REPLY``), which subscribes once: a job costs the
client no command to wait for it. A private event loop thread takes each outcome from its
message, keeps it until it is asked for, and reads the state key now and then, in case a
reconnect lost a message. A job this client did not send (a handle made from its id, a
request attaching to another's job) is waited for on its own wake channel (``JOB_WAKE``)
and state key. Any number of threads and event loops wait through it without a thread
each. The fleet's housekeeping tasks keep Celery's results (``wait_task``): their meta
at ``celery-task-meta-<id>``, published on a channel of that name.

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
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas import (
    ClientClosedError,
    FleetError,
    FleetUnavailableError,
    JobTimeoutError,
    StreamChunk,
    WorkerError,
)
from schemas.keys import JOB_STATE, JOB_WAKE, PARKED, REPLY
from tasks._pubsub import Channels, Watch
from tasks._redis import as_text, async_pool
from tasks._streams import read_chunks, stream_pool

__all__ = ["REPLY_CHANNEL", "ResultWaiter", "reply_message", "state_envelope"]

log = logging.getLogger(__name__)

META_KEY = "celery-task-meta-{}"
_FINAL = {"SUCCESS", "FAILURE", "REVOKED"}
#: Seconds between reads of the key while no message comes (a reconnect drops what
#: was published meanwhile).
_RECHECK_S = 5.0
#: Backoff between tries while Redis does not answer: from the first to the last.
_RETRY_FIRST_S, _RETRY_MAX_S = 0.1, 2.0
#: Connections of one client's waiter: its pub/sub one and those its GETs share.
MAX_CONNECTIONS = 16
#: Outcomes nobody asked for yet are kept this long (then, the state key answers).
_KEEP_UNCLAIMED_S = 900.0
_MAX_SLOTS = 100_000
#: States read per MGET when looking for lost jobs.
_SWEEP_CHUNK = 1000


@dataclass
class _Slot:
    """A job this client sent: its outcome once published, who waits for it, and how to
    send it again (``Resend``)."""

    outcome: bytes | None = None
    waiters: list[asyncio.Future[bytes]] = field(default_factory=list)
    since: float = field(default_factory=time.monotonic)
    message: tuple[str, dict[str, Any], str] | None = None
    sent: float = field(default_factory=time.monotonic)


#: Sends one job again: (task name, the job's payload, its queue).
Resend = Callable[[str, dict[str, Any], str], None]
#: A job nobody has claimed this long after it was sent, while its queue is empty and
#: no limit holds it, is sent again: its message was lost on the way to a worker (a
#: worker whose host went away, or that was killed, as Redis handed it the message; a
#: Redis crash between kombu's pop and its record of it). Every job a client waits for
#: the outcome of is looked at, waited on now or not (``ResultWaiter._sweep``).
#: Exactly-once makes a second copy harmless.
RESEND_AFTER_S = 30.0


#: What a job's ``reply_to`` may name (``schemas.jobs`` checks it too).
REPLY_CHANNEL = re.compile(r"^llmfleet:reply:[0-9a-f]{32}$")


def reply_message(job_id: str, outcome: str) -> str:
    """What a worker publishes on a reply channel: the job id, length first (an id is
    any 8 to 64 characters), then the outcome JSON."""
    return f"{len(job_id)}:{job_id}{outcome}"


def _split_reply(data: bytes) -> tuple[str, bytes] | None:
    head, _, rest = data.partition(b":")
    if not head.isdigit():
        return None
    size = int(head)
    return rest[:size].decode("utf-8", "replace"), rest[size:]


def state_envelope(raw: bytes | str | None) -> dict[str, Any] | None:
    """The outcome envelope a job's state key (``JOB_STATE``) holds; None while the job
    runs or waits (``run:<token>``, ``batch:waiting``), was cancelled before a start, or
    has no state."""
    if raw is None:
        return None
    text = as_text(raw)
    if not text.startswith("{"):
        return None  # run:<token>, cancelled
    try:
        envelope = json.loads(text)
    except ValueError:
        return None
    return envelope if isinstance(envelope, dict) else None


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
        self._in_flight: set[concurrent.futures.Future[Any]] = set()
        #: The channel this client's jobs name for their outcomes.
        self.reply_channel = REPLY.format(client=uuid.uuid4().hex)
        self._slots: dict[str, _Slot] = {}
        self._listening: concurrent.futures.Future[None] | None = None
        #: The loop's look for lost jobs (``_sweep``), started with the listener.
        self._sweeping: asyncio.Task[None] | None = None
        #: How a lost job is sent again (``RESEND_AFTER_S``); None: never.
        self.resend: Resend | None = None
        self.resend_after_s = RESEND_AFTER_S

    # -- jobs ---------------------------------------------------------------------------

    def expect(self, job_ids: Iterable[str],
               messages: Mapping[str, tuple[str, dict[str, Any], str]] | None = None) -> None:
        """Before jobs are sent: their outcomes will come on ``reply_channel`` (the first
        call subscribes to it, and returns once it has). ``messages``: by job id, how to
        send it again alone (task name, payload, queue), should it be lost."""
        with self._lock:
            if self._closed:
                raise ClientClosedError("the client is closed: make a new FleetClient")
            if len(self._slots) > _MAX_SLOTS:
                self._forget_old()
            for job_id in job_ids:
                slot = self._slots.setdefault(job_id, _Slot())
                if messages is not None:
                    slot.message = messages.get(job_id)
            if not self._slots:
                return
            listening = self._listening
            if listening is None:
                listening = self._listening = asyncio.run_coroutine_threadsafe(
                    self._listen(), self._loop)
        if not listening.done():
            try:
                listening.result(timeout=10)
            except (RedisError, OSError) as exc:
                with self._lock:
                    self._listening = None  # try again with the next job
                raise FleetUnavailableError(f"cannot subscribe to results: "
                                            f"{type(exc).__name__}") from None

    def forget(self, job_id: str) -> None:
        """A job ``expect``-ed that will not come after all (answered at submit, or not
        sent): its slot goes."""
        with self._lock:
            self._slots.pop(job_id, None)

    def _forget_old(self) -> None:
        cutoff = time.monotonic() - _KEEP_UNCLAIMED_S
        for job_id in [j for j, s in self._slots.items() if s.since < cutoff and not s.waiters]:
            del self._slots[job_id]

    async def _listen(self) -> None:
        _, channels = self._connect()
        await channels.listen(self.reply_channel, self._on_reply)
        if self._sweeping is None or self._sweeping.done():
            self._sweeping = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        """Every ``_RECHECK_S``, the jobs this client sent and has no outcome of, sent at
        least ``resend_after_s`` ago: one MGET of their states, and those nobody took are
        sent again (``_maybe_resend``). Whether or not anyone waits for them now: an
        agent that gets its results in turn would otherwise find a lost job only when it
        came to it."""
        while True:
            await asyncio.sleep(_RECHECK_S)
            if self.resend is None:
                continue
            now = time.monotonic()
            with self._lock:
                due = [job_id for job_id, slot in self._slots.items()
                       if slot.message is not None and slot.outcome is None
                       and now - slot.sent >= self.resend_after_s]
            with contextlib.suppress(RedisError, OSError):
                redis, _ = self._connect()
                for start in range(0, len(due), _SWEEP_CHUNK):
                    chunk = due[start:start + _SWEEP_CHUNK]
                    states = await redis.mget([JOB_STATE.format(job_id=j) for j in chunk])
                    for job_id, state in zip(chunk, states, strict=True):
                        if state is None:
                            await self._maybe_resend(redis, job_id)

    def _on_reply(self, data: bytes) -> None:
        """On the loop: a job's outcome came; hand it to its waiters, or keep it."""
        parsed = _split_reply(data) if isinstance(data, bytes) else None
        if parsed is None:
            return
        job_id, outcome = parsed
        with self._lock:
            slot = self._slots.get(job_id)
            if slot is None:
                return
            waiters, slot.waiters = slot.waiters, []
            if waiters:
                del self._slots[job_id]
            else:
                slot.outcome = outcome
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(outcome)

    def _start(self, coro: Any) -> concurrent.futures.Future[Any]:
        with self._lock:
            if self._closed:
                coro.close()
                raise ClientClosedError("the client is closed: make a new FleetClient")
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
            self._in_flight.add(future)
        future.add_done_callback(self._in_flight.discard)
        return future

    def wait(self, job_id: str, timeout: float | None) -> dict[str, Any]:
        """A job's outcome envelope (``schemas.decode_outcome`` reads it)."""
        future = self._start(self._wait_job(job_id, timeout))
        try:
            envelope: dict[str, Any] = future.result()
        except concurrent.futures.CancelledError:
            raise ClientClosedError(f"the client was closed while waiting for {job_id}") \
                from None
        return envelope

    async def await_(self, job_id: str, timeout: float | None) -> dict[str, Any]:
        future = self._start(self._wait_job(job_id, timeout))
        try:
            envelope: dict[str, Any] = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if future.cancelled() and self._closed:
                raise ClientClosedError(
                    f"the client was closed while waiting for {job_id}") from None
            future.cancel()  # the caller itself was cancelled: stop waiting for it
            raise
        return envelope

    async def _wait_job(self, job_id: str, timeout: float | None) -> dict[str, Any]:
        loop = self._loop
        with self._lock:
            slot = self._slots.get(job_id)
            if slot is not None and slot.outcome is not None:
                del self._slots[job_id]
                return self._decode(slot.outcome, job_id)
            arrived: asyncio.Future[bytes] | None = None
            if slot is not None:
                arrived = loop.create_future()
                slot.waiters.append(arrived)
        if arrived is None:  # not sent by this client: its wake channel and state key
            return await self._wait_state(job_id, timeout)
        deadline = None if timeout is None else loop.time() + timeout
        try:
            while True:
                left = _RECHECK_S if deadline is None else deadline - loop.time()
                with contextlib.suppress(TimeoutError):
                    outcome = await asyncio.wait_for(asyncio.shield(arrived),
                                                     max(0.0, min(left, _RECHECK_S)))
                    return self._decode(outcome, job_id)
                # No message yet: a reconnect may have lost it; the state key knows.
                with contextlib.suppress(RedisError, OSError):
                    redis, _ = self._connect()
                    state = await redis.get(JOB_STATE.format(job_id=job_id))
                    envelope = state_envelope(state)
                    if envelope is not None:
                        return envelope
                if deadline is not None and loop.time() >= deadline:
                    raise JobTimeoutError(f"no result for job {job_id} within {timeout}s",
                                          job_id=job_id, timeout=timeout)
        finally:
            with self._lock:
                slot = self._slots.get(job_id)
                if slot is not None and arrived in slot.waiters:
                    slot.waiters.remove(arrived)
                if slot is not None and not slot.waiters and arrived.done():
                    self._slots.pop(job_id, None)

    async def _maybe_resend(self, redis: aioredis.Redis, job_id: str) -> None:
        """Send the job again if nobody took it (no state) ``resend_after_s`` after it
        was last sent, its queue is empty (so it is not waiting there) and no limit
        holds it (parked)."""
        with self._lock:
            slot = self._slots.get(job_id)
            if (slot is None or slot.message is None or self.resend is None
                    or time.monotonic() - slot.sent < self.resend_after_s):
                return
            name, payload, queue = slot.message
        async with redis.pipeline(transaction=False) as pipe:
            pipe.llen(queue)
            pipe.zscore(PARKED, job_id)
            pipe.exists(JOB_STATE.format(job_id=job_id))
            waiting, parked, claimed = await pipe.execute()
        if waiting or parked is not None or claimed:
            return
        slot.sent = time.monotonic()
        log.warning("job %s was not taken by any worker %.0f s after it was sent, its queue "
                    "%s empty: sending it again", job_id, self.resend_after_s, queue)
        with contextlib.suppress(FleetError):
            await asyncio.get_running_loop().run_in_executor(
                None, self.resend, name, payload, queue)

    @staticmethod
    def _decode(outcome: bytes, job_id: str) -> dict[str, Any]:
        envelope = state_envelope(outcome)
        if envelope is None:
            raise WorkerError(f"malformed outcome of job {job_id}")
        return envelope

    async def _wait_state(self, job_id: str, timeout: float | None) -> dict[str, Any]:
        """A job by its state key, woken on its wake channel; retried while Redis does
        not answer, until the wait's own timeout."""
        key, channel = JOB_STATE.format(job_id=job_id), JOB_WAKE.format(job_id=job_id)
        return await self._retrying(job_id, timeout, key, channel, state_envelope)

    # -- the fleet's own tasks (Celery results) -------------------------------------------

    def wait_task(self, task_id: str, timeout: float | None) -> Any:
        """A housekeeping task's return value (Celery's result)."""
        future = self._start(self._wait_meta(task_id, timeout))
        try:
            return outcome_of(future.result())
        except concurrent.futures.CancelledError:
            raise ClientClosedError(f"the client was closed while waiting for {task_id}") \
                from None

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

    async def _wait_meta(self, task_id: str, timeout: float | None) -> dict[str, Any]:
        key = META_KEY.format(task_id)
        return await self._retrying(task_id, timeout, key, key, _final_meta)

    async def _retrying(self, job_id: str, timeout: float | None, key: str, channel: str,
                        read: Any) -> dict[str, Any]:
        redis, channels = self._connect()
        loop = self._loop
        deadline = None if timeout is None else loop.time() + timeout
        delay = _RETRY_FIRST_S
        while True:
            try:
                async with channels.watch(channel) as published:
                    return await self._poll(redis, key, published, deadline, read)
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
                    deadline: float | None, read: Any) -> dict[str, Any]:
        """The result once its key holds a final state: read at first (the job may be
        done already), read again when its channel says so (Celery's message carries
        the meta itself), and now and then (a reconnect drops what was published)."""
        meta = read(await redis.get(key))
        while meta is None:
            left = _RECHECK_S if deadline is None else deadline - self._loop.time()
            if left <= 0:
                raise _Expired
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(published.wait(), min(left, _RECHECK_S))
            if published.is_set():
                published.clear()
                meta = read(published.data)
            if meta is None:
                meta = read(await redis.get(key))
        result: dict[str, Any] = meta
        return result

    def _connect(self) -> tuple[aioredis.Redis, Channels]:
        if self._redis is None or self._channels is None:
            # Waiters queue for a connection rather than fail when many GET at once.
            pool = async_pool(self._url, max_connections=MAX_CONNECTIONS, timeout=None)
            self._redis = aioredis.Redis(connection_pool=pool)
            self._channels = Channels(self._redis)
        return self._redis, self._channels
