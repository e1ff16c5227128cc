"""What admission gives a job: its priority, and a ticket of what it holds of the
fleet's limits and provider quotas, settled when it ends."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PRIORITIES", "Priority", "Reservation", "Ticket"]

#: Never sent to a provider: it orders the fleet's own queues.
Priority = Literal["high", "normal", "low"]
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")
#: Only the fleet's own rate keys may be named (a payload could name any key).
_RATE_KEY = r"^llmfleet:(limit|quota):[^\s]{1,300}:(rpm|tpm)$"
_INFLIGHT_KEY = r"^llmfleet:limit:[^\s]{1,300}:inflight$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Reservation(_Strict):
    """``amount`` units reserved on one rate (``per_ms``: ms of the rate per unit)."""

    key: str = Field(pattern=_RATE_KEY)
    per_ms: float = Field(gt=0, le=3_600_000)
    amount: int = Field(ge=0, le=10_000_000)


class Ticket(_Strict):
    """What a job holds: tokens reserved at their worst case (settled to its usage),
    places among a limit's jobs in flight (released), and provider requests reserved
    (given back when no provider call was made: a cache hit, say)."""

    #: Admitted already: its turn was reserved and it waited for it (parked).
    admitted: bool = False
    tokens: list[Reservation] = Field(default_factory=list, max_length=32)
    slots: list[Annotated[str, Field(pattern=_INFLIGHT_KEY)]] = Field(
        default_factory=list, max_length=32)
    requests: list[Reservation] = Field(default_factory=list, max_length=32)

