"""Sending jobs: one message each, unless many threads of a client send at once; then the
jobs that arrive while a message is being sent go together in the next one.

A message costs the broker and the worker about as much as the jobs in it (a Celery task
each), so jobs sent together in one message (``llm.complete_batch``) are cheaper than
one message each. Nothing waits to make a batch: the first job goes at once; jobs that
come while it is on its way are gathered and sent right after it, one message per queue,
by the thread that sent the first (group commit). Each caller returns once its own job
is on the broker, or raises what sending it raised.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Publisher"]

#: Sends one message: (task name, arguments, queue, task id).
Send = Callable[[str, list[Any], str, str], None]


@dataclass
class _Gathered:
    """Jobs of one queue waiting for the message that takes them."""

    payloads: list[dict[str, Any]] = field(default_factory=list)
    sent: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class Publisher:
    def __init__(self, send: Send, single: str, batch: str, most: int = 64) -> None:
        self._send, self._single, self._batch, self._most = send, single, batch, most
        self._lock = threading.Lock()
        self._busy = False
        self._waiting: dict[str, _Gathered] = {}

    def publish(self, payload: dict[str, Any], queue: str, job_id: str) -> None:
        """Send one job; returns once it is on the broker."""
        with self._lock:
            if self._busy:
                gathered = self._waiting.setdefault(queue, _Gathered())
                gathered.payloads.append(payload)
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
            return
        try:
            self._send(self._single, [payload], queue, job_id)
        finally:
            self._drain()

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
                queue = key.split("#", 1)[0]
                first = gathered.payloads[0]
                try:
                    if len(gathered.payloads) == 1:
                        self._send(self._single, [first], queue, str(first["job_id"]))
                    else:
                        self._send(self._batch, [gathered.payloads], queue,
                                   "batch-" + str(first["job_id"]))
                except BaseException as exc:  # each caller raises it as its own
                    gathered.error = exc
                finally:
                    gathered.sent.set()
