"""The job pipeline: route, walk the tier's model chain, call, price, answer.

Callable without Celery: ``await pipeline.complete(job)``. The job's context goes through
the steps (``workers.pipeline.steps``) and, at the core, ``_complete_chain`` -> ``_walk_chain`` ->
``AttemptRunner.run`` -> ``Provider.complete``.
A model is skipped when its context window cannot hold the request or its provider is
cooling down; a failed model hands over to the next when its error is one another model
can avoid (``ProviderError.fallback``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis

from schemas import (
    AllModelsFailedError,
    Attempt,
    CompletionJob,
    CompletionResult,
    ContextLengthError,
    EmbeddingJob,
    EmbeddingResult,
    FleetConfig,
    OutputValidationError,
    ProviderError,
    Usage,
)
from workers.pipeline.attempts import AttemptRunner
from workers.pipeline.breaker import Breaker, route_key
from workers.pipeline.deadline import Deadline
from workers.pipeline.output import check_output
from workers.pipeline.pricing import cost_of, count_tokens, estimate_prompt_tokens
from workers.pipeline.steps import JobContext, Step, compose
from workers.pipeline.streams import StreamSink, stream_call
from workers.providers import ChatRequest, Completion, Embeddings, EmbedRequest, Provider

__all__ = ["Pipeline"]

T = TypeVar("T")
ModelCall = Callable[[str, Provider], Awaitable[T]]


class Pipeline:
    """Route a job, run it through the steps, and at the core walk its model chain."""

    def __init__(self, fleet: FleetConfig, providers: dict[str, Provider],
                 breaker: Breaker, runner: AttemptRunner, steps: Sequence[Step] = (),
                 redis: aioredis.Redis | None = None) -> None:
        #: Where ``complete`` and ``embed`` send a job's writes (the job bodies send
        #: them themselves, with the job's outcome).
        self.redis = redis
        self.fleet = fleet
        self.providers = providers
        self.breaker = breaker
        self.runner = runner
        self.steps = list(steps)
        self._complete = compose(self.steps, self._complete_chain)
        self._embed = compose(self.steps, self._embed_chain)

    def context(self, job: CompletionJob | EmbeddingJob) -> JobContext:
        """Route the job and count its prompt: what every step needs to know."""
        if isinstance(job, CompletionJob):
            tier = self.fleet.route(job.tier, job.model)
            max_tokens = (job.max_tokens or self.fleet.tiers[tier].default_max_tokens
                          or self.fleet.default_max_tokens)
            prompt_tokens = estimate_prompt_tokens(job.messages, job.tools)
            fallback = job.fallback
        else:
            tier = self.fleet.route(job.tier, job.model, embedding=True)
            max_tokens, prompt_tokens, fallback = 0, sum(map(count_tokens, job.texts)), True
        chain = self.fleet.chain(tier, job.model)
        # The fleet's time limit runs from now; the job's own timeout from its submission.
        at = time.time() + self.fleet.job_time_limit_s
        if job.timeout is not None:
            at = min(at, job.submitted_at + job.timeout)
        return JobContext(job=job, fleet=self.fleet, tier=tier,
                          chain=chain if fallback else chain[:1], prompt_tokens=prompt_tokens,
                          max_tokens=max_tokens, deadline=Deadline(at=at, job_id=job.job_id))

    async def run(self, ctx: JobContext) -> CompletionResult | EmbeddingResult:
        """Run a routed job through the steps and the provider chain."""
        return await (self._complete if ctx.is_completion else self._embed)(ctx)

    async def complete(self, job: CompletionJob) -> CompletionResult:
        """A job run here, not from the queue (its writes sent when it ends)."""
        result = await self._run_whole(self.context(job))
        assert isinstance(result, CompletionResult)
        return result

    async def embed(self, job: EmbeddingJob) -> EmbeddingResult:
        result = await self._run_whole(self.context(job))
        assert isinstance(result, EmbeddingResult)
        return result

    async def _run_whole(self, ctx: JobContext) -> CompletionResult | EmbeddingResult:
        try:
            return await self.run(ctx)
        finally:
            if self.redis is not None:
                await ctx.outbox.send(self.redis)

    async def close(self) -> None:
        for step in self.steps:
            await step.close()

    # -- the innermost layer: providers --------------------------------------

    async def _complete_chain(self, ctx: JobContext) -> CompletionResult:
        job = ctx.job
        assert isinstance(job, CompletionJob)
        seen: dict[str, Any] = {}  # the last answer's parsed JSON and what was wrong

        async def call(model: str, provider: Provider) -> Completion:
            cfg = self.fleet.models[model]
            if ctx.prompt_tokens + ctx.max_tokens > cfg.context_window:
                raise ContextLengthError(
                    f"{model}: {ctx.prompt_tokens} prompt + {ctx.max_tokens} output tokens "
                    f"exceed its context window of {cfg.context_window}", model=model,
                    provider=provider.name)
            request = ChatRequest(
                model=model, wire_model=cfg.wire_name or model, messages=job.messages,
                max_tokens=ctx.max_tokens, sampling=job.sampling(), tools=job.tools,
                tool_choice=job.tool_choice, parallel_tool_calls=job.parallel_tool_calls,
                response_format=job.response_format)
            if ctx.sink is not None:  # streamed: checked once, at the end (it went out)
                completion = await stream_call(provider, request, self.runner, ctx,
                                               self.fleet.max_retries(ctx.tier))
                problem, seen["parsed"] = check_output(job, completion)
                if problem is None:
                    return completion
                raise OutputValidationError(f"{model}: the answer is {problem}", model=model,
                                            provider=provider.name, detail=problem)
            asks = self.fleet.retry.invalid_output_retries + 1
            answer: Callable[[ChatRequest], Awaitable[Completion]] = provider.complete
            if ctx.batch_answer is not None:  # answered by a batch: asking again changes nothing
                asks, answer = 1, _answered(ctx.batch_answer)
            for _ in range(asks):
                completion = await self.runner.run(
                    lambda: answer(request), model=model, provider=provider.name,
                    deadline=ctx.deadline, max_retries=self.fleet.max_retries(ctx.tier),
                    log=ctx.log, quota=ctx.quota)
                problem, seen["parsed"] = check_output(job, completion)
                if problem is None:
                    return completion
                seen["problem"] = problem
                # Billed all the same: the job pays for it; ask again.
                ctx.discarded.append((model, self._usage(ctx, completion)))
                ctx.log[-1] = ctx.log[-1].model_copy(update={"ok": False,
                                                             "error": "OutputValidationError"})
            raise OutputValidationError(f"{model}: the answer is {seen['problem']}",
                                        model=model, provider=provider.name,
                                        detail=seen["problem"])

        try:
            model, completion = await self._walk_chain(ctx.chain, ctx.tier, call, ctx.log,
                                                       ctx.sink)
        except AllModelsFailedError:
            last = ctx.log[-1] if ctx.log else None
            if last is not None and "problem" in seen and \
                    all(a.error == "OutputValidationError" for a in ctx.log if not a.ok):
                # Every model answered, none as asked: say what was wrong, not "failed".
                raise OutputValidationError(
                    f"no model of tier {ctx.tier!r} gave the answer the job asked for: "
                    f"{seen['problem']}", model=last.model, provider=last.provider,
                    detail=seen["problem"]) from None
            raise
        return self._completion_result(ctx, job, model, completion, seen.get("parsed"))

    def _usage(self, ctx: JobContext, completion: Completion) -> Usage:
        return completion.usage or Usage(
            prompt_tokens=ctx.prompt_tokens, estimated=True,
            completion_tokens=count_tokens(completion.content) + sum(
                count_tokens(c.function.arguments) for c in completion.tool_calls or ()))

    def _completion_result(self, ctx: JobContext, job: CompletionJob, model: str,
                           completion: Completion, parsed: Any) -> CompletionResult:
        """The result: the answering call's usage and cost, plus every discarded
        answer's (each at its own model's prices)."""
        usage = self._usage(ctx, completion)
        cost = cost_of(ctx.prices(model), usage)
        for other, spent in ctx.discarded:
            cost += cost_of(ctx.prices(other), spent)
            usage = Usage(prompt_tokens=usage.prompt_tokens + spent.prompt_tokens,
                          completion_tokens=usage.completion_tokens + spent.completion_tokens,
                          cached_tokens=usage.cached_tokens + spent.cached_tokens,
                          estimated=usage.estimated or spent.estimated)
        return CompletionResult(
            job_id=job.job_id, content=completion.content, finish_reason=completion.finish_reason,
            tool_calls=completion.tool_calls, parsed=parsed, model=model,
            provider=self.fleet.models[model].provider, tier=ctx.tier,
            requested_model=job.model, agent=job.agent, user=job.user, usage=usage,
            cost_usd=round(cost, 10), latency_ms=_latency(job),
            fallback_used=model != ctx.chain[0], attempt_log=ctx.log)

    async def _embed_chain(self, ctx: JobContext) -> EmbeddingResult:
        job = ctx.job
        assert isinstance(job, EmbeddingJob)

        async def call(model: str, provider: Provider) -> Embeddings:
            cfg = self.fleet.models[model]
            size = provider.config.max_batch_inputs
            batches = [job.texts[i:i + size] for i in range(0, len(job.texts), size)]

            async def one(texts: list[str]) -> Embeddings:
                request = EmbedRequest(model=model, wire_model=cfg.wire_name or model,
                                       texts=texts, dimensions=job.dimensions)
                return await self.runner.run(lambda: provider.embed(request), model=model,
                                             provider=provider.name, deadline=ctx.deadline,
                                             max_retries=self.fleet.max_retries(ctx.tier),
                                             log=ctx.log, quota=ctx.quota)

            parts = await asyncio.gather(*(one(b) for b in batches))
            known = [p.usage for p in parts if p.usage is not None]
            usage = (Usage(prompt_tokens=sum(u.prompt_tokens for u in known))
                     if len(known) == len(parts) else
                     Usage(prompt_tokens=ctx.prompt_tokens, estimated=True))
            return Embeddings(vectors=[v for p in parts for v in p.vectors], usage=usage)

        model, embeddings = await self._walk_chain(ctx.chain, ctx.tier, call, ctx.log)
        usage = embeddings.usage or Usage()
        return EmbeddingResult(
            job_id=job.job_id, vectors=embeddings.vectors,
            dimensions=len(embeddings.vectors[0]) if embeddings.vectors else 0, model=model,
            provider=self.fleet.models[model].provider, tier=ctx.tier, requested_model=job.model,
            agent=job.agent, user=job.user, usage=usage,
            cost_usd=cost_of(self.fleet.models[model], usage), latency_ms=_latency(job),
            fallback_used=model != ctx.chain[0], attempt_log=ctx.log)

    # -- the chain ---------------------------------------------------------

    async def _walk_chain(self, chain: list[str], tier: str, call: ModelCall[T],
                          log: list[Attempt], sink: StreamSink | None = None
                          ) -> tuple[str, T]:
        """The first model of ``chain`` that answers, and its answer. Once a streamed
        answer has begun (chunks went out), no other model takes over."""
        errors: list[str] = []
        for model in chain:
            provider = self.providers[self.fleet.models[model].provider]
            if await self.breaker.is_open(route_key(provider.name, model)):
                errors.append(f"{model}: cooling down after repeated failures")
                continue
            try:
                return model, await call(model, provider)
            except ProviderError as exc:
                if not exc.fallback or (sink is not None and sink.written):
                    raise
                errors.append(f"{model}: {type(exc).__name__}")
        raise AllModelsFailedError(
            f"every model of tier {tier!r} failed: " + "; ".join(errors), tier=tier,
            attempts=[a.model_dump(mode="json") for a in log])


def _answered(completion: Completion) -> Callable[[ChatRequest], Awaitable[Completion]]:
    """A provider call that a batch already answered."""
    async def answer(_: ChatRequest) -> Completion:
        return completion

    return answer


def _latency(job: CompletionJob | EmbeddingJob) -> float:
    return round(max(0.0, time.time() - job.submitted_at) * 1000, 3)
