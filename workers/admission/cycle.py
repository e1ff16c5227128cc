"""The order in which a worker takes jobs from its queues: high-priority queues first,
then normal, then low, except that one fetch in ``1 / low_share`` tries the low ones
first, so low jobs keep moving while high ones fill every slot. Queues of one priority
(several tiers) take turns.

kombu's Redis transport asks a "cycle" for the order of the keys of each BRPOP; this is
one, named in the worker's ``broker_transport_options`` (``queue_order_strategy``).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["PriorityCycle", "rank"]


def rank(queue: str) -> int:
    """0 for ``llm.<tier>.high``, 2 for ``.low``, 1 for the others."""
    if queue.endswith(".high"):
        return 0
    return 2 if queue.endswith(".low") else 1


class PriorityCycle:
    """kombu's cycle interface: ``update``, ``consume``, ``rotate``."""

    #: Set once per worker process from ``[admission] low_share``.
    low_share = 0.1

    def __init__(self, it: Iterable[str] | None = None) -> None:
        self.items: list[str] = []
        self._fetches = 0
        self.update(it or [])

    def update(self, it: Iterable[str]) -> None:
        self.items[:] = sorted(it, key=rank)  # stable: within a rank, the given order

    def consume(self, n: int) -> list[str]:
        self._fetches += 1
        every = round(1 / self.low_share) if self.low_share > 0 else 0
        if every and self._fetches % every == 0:
            low = [q for q in self.items if rank(q) == 2]
            return [*low, *(q for q in self.items if rank(q) != 2)][:n]
        return self.items[:n]

    def rotate(self, last_used: str) -> str:
        """Send the queue just used behind the others of its rank."""
        if last_used in self.items:
            self.items.remove(last_used)
            level = rank(last_used)
            at = max((i + 1 for i, q in enumerate(self.items) if rank(q) <= level), default=0)
            self.items.insert(at, last_used)
        return last_used

    def close(self) -> None:
        """Nothing to release."""
