"""The pipeline's steps: layers of an onion around the provider chain.

Each step gets the job's context and the rest of the pipeline as ``call_next``; it may
answer on its own (a cache hit), refuse (a budget), or call on and look at the result
or the error on the way out (accounting). The order is declared once, in
``workers.runtime``; the innermost layer is the provider chain.

What the steps share is typed on ``JobContext``; a step that narrows the job for the
layers inside it (the embedding cache sends on only its misses) passes them a copy
(``JobContext.narrowed``) instead of changing the job under the layers outside it.
"""

from __future__ import annotations

import dataclasses
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
    ModelConfig,
    Usage,
)
from workers.observability import traces
from workers.pipeline.attempts import QuotaUse
from workers.pipeline.deadline import Deadline
from workers.pipeline.outbox import Outbox
from workers.pipeline.pricing import batch_prices
from workers.pipeline.streams import StreamSink
from workers.providers import Completion

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
    #: Models to try, in order (a budget's downgrade or ``fallback=False`` changes it).
    chain: list[str]
    #: Prompt tokens as counted here (cl100k), before any provider has answered.
    prompt_tokens: int
    #: The most output tokens the job may produce (0 for embeddings).
    max_tokens: int
    deadline: Deadline
    #: The model that answers when nothing fails: the chain's first as routed, whatever
    #: a step does to the chain later. Cache keys name it.
    primary_model: str = ""
    #: Every provider call made for the job, shared by the copies ``narrowed`` makes.
    log: list[Attempt] = field(default_factory=list)
    #: What a cache answered instead of a provider would have cost (the ledger row's
    #: ``cost_saved_usd``); set by the caching steps.
    cost_saved_usd: float = 0.0
    #: Answers a provider billed that the job could not use (not the JSON it asked for),
    #: by model: the job pays for them too. Shared, like ``log``.
    discarded: list[tuple[str, Usage]] = field(default_factory=list)
    #: A streamed job's writer (``StreamStep`` sets it): the chain writes deltas to it.
    sink: StreamSink | None = None
    #: An agent cancelled the job before it started (seen by ``OnceStep``).
    cancelled: bool = False
    #: What the job spends of providers' quotas (set when it was admitted under them).
    quota: QuotaUse | None = None
    #: The writes the job makes when it ends, sent together (``workers.pipeline.outbox``).
    outbox: Outbox = field(default_factory=Outbox)
    #: The answer a provider's batch API gave the job (``workers.batching``): the chain
    #: takes it instead of calling its model, and the job pays batch prices.
    batch_answer: Completion | None = None

    def __post_init__(self) -> None:
        if not self.primary_model and self.chain:
            self.primary_model = self.chain[0]

    @property
    def is_completion(self) -> bool:
        return isinstance(self.job, CompletionJob)

    @property
    def batched(self) -> bool:
        return self.batch_answer is not None

    def prices(self, model: str) -> ModelConfig:
        """``model``'s prices for this job: live, or its batch prices when batched."""
        config = self.fleet.models[model]
        return batch_prices(config, self.fleet.batch.discount) if self.batched else config

    def move_to_tier(self, tier: str) -> None:
        """Run the job on another tier's chain (a budget's downgrade)."""
        self.tier = tier
        self.chain = self.fleet.chain(tier)

    def narrowed(self, **changes: Any) -> JobContext:
        """A copy for the layers inside a step, with ``changes`` (a job holding part of
        the work, its prompt tokens); the attempt log stays shared."""
        return dataclasses.replace(self, **changes)

    @property
    def charge_id(self) -> str:
        """The id this round of provider calls reserves and settles budgets under: the
        job's own for the first round (so a redelivered job settles once), a distinct
        one for a later round of the same delivery (the embedding cache's re-embed)."""
        return self.job.job_id if not self.log else f"{self.job.job_id}:{len(self.log)}"


class Step:
    """A no-op layer; subclasses override ``__call__`` and call ``call_next``."""

    async def __call__(self, ctx: JobContext, call_next: Handler) -> Result:
        return await call_next(ctx)

    async def close(self) -> None:
        """Release what the step holds (connections, buffers) at shutdown."""


def compose(steps: Sequence[Step], innermost: Handler) -> Handler:
    """One handler running ``steps`` in order around ``innermost``; when the process
    traces, each step in a span of its own (``workers.observability.traces``), else
    nothing but the steps."""
    tracer = traces.tracer()
    if tracer is None:
        handler = innermost
        for step in reversed(steps):
            handler = _bind(step, handler)
        return handler
    handler = traces.operation_handler(innermost, lambda ctx: ctx.is_completion)
    for step in reversed(steps):
        handler = traces.step_handler(tracer, type(step).__name__, step, handler)
    return handler


def _bind(step: Step, call_next: Handler) -> Handler:
    async def handler(ctx: JobContext) -> Result:
        return await step(ctx, call_next)

    return handler
