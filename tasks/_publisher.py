"""Sending jobs: one message each, unless many threads of a client send at once; then the
jobs that arrive while a message is being sent go together in the next one.

A message costs the broker and the worker about as much as the jobs in it (a Celery task
each), so jobs sent together in one message (``llm.complete_batch``) are cheaper than
one message each. Nothing waits to make a batch: the first job goes at once; jobs that
come while it is on its way are gathered and sent right after it, one message per queue,
by the thread that sent the first (group commit). Each caller returns once its own job
is on the broker, or raises what sending it raised.

A job that may read the response cache names its entry: a job sent alone is looked up
and sent in one round trip (``Wire.send_unless_cached``), a gathered group in two (one
MGET for all of them, one message for those it did not answer). Either way a cached
answer comes back to its caller instead of being sent.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Publisher", "Wire"]


class Wire(Protocol):
    """Where messages go (``tasks._wire.JobWire``; a fake one in tests)."""

    def send(self, task: str, args: list[Any], queue: str, task_id: str) -> None: ...

    def send_unless_cached(self, cache_key: str, task: str, args: list[Any], queue: str,
                           task_id: str) -> bytes | None: ...

    def cached(self, keys: list[str]) -> list[bytes | None]: ...


@dataclass
class _Gathered:
    """Jobs of one queue waiting for the message that takes them."""

    payloads: list[dict[str, Any]] = field(default_factory=list)
    keys: list[str | None] = field(default_factory=list)
    #: Cached answers found for some of them, by position.
    hits: dict[int, bytes] = field(default_factory=dict)
    sent: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class Publisher:
    def __init__(self, wire: Wire, single: str, batch: str, most: int = 64) -> None:
        self._wire, self._single, self._batch, self._most = wire, single, batch, most
        self._lock = threading.Lock()
        self._busy = False
        self._waiting: dict[str, _Gathered] = {}

    def publish(self, payload: dict[str, Any], queue: str, job_id: str,
                cache_key: str | None = None) -> bytes | None:
        """Send one job; returns once it is on the broker (None), or with the raw cache
        entry at ``cache_key`` when there is one (and then the job was not sent)."""
        with self._lock:
            if self._busy:
                gathered = self._waiting.setdefault(queue, _Gathered())
                position = len(gathered.payloads)
                gathered.payloads.append(payload)
                gathered.keys.append(cache_key)
                if len(gathered.payloads) >= self._most:
                    del self._waiting[queue]  # full: the next send takes a new one
                    self._waiting[f"{queue}#{id(gathered)}"] = gathered
                mine: _Gathered | None = gathered
            else:
                self._busy, mine = True, None
        if mine is not None:
            mine.sent.wait()
            if mine.error is not None:
                raise mine.error
            return mine.hits.get(position)
        try:
            return self._send_one(payload, queue, job_id, cache_key)
        finally:
            self._drain()

    def _send_one(self, payload: dict[str, Any], queue: str, job_id: str,
                  cache_key: str | None) -> bytes | None:
        if cache_key is None:
            self._wire.send(self._single, [payload], queue, job_id)
            return None
        return self._wire.send_unless_cached(cache_key, self._single, [payload], queue,
                                             job_id)

    def _drain(self) -> None:
        """Send what gathered meanwhile, until nothing is left; then let the next
        caller send at once again."""
        while True:
            with self._lock:
                if not self._waiting:
                    self._busy = False
                    return
                waiting, self._waiting = self._waiting, {}
            for key, gathered in waiting.items():
                try:
                    self._send_gathered(key.split("#", 1)[0], gathered)
                except BaseException as exc:  # each caller raises it as its own
                    gathered.error = exc
                finally:
                    gathered.sent.set()

    def _send_gathered(self, queue: str, gathered: _Gathered) -> None:
        payloads, keys = gathered.payloads, gathered.keys
        if len(payloads) == 1:
            hit = self._send_one(payloads[0], queue, str(payloads[0]["job_id"]), keys[0])
            if hit is not None:
                gathered.hits[0] = hit
            return
        keyed = [i for i, key in enumerate(keys) if key is not None]
        if keyed:
            found = self._wire.cached([key for key in keys if key is not None])
            gathered.hits = {i: raw for i, raw in zip(keyed, found, strict=True)
                             if raw is not None}
        rest = [p for i, p in enumerate(payloads) if i not in gathered.hits]
        if len(rest) == 1:
            self._wire.send(self._single, rest, queue, str(rest[0]["job_id"]))
        elif rest:
            self._wire.send(self._batch, [rest], queue, "batch-" + str(rest[0]["job_id"]))
