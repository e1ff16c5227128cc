"""The batcher: beat's ``batch-tick``, one at a time fleet-wide (a lock in Redis, renewed
while it works), idempotent, its state in Postgres (``workers.batching.store``).

Each round: jobs whose deadline less ``margin_s`` has come go live; waiting jobs of one
model are gathered into a batch once the oldest has waited ``gather_s`` or
``max_items`` wait; batches not yet at their provider are sent (the row is written
``submitting`` first, so a batcher killed mid-submit finds it: the provider's batch is
adopted by its metadata where the format has it, else sent again), less the jobs their
agents cancelled meanwhile; batches in flight are polled, and an ended one's answers
finish their jobs (``Finish``: the pipeline, with the answer standing in for the
provider call) while its errored, expired or missing items go live. A batch whose
jobs all went live is cancelled at its provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.asyncio.lock import Lock
from redis.exceptions import LockError

from schemas import CompletionJob, FleetConfig, ProviderError
from schemas.keys import BATCH_LOCK, CANCEL
from tasks.names import COMPLETE, queue_for
from workers.batching.store import BatchRow, BatchStore, WaitingJob
from workers.providers import BatchAPI, BatchItem, ChatRequest, Completion, custom_id

__all__ = ["Batcher", "Finish", "Send", "chat_request"]

log = logging.getLogger(__name__)
#: Run one job with its batch's answer and end it as any job ends.
Finish = Callable[[dict[str, Any], Completion], Awaitable[None]]
#: Send one message: (task, args, queue, task id).
Send = Callable[[str, list[Any], str, str], None]
#: Jobs finished at once from one ended batch.
FINISH_CONCURRENCY = 64


def chat_request(fleet: FleetConfig, job: CompletionJob, model: str) -> ChatRequest:
    """The call a live run of ``job`` on ``model`` would make (``Pipeline``'s)."""
    cfg = fleet.models[model]
    max_tokens = (job.max_tokens or fleet.tiers[job.tier or fleet.default_tier].default_max_tokens
                  or fleet.default_max_tokens)
    return ChatRequest(model=model, wire_model=cfg.wire_name or model, messages=job.messages,
                       max_tokens=max_tokens, sampling=job.sampling(), tools=job.tools,
                       tool_choice=job.tool_choice,
                       parallel_tool_calls=job.parallel_tool_calls,
                       response_format=job.response_format)


class Batcher:
    def __init__(self, redis: aioredis.Redis, store: BatchStore, fleet: FleetConfig,
                 apis: dict[str, BatchAPI], send: Send) -> None:
        self._redis, self._store, self._fleet, self._apis = redis, store, fleet, apis
        self._send = send
        self._lock_s = max(10.0, 3 * fleet.batch.poll_s)

    async def tick(self, finish: Finish) -> dict[str, int]:
        """One round, if no other batcher is at work; what it did, counted."""
        # One batcher at a time: redis-py's lock, a token of this round's own, renewed
        # while it works.
        lock = self._redis.lock(BATCH_LOCK, timeout=self._lock_s, blocking=False,
                                thread_local=False)
        if not await lock.acquire():
            return {"skipped": 1}
        figures: Counter[str] = Counter()
        work = asyncio.create_task(self._round(finish, figures))
        renewing = asyncio.create_task(self._keep(lock, work))
        try:
            await work
        except asyncio.CancelledError:
            if not work.cancelled() or asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise
            log.warning("the batcher's lock lapsed mid-round: the round stops, the next "
                        "one takes over where it stopped")
            figures["lapsed"] += 1
        finally:
            work.cancel()
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            with contextlib.suppress(LockError):  # lapsed meanwhile: nothing to give up
                await lock.release()
        return dict(figures)

    async def _round(self, finish: Finish, figures: Counter[str]) -> None:
        await self._overdue(figures)
        await self._gather(figures)
        for batch in await self._store.batches("submitting"):
            await self._guard(self._submit(batch, figures), batch)
        for batch in await self._store.batches("in_progress"):
            await self._guard(self._poll(batch, finish, figures), batch)

    async def _keep(self, lock: Lock, work: asyncio.Task[None]) -> None:
        """Renew the lock while the round works; once it has lapsed (another round may
        hold it now), stop the round: two rounds at once could send one batch twice. A
        round stopped part-way is a batcher killed part-way, which the next one finishes."""
        try:
            while True:
                await asyncio.sleep(self._lock_s / 3)
                await lock.reacquire()
        except LockError:
            work.cancel()

    async def _guard(self, work: Awaitable[None], batch: BatchRow) -> None:
        """A provider's failure leaves the batch for the next round, not the others."""
        try:
            await work
        except ProviderError as exc:
            log.warning("batch %s (%s): %s; trying again next round", batch.id,
                        batch.provider, exc.message)

    # -- the rounds' parts ---------------------------------------------------

    async def _overdue(self, figures: Counter[str]) -> None:
        by = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._fleet.batch.margin_s)
        jobs = await self._store.overdue(by)
        if jobs:
            log.warning("%d jobs near their deadline without a batch's answer: run live",
                        len(jobs))
            await self._live(jobs)
            await self._store.mark([j.job_id for j in jobs], "live", "deadline")
            figures["live_deadline"] += len(jobs)

    async def _gather(self, figures: Counter[str]) -> None:
        batch = self._fleet.batch
        ready_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=batch.gather_s)
        for group in await self._store.groups():
            if group.count < batch.max_items and group.oldest > ready_at:
                continue
            cfg = self._fleet.models.get(group.model)
            wire = (cfg.wire_name or group.model) if cfg is not None else group.model
            while await self._store.open_batch(group, wire, batch.max_items) is not None:
                figures["batches_opened"] += 1

    async def _submit(self, batch: BatchRow, figures: Counter[str]) -> None:
        api = self._apis.get(batch.provider)
        jobs = await self._not_cancelled(await self._store.jobs_of(batch.id), figures)
        if api is None or not jobs:
            await self._live(jobs)
            await self._store.mark([j.job_id for j in jobs], "live", "no-batch-api")
            await self._store.set_batch(batch.id, status="cancelled", outcome="not sent")
            return
        # A batcher that died after its provider took the batch: adopt that one.
        found = await api.find(batch.id, batch.model)
        if found is None:
            items, _ = self._items(jobs, batch.model)
            found = await api.submit(items, batch.id, batch.model)
            figures["batches_submitted"] += 1
            figures["jobs_submitted"] += len(items)
        else:
            figures["batches_adopted"] += 1
        await self._store.set_batch(batch.id, status="in_progress", provider_batch_id=found,
                                    submitted_at=dt.datetime.now(dt.UTC))

    async def _not_cancelled(self, jobs: list[WaitingJob], figures: Counter[str]
                             ) -> list[WaitingJob]:
        """The jobs still wanted. One its agent cancelled while it waited (its cancel
        key, ``JobHandle.cancel``) is not sent, since its provider would bill it: it goes
        live, where its run refuses it without a provider call and ends it as any
        cancelled job ends (its outcome to its waiters, its ledger row)."""
        if not jobs:
            return jobs
        found = await self._redis.mget([CANCEL.format(job_id=job.job_id) for job in jobs])
        cancelled = [job for job, mark in zip(jobs, found, strict=True) if mark is not None]
        if cancelled:
            await self._live(cancelled)
            await self._store.mark([job.job_id for job in cancelled], "live", "cancelled")
            figures["live_cancelled"] += len(cancelled)
        return [job for job, mark in zip(jobs, found, strict=True) if mark is None]

    def _items(self, jobs: list[WaitingJob], model: str
               ) -> tuple[list[BatchItem], dict[str, WaitingJob]]:
        items, by_id = [], {}
        for job in jobs:
            try:
                parsed = CompletionJob.model_validate(job.payload)
            except ValidationError:
                continue  # checked when it was deferred; a payload changed since runs live
            key = custom_id(job.job_id)
            items.append(BatchItem(key, chat_request(self._fleet, parsed, model)))
            by_id[key] = job
        return items, by_id

    async def _poll(self, batch: BatchRow, finish: Finish, figures: Counter[str]) -> None:
        api = self._apis.get(batch.provider)
        assert batch.provider_batch_id is not None and api is not None
        jobs = await self._store.jobs_of(batch.id)
        state = await api.state(batch.provider_batch_id, batch.model)
        if not state.ended:
            if not jobs:  # every job went live: nobody waits for it any more
                with contextlib.suppress(ProviderError):
                    await api.cancel(batch.provider_batch_id, batch.model)
                await self._store.set_batch(batch.id, status="cancelled", outcome="cancelled",
                                            ended_at=dt.datetime.now(dt.UTC))
                figures["batches_cancelled"] += 1
            return
        items, by_id = self._items(jobs, batch.model)
        requests = {item.custom_id: item.request for item in items}
        results = await api.results(batch.provider_batch_id, requests, batch.model)
        answered = [(by_id[k], r.completion) for k, r in results.items()
                    if k in by_id and r.completion is not None]
        await self._finish_all(answered, finish, figures)
        failed = [job for key, job in by_id.items()
                  if key not in results or results[key].completion is None]
        failed += [j for j in jobs if custom_id(j.job_id) not in by_id]
        if failed:
            reasons = Counter((results[custom_id(j.job_id)].error or "error")
                              if custom_id(j.job_id) in results else "missing" for j in failed)
            log.warning("batch %s: %d jobs without an answer (%s): run live", batch.id,
                        len(failed), dict(reasons))
            await self._live(failed)
            await self._store.mark([j.job_id for j in failed], "live",
                                   reasons.most_common(1)[0][0][:32])
            figures["live_item_errors"] += len(failed)
        await self._store.set_batch(batch.id, status="ended", outcome=state.status[:32],
                                    ended_at=dt.datetime.now(dt.UTC))
        figures["batches_ended"] += 1

    async def _finish_all(self, answered: list[tuple[WaitingJob, Completion]],
                          finish: Finish, figures: Counter[str]) -> None:
        """Run the answered jobs, a bounded number at once; each marked done once its
        outcome is stored (a batcher killed before that runs it again: its claim then
        answers it from that outcome, charging nothing)."""
        gate = asyncio.Semaphore(FINISH_CONCURRENCY)

        async def one(job: WaitingJob, completion: Completion) -> str:
            async with gate:
                await finish(job.payload, completion)
            return job.job_id

        step = 1000
        for start in range(0, len(answered), step):
            chunk = answered[start:start + step]
            done = await asyncio.gather(*(one(j, c) for j, c in chunk))
            await self._store.mark(list(done), "done")
            figures["jobs_answered"] += len(done)

    async def _live(self, jobs: list[WaitingJob]) -> None:
        """Send jobs back to their tier's queue, to run now (never deferred again). A
        job sent twice (a batcher killed before it recorded the first) is answered once:
        its second delivery meets the first's claim."""
        def send_all() -> None:
            for job in jobs:
                payload = {**job.payload, "live": True}
                priority = payload.get("priority", "normal")
                self._send(COMPLETE, [payload], queue_for(job.tier, priority), job.job_id)

        await asyncio.to_thread(send_all)  # the producer blocks: not on the loop
