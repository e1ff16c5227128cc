"""The pipeline's steps: layers of an onion around the provider chain.

Each step gets the job's context and the rest of the pipeline as ``call_next``; it may
answer on its own (a cache hit), refuse (a budget), or call on and look at the result
or the error on the way out (accounting). The order is declared once, in
``workers.runtime``; the innermost layer is the provider chain.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas import (
    Attempt,
    CompletionJob,
    CompletionResult,
    EmbeddingJob,
    EmbeddingResult,
    FleetConfig,
)
from workers.pipeline.attempts import Deadline

__all__ = ["Handler", "JobContext", "Result", "Step", "compose"]

Job = CompletionJob | EmbeddingJob
Result = CompletionResult | EmbeddingResult
Handler = Callable[["JobContext"], Awaitable[Result]]


@dataclass
class JobContext:
    """What the steps know of one job on its way through the pipeline."""

    job: Job
    fleet: FleetConfig
    tier: str
    #: Models to try, in order (a downgrade or ``fallback=False`` changes it).
    chain: list[str]
    #: Prompt tokens as counted here (cl100k), before any provider has answered.
    prompt_tokens: int
    #: The most output tokens the job may produce (0 for embeddings).
    max_tokens: int
    deadline: Deadline
    log: list[Attempt] = field(default_factory=list)
    #: Scratch space shared by the steps (a reservation, a cache key, ...).
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def is_completion(self) -> bool:
        return isinstance(self.job, CompletionJob)

    def move_to_tier(self, tier: str) -> None:
        """Run the job on another tier's chain (a budget's downgrade)."""
        self.tier = tier
        self.chain = self.fleet.chain(tier)


class Step:
    """A no-op layer; subclasses override ``__call__`` and call ``call_next``."""

    async def __call__(self, ctx: JobContext, call_next: Handler) -> Result:
        return await call_next(ctx)

    async def close(self) -> None:
        """Release what the step holds (connections, buffers) at shutdown."""


def compose(steps: Sequence[Step], innermost: Handler) -> Handler:
    """One handler running ``steps`` in order around ``innermost``."""
    handler = innermost
    for step in reversed(steps):
        handler = _bind(step, handler)
    return handler


def _bind(step: Step, call_next: Handler) -> Handler:
    async def handler(ctx: JobContext) -> Result:
        return await step(ctx, call_next)

    return handler
