"""Provider batches, whatever the wire format: the in-memory store and the clock.

A batch's items are answered progressively: each is due at its own moment between
the batch's `start` and `finish` (evenly spread, in a shuffled order, so results come
in any order as the real services give them), and is answered when a request first
finds it due, exactly as a live call with its body would be (the wire module's
runner). Nothing runs in the background: every read of a batch brings it up to
`now` first (`advance`), so a stalled or forgotten batch costs nothing.

A batch ends in one of three ways, whichever comes first: completed (every item due,
then `settle_s` of finalizing), cancelled (`settle_s` after a cancel; items not yet
due are cancelled, answered ones kept) or expired (at `expires`; items not yet due
expire). OpenAI's batches may also fail validation: they end `failed` at `start`.
The store lives on the app's state, so batches outlive the clients that made them.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Json = dict[str, Any]
Outcome = Literal["succeeded", "errored", "canceled", "expired"]
Ending = Literal["completed", "cancelled", "expired", "failed"]
WINDOW_S = 24 * 3600.0  # completion_window "24h": both services expire a batch after it
_SETTLE_SHARE, _SETTLE_MAX_S = 0.05, 1.0


@dataclass(slots=True, eq=False)
class Item:
    """One request of a batch and, once answered, its outcome."""

    custom_id: str
    body: Json
    fail: bool = False  # drawn at creation: ends in an injected per-item error
    outcome: Outcome | None = None
    status: int = 0  # the HTTP status a live call would have had
    response: Json | None = None  # the body a live call would have had
    request_id: str = field(default_factory=lambda: f"req_{os.urandom(12).hex()}")


Runner = Callable[[Item], None]


@dataclass(slots=True, eq=False)
class StoredFile:
    """An OpenAI file: its File object and its bytes."""

    info: Json
    data: bytes


@dataclass(slots=True, eq=False)
class Batch:
    """A batch's items and its timeline (wall-clock seconds); `wire` holds the fields
    only one wire format has."""

    id: str
    items: list[Item]
    order: list[int]  # indexes of `items`, in the order they come due
    created: float
    start: float
    finish: float  # when the last item is due
    expires: float
    settle_s: float  # finalizing, or cancelling, before the end
    wire: Json = field(default_factory=dict)
    done: int = 0  # how many of `order` are answered
    cancel_at: float | None = None
    ended_at: float | None = None
    ending: Ending | None = None

    def due_by(self, at: float) -> int:
        """How many items are due by `at`."""
        if at >= self.finish:
            return len(self.items)
        if at < self.start:
            return 0
        return min(len(self.items), math.floor(len(self.items) * (at - self.start)
                                               / (self.finish - self.start)))

    def counts(self) -> dict[Outcome, int]:
        tally: dict[Outcome, int] = {"succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        for item in self.items:
            if item.outcome is not None:
                tally[item.outcome] += 1
        return tally

    def finished(self) -> list[Item]:
        """Items with an outcome, in the order they got it."""
        answered = [self.items[i] for i in self.order[:self.done]]
        return answered + [self.items[i] for i in self.order[self.done:]
                           if self.items[i].outcome is not None]


def timeline(duration_s: float, expire: bool, openai: bool) -> tuple[float, float, float]:
    """(start, finish, expires) offsets from creation for a batch of `duration_s`.

    OpenAI's batches validate and finalize for `settle_s` each side; an expiring
    batch would need twice its duration and expires halfway, so about half its
    items are answered. A batch longer than the 24-hour window expires at it."""
    settle = settle_for(duration_s)
    lead = settle if openai else 0.0
    total = duration_s * 2 if expire else duration_s
    finish = max(lead, total - lead)
    expires = duration_s if expire else WINDOW_S
    return lead, finish, min(expires, WINDOW_S)


def settle_for(duration_s: float) -> float:
    return min(duration_s * _SETTLE_SHARE, _SETTLE_MAX_S)


def advance(batch: Batch, now: float, run: Runner) -> None:
    """Answer the items due by `now` and end the batch if its time has come."""
    if batch.ended_at is not None:
        return
    if batch.ending == "failed":  # validation failed: no items, ends at start
        if now >= batch.start:
            batch.ended_at = batch.start
        return
    stop = min(now, batch.expires, math.inf if batch.cancel_at is None else batch.cancel_at)
    due = batch.due_by(stop)
    while batch.done < due:
        run(batch.items[batch.order[batch.done]])
        batch.done += 1
    ends: list[tuple[float, Ending, Outcome]] = []
    if batch.finish <= batch.expires and (batch.cancel_at is None
                                          or batch.finish <= batch.cancel_at):
        ends.append((batch.finish + batch.settle_s, "completed", "canceled"))
    if batch.cancel_at is not None:
        ends.append((batch.cancel_at + batch.settle_s, "cancelled", "canceled"))
    ends.append((batch.expires, "expired", "expired"))
    at, ending, rest = min(ends, key=lambda end: end[0])
    if now >= at:
        for index in batch.order[batch.done:]:
            batch.items[index].outcome = rest
        batch.ended_at, batch.ending = at, ending


class BatchStore:
    """Every batch and file of one simulator process, by id, oldest first."""

    __slots__ = ("batches", "files")

    def __init__(self) -> None:
        self.batches: dict[str, Batch] = {}
        self.files: dict[str, StoredFile] = {}

    def create(self, batch_id: str, items: list[Item], wire: Json, *, duration_s: float,
               expire: bool, draws: random.Random) -> Batch:
        """A new batch of `items`, due over `duration_s` from now, in a drawn order;
        `wire["fmt"]` says whose it is."""
        now = time.time()
        start, finish, expires = timeline(duration_s, expire, wire["fmt"] == "openai")
        order = list(range(len(items)))
        draws.shuffle(order)
        batch = Batch(batch_id, items, order, now, now + start, now + finish, now + expires,
                      settle_for(duration_s), wire)
        self.batches[batch_id] = batch
        return batch

    def get(self, batch_id: str, fmt: str) -> Batch | None:
        batch = self.batches.get(batch_id)
        return batch if batch is not None and batch.wire["fmt"] == fmt else None

    def page(self, fmt: str, limit: int, *, after: str | None = None,
             before: str | None = None) -> tuple[list[Batch], bool] | None:
        """Up to `limit` of `fmt`'s batches, newest first, after (older than) or before
        (newer than) a cursor; and whether more follow. None: the cursor is unknown."""
        newest = [b for b in reversed(self.batches.values()) if b.wire["fmt"] == fmt]
        ids = [b.id for b in newest]
        if after is not None:
            if after not in ids:
                return None
            rest = newest[ids.index(after) + 1:]
            return rest[:limit], len(rest) > limit
        if before is not None:
            if before not in ids:
                return None
            rest = newest[:ids.index(before)]
            return rest[-limit:], len(rest) > limit
        return newest[:limit], len(newest) > limit
