"""A job's deadline: the moment after which nobody waits for its answer."""

from __future__ import annotations

import time
from dataclasses import dataclass

from schemas import JobTimeoutError

__all__ = ["Deadline"]


@dataclass(frozen=True, slots=True)
class Deadline:
    """The epoch second after which nobody waits for the job any more (None: no limit)."""

    at: float | None
    job_id: str = ""

    def remaining(self) -> float | None:
        return None if self.at is None else self.at - time.time()

    def check(self) -> None:
        left = self.remaining()
        if left is not None and left <= 0:
            raise JobTimeoutError(f"job {self.job_id} passed its timeout before it finished",
                                  job_id=self.job_id)
