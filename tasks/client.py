"""The agent's side of the fleet: submit jobs, await results.

``FleetClient`` validates each job where it is made (a bad field fails here, before it
costs a queue slot), routes it to its tier's queue and returns a handle. It loads no
provider or database code: only the fleet file, to know the tiers and models.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError
from pydantic import ValidationError
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from schemas import (
    EMBEDDINGS_TIER,
    CompletionJob,
    CompletionResult,
    EmbeddingJob,
    FleetConfig,
    FleetUnavailableError,
    JobValidationError,
    Settings,
    load_config,
    masked_url,
    validation_error,
)
from tasks import _context
from tasks._cache import CacheShortCircuit
from tasks._discovery import find_redis_url
from tasks._publisher import Publisher
from tasks._redis import sync_client
from tasks._results import ResultWaiter
from tasks._streams import ChunkStream
from tasks._wire import JobWire
from tasks.celery_config import celery_settings
from tasks.experiments import Experiments
from tasks.handles import BatchHandle, JobHandle
from tasks.names import (
    ADMIN_QUEUE,
    AGENT_STATS,
    COMPLETE,
    COMPLETE_BATCH,
    EMBED,
    EXPERIMENTS_FEEDBACK,
    queue_for,
)
from tasks.templates import Templates, admin_call
from tasks.tools import as_tool, response_format_for

__all__ = ["BatchHandle", "FleetClient", "JobHandle"]

log = logging.getLogger(__name__)

#: Jobs per batch message: large enough to amortise a message, small enough that one
#: worker's share of a big batch does not wait on another's.
BATCH_SIZE = 32


class FleetClient:
    """Submits completion and embedding jobs to the fleet.

    Configured from the environment (REDIS_URL, LLMFLEET_CONFIG) unless told otherwise.
    """

    def __init__(self, *, redis_url: str | None = None, fleet: FleetConfig | None = None,
                 settings: Settings | None = None, agent: str = "anonymous") -> None:
        settings, loaded = load_config(settings)
        self.settings = settings
        self.fleet = fleet or loaded
        self.agent = agent
        url = self._url = redis_url or find_redis_url(settings)
        self._app = Celery("llmfleet-client", set_as_current=False)
        self._app.conf.update(celery_settings(url, url, self.fleet))
        # Results are read by our own waiter: a backend here would only SUBSCRIBE and
        # UNSUBSCRIBE on every send for nothing.
        self._app.conf.result_backend = None
        self._waiter = ResultWaiter(url)
        self._waiter.resend = lambda name, payload, queue: self._dispatch(
            name, [payload], queue, str(payload["job_id"]))
        # Job messages go by the client's own wire (``tasks._wire``), not Celery's
        # producer: a submit is one round trip, cache lookup included.
        # Two quick tries, as Celery's publish made: enough to replace a pooled
        # connection a broker restart broke; a broker that is down fails the submit at
        # once (FleetUnavailableError) instead of holding the agent.
        self._wire = JobWire(sync_client(
            url, retry=Retry(ExponentialBackoff(cap=0.1, base=0.05), 2)))
        self._publisher = Publisher(self._wire, COMPLETE, COMPLETE_BATCH)
        self._cache = CacheShortCircuit(url, self.fleet, settings)
        #: Stored prompt templates: put, get, list, render (``tasks.templates``).
        self.templates = Templates(self._app, self._waiter)
        #: A/B experiments: create, start, stop, report (``tasks.experiments``).
        self.experiments = Experiments(self._app, self._waiter)
        # A script that never calls close() still exits quietly: the waiter's loop
        # thread and connections are released when the client goes, or at exit.
        self._finalizer = weakref.finalize(self, _release, self._waiter, self._cache, self._wire,
                                           self._app)

    # -- building jobs -----------------------------------------------------

    def _completion(self, messages: Any, options: Mapping[str, Any]) -> CompletionJob:
        if isinstance(messages, str):  # a prompt: one user message
            messages = [{"role": "user", "content": messages}]
        messages, options = self.experiments.expand(messages, options, self.agent)
        messages, options = self.templates.expand(messages, options)
        data = {"agent": self.agent, **{k: v for k, v in options.items() if v is not None}}
        data["messages"] = messages
        data["reply_to"] = self._waiter.reply_channel
        data.setdefault("trace", self._trace())
        if data.get("tools") is not None:  # functions, Tool objects or OpenAI's dicts
            data["tools"] = [as_tool(tool) for tool in data["tools"]]
        model = data.pop("response_model", None)
        if model is not None:
            data["response_format"] = response_format_for(model)
        try:
            job = CompletionJob.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from None
        return job.model_copy(update={"tier": self.fleet.route(job.tier, job.model)})

    def _embedding(self, texts: Any, options: Mapping[str, Any]) -> EmbeddingJob:
        data = {"agent": self.agent, **{k: v for k, v in options.items() if v is not None},
                "reply_to": self._waiter.reply_channel}
        data.setdefault("trace", self._trace())
        data["texts"] = [texts] if isinstance(texts, str) else texts
        try:
            job = EmbeddingJob.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from None
        route = self.fleet.route(job.tier, job.model, embedding=True)
        return job.model_copy(update={"tier": route})

    def _trace(self) -> dict[str, str]:
        """The job's trace: its log lines everywhere share its id (``tasks._context``)."""
        _context.install_fallback(self.settings)
        return _context.job_trace(_context.tracer(self.settings) is not None)

    def _send(self, name: str, payload: Any, queue: str, task_id: str) -> None:
        """Send one message (a job, or a list of jobs); the outcomes of the jobs that
        name this client's reply channel come there."""
        self._expect(payload, name, queue)
        self._dispatch(name, [payload], queue, task_id)

    def _send_job(self, job: CompletionJob) -> CompletionResult | None:
        """One completion job: on its own, or with others sent at the same moment by
        other threads (``tasks._publisher``); looked up in the cache on the way, and not
        sent when the cache answers it: then its result."""
        payload = job.model_dump(mode="json")
        queue = queue_for(job.tier or "", job.priority)
        key = self._cache.key_for(job)
        try:
            self._expect(payload, COMPLETE, queue)
            raw = self._publisher.publish(payload, queue, job.job_id, key)
            if raw is None or key is None:
                return None
            hit = self._cache.answers([(job, key, raw)])[0]
            if hit is None:  # an entry that does not parse: the job goes after all
                self._publisher.publish(payload, queue, job.job_id)
                return None
        except RedisError as exc:
            self._waiter.forget(job.job_id)
            raise self._unreachable(exc) from None
        except FleetUnavailableError as exc:  # no reply channel: it was not sent
            self._waiter.forget(job.job_id)
            log.warning("not sent: %s", exc.message)
            raise
        self._waiter.forget(job.job_id)
        return hit

    def _expect(self, payload: Any, name: str = COMPLETE, queue: str | None = None) -> None:
        """The jobs of a message about to go: their outcomes will come to this client,
        and each may be sent again alone, as ``name`` on ``queue``, if its message is
        lost on the way to a worker (``tasks._results.RESEND_AFTER_S``)."""
        jobs = [job for job in (payload if isinstance(payload, list) else [payload])
                if isinstance(job, dict) and job.get("reply_to") == self._waiter.reply_channel]
        single = COMPLETE if name == COMPLETE_BATCH else name
        self._waiter.expect((job["job_id"] for job in jobs), None if queue is None else {
            job["job_id"]: (single, job, queue) for job in jobs})

    def _dispatch(self, name: str, args: list[Any], queue: str, task_id: str) -> None:
        try:
            self._wire.send(name, args, queue, task_id)
        except RedisError as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: Exception) -> FleetUnavailableError:
        # Logged as well as raised: the line carries the job's ids and trace (the log
        # context of its submit), which an agent framework may swallow with the error.
        log.warning("not sent: the broker at %s did not answer (%s)", masked_url(self._url),
                    type(exc).__name__)
        return FleetUnavailableError(
            f"cannot reach the broker at {masked_url(self._url)}: {exc}")

    # -- the agent API -----------------------------------------------------

    def submit(self, messages: Sequence[Mapping[str, Any]] | str | None = None, **options: Any
               ) -> JobHandle:
        """Enqueue one completion job on its tier's queue. Keywords are CompletionJob's
        fields: tier or model, max_tokens, temperature, agent, user, metadata, timeout,
        tools (Python functions, ``Tool``s or OpenAI's dicts), tool_choice,
        parallel_tool_calls, response_format; or ``response_model=SomePydanticModel``,
        whose schema the answer must follow (``result.parsed`` is then an instance).
        Or ``template=NAME, variables={...}, version=None`` instead of messages (rendered
        here, so its errors raise at submit), and ``experiment=NAME`` to let the
        experiment's sticky variant choose the template, version, model or tier."""
        with _context.Submission(self.settings) as submission:
            job = self._completion(messages, options)
            submission.describe(job)
            assert job.tier is not None
            model = options.get("response_model")
            hit = self._send_job(job)
            return JobHandle(self, job.job_id, hit, model)

    def submit_many(self, jobs: Iterable[Mapping[str, Any]]) -> BatchHandle:
        """Enqueue many completion jobs, batched per tier (each item takes submit's
        keywords and ``messages``); the handle returns results in order. All are
        validated before any is sent; those the cache answers (one pipelined lookup)
        are not sent at all."""
        with _context.Submission(self.settings, "llmfleet.submit_many") as submission:
            return self._submit_many(jobs, submission)

    def _submit_many(self, jobs: Iterable[Mapping[str, Any]],
                     submission: _context.Submission) -> BatchHandle:
        built: list[CompletionJob] = []
        for index, spec in enumerate(jobs):
            options = dict(spec)
            try:
                built.append(self._completion(options.pop("messages", None), options))
            except JobValidationError as exc:
                raise type(exc)(f"jobs[{index}].{exc.message}",
                                field=f"jobs[{index}].{exc.field}") from None
        if submission.span is not None:
            submission.span.set_attribute("llmfleet.jobs", len(built))
        hits = {position: hit for position, hit in enumerate(self._cache.lookup_many(built))
                if hit is not None}
        by_queue: dict[str, list[int]] = {}
        for position, job in enumerate(built):
            if position not in hits:
                queue = queue_for(job.tier or "", job.priority)
                by_queue.setdefault(queue, []).append(position)
        for queue, positions in by_queue.items():
            for start in range(0, len(positions), BATCH_SIZE):
                chunk = positions[start:start + BATCH_SIZE]
                message_id = "batch-" + built[chunk[0]].job_id
                payload = [built[p].model_dump(mode="json") for p in chunk]
                self._send(COMPLETE_BATCH, payload, queue, message_id)
        return BatchHandle(self, [job.job_id for job in built], hits)

    def complete(self, messages: Sequence[Mapping[str, Any]] | str | None = None, *,
                 timeout: float = 60, **options: Any) -> CompletionResult:
        """Submit and wait: the result of one completion job (``submit``'s arguments)."""
        result: CompletionResult = self.submit(messages, timeout=timeout, **options).get(timeout)
        return result

    async def asubmit(self, messages: Sequence[Mapping[str, Any]] | str | None = None,
                      **options: Any) -> JobHandle:
        """``submit`` for asyncio: nothing blocks the running loop (a template or an
        experiment is fetched, the cache looked up and the job sent in worker threads).
        Raises before anything is queued, or returns the handle of a queued (or cached)
        job."""
        with _context.Submission(self.settings) as submission:
            if options.get("template") is not None or options.get("experiment") is not None:
                job = await asyncio.to_thread(self._completion, messages, options)
            else:
                job = self._completion(messages, options)
            submission.describe(job)
            assert job.tier is not None
            model = options.get("response_model")
            hit = await asyncio.to_thread(self._send_job, job)
            return JobHandle(self, job.job_id, hit, model)

    async def acomplete(self, messages: Sequence[Mapping[str, Any]] | str | None = None, *,
                        timeout: float = 60, **options: Any) -> CompletionResult:
        """``complete`` for asyncio: the wait holds no thread, and nothing blocks the
        running loop."""
        handle = await self.asubmit(messages, timeout=timeout, **options)
        result: CompletionResult = await handle.wait(timeout)
        return result

    def stream(self, messages: Sequence[Mapping[str, Any]] | str | None = None, *,
               timeout: float = 60, **options: Any) -> ChunkStream:
        """Submit a completion whose answer is written as it comes, and read it:
        ``for chunk in client.stream(...)``; ``.result`` at the end is the job's result.
        Closing the stream early cancels the job."""
        handle = self.submit(messages, stream=True, timeout=timeout, **options)
        return handle.stream(timeout)

    async def astream(self, messages: Sequence[Mapping[str, Any]] | str | None = None, *,
                      timeout: float = 60, **options: Any) -> ChunkStream:
        """``stream`` for asyncio: ``async for chunk in await client.astream(...)``."""
        handle = await self.asubmit(messages, stream=True, timeout=timeout, **options)
        return handle.stream(timeout)

    def _cancel(self, job_id: str) -> None:
        self._cache.cancel(job_id)

    def embed(self, texts: str | Sequence[str], **options: Any) -> JobHandle:
        """Enqueue an embedding job on ``llm.embeddings``; ``get()`` returns an
        EmbeddingResult whose ``vectors`` follow the order of ``texts``."""
        with _context.Submission(self.settings) as submission:
            job = self._embedding(texts, options)
            submission.describe(job)
            self._send(EMBED, job.model_dump(mode="json"),
                       queue_for(job.tier or EMBEDDINGS_TIER, job.priority), job.job_id)
            return JobHandle(self, job.job_id)

    def agent_stats(self, agent: str | None = None, *, since: str | None = None,
                    timeout: float = 10) -> dict[str, Any]:
        """An agent's figures from the ledger, fleet-wide (jobs, total_cost_usd,
        cache_hits, cache_hit_rate, tokens, errors); ``since`` an ISO time."""
        task_id = "stats-" + uuid.uuid4().hex
        try:
            self._app.send_task(AGENT_STATS, args=[agent or self.agent, since],
                                queue=ADMIN_QUEUE, task_id=task_id)
        except OperationalError as exc:
            raise self._unreachable(exc) from None
        value = self._waiter.wait_task(task_id, timeout)
        if not isinstance(value, dict):
            raise FleetUnavailableError("malformed agent stats")
        return value

    def feedback(self, job_id: str, *, success: bool | None = None,
                 score: float | None = None, timeout: float = 10) -> dict[str, Any]:
        """Record the outcome an experiment measures for one of its jobs (an upsert:
        the last word counts); UnknownJobError for a job outside any experiment."""
        outcome: dict[str, Any] = admin_call(self._app, self._waiter, EXPERIMENTS_FEEDBACK,
                                             [job_id, success, score], timeout)
        return outcome

    def close(self) -> None:
        """Release connections and the waiter's thread; waits still in flight end with
        ClientClosedError. Safe to call twice; the client is unusable afterwards."""
        self._finalizer()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _release(waiter: ResultWaiter, cache: CacheShortCircuit, wire: JobWire,
             app: Celery) -> None:
    waiter.close()
    cache.close()
    wire.close()
    app.close()
