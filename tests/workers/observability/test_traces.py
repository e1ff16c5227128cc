"""A job as one trace: the client's submit span, the queue wait, the job in the worker,
its steps and its provider calls, linked parent to child, with the GenAI attributes.

Here the worker is a real ``WorkerRuntime`` in this process (real Redis, the simulator
over HTTP) running the real job body on the message the client sent, so that one
in-memory exporter sees both sides; ``test_worker_process.py`` does it across processes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import workers.runtime
from schemas import FleetConfig, Settings, load_config
from tasks import FleetClient
from tasks._context import ContextFilter
from tasks.names import COMPLETE
from tests.conftest import Sent, intercept_sends
from workers.bodies.jobs import JOB_BODIES
from workers.runtime import WorkerRuntime

STEPS = ["OnceStep", "LedgerStep", "StreamStep", "CancelStep", "CacheStep",
         "EmbeddingCacheStep", "BudgetStep"]


@dataclasses.dataclass
class Rig:
    client: FleetClient
    fleet: FleetConfig
    sent: list[tuple[str, Any]]

    def run_sent(self) -> None:
        """The worker's side: the job bodies on the messages the client sent."""
        while self.sent:
            name, payload = self.sent.pop(0)
            JOB_BODIES[name](payload)


@pytest.fixture()
def rig(spans: InMemorySpanExporter, redis_url: str, fleet_env: dict[str, str], sim: Any,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    """A client whose messages are kept, and this process's worker runtime (built while
    tracing is on, as a worker process builds it after its set-up)."""
    settings, fleet = load_config(Settings.from_env(fleet_env))
    settings = dataclasses.replace(settings, database_url=None)  # rows stay in the spool
    runtime = WorkerRuntime(fleet, settings, redis_url, env={})
    monkeypatch.setattr(workers.runtime, "_runtime", runtime)
    client = FleetClient(redis_url=redis_url, fleet=fleet, settings=settings, agent="tracer")
    sent: list[tuple[str, Any]] = []

    def keep(message: Sent) -> bool:
        sent.append((message.name, message.args[0]))
        return False  # run here, by this process's bodies

    intercept_sends(client, keep)
    try:
        yield Rig(client, fleet, sent)
    finally:
        client.close()
        runtime.close()


def by_name(spans: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    found: dict[str, ReadableSpan] = {}
    for span in spans.get_finished_spans():
        found.setdefault(span.name, span)
    return found


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_a_job_is_one_trace_from_submit_to_its_provider_call(rig: Rig,
                                                             spans: InMemorySpanExporter,
                                                             caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    # Given a tracing client and worker, whose log handler adds the job's context (as
    # those of the fleet's processes do)
    caplog.set_level(logging.INFO, logger="httpx")
    caplog.handler.addFilter(ContextFilter())
    # When a job is submitted and the worker runs it
    handle = rig.client.submit(f"trace me {time.time_ns()}", tier="simple", user="u1",
                               max_tokens=16)
    (name, payload), = rig.sent
    assert name == COMPLETE
    rig.run_sent()
    result = handle.get(timeout=30)
    # Then the job carries its submit span's W3C context
    seen = by_name(spans)
    submit, queue, job = seen["llmfleet.submit"], seen["llmfleet.queue"], seen["llmfleet.job"]
    trace_id = format(submit.context.trace_id, "032x")
    assert payload["trace"] == {
        "trace_id": trace_id,
        "traceparent": f"00-{trace_id}-{submit.context.span_id:016x}-"
                       f"{int(submit.context.trace_flags):02x}"}
    # And every span of the job is in that trace
    assert {s.context.trace_id for s in spans.get_finished_spans()} == {submit.context.trace_id}
    # And the queue wait and the job are the submit span's children, the wait from the
    # job's submission to the worker's start
    assert submit.kind == SpanKind.PRODUCER and submit.parent is None
    assert parent_of(queue) == parent_of(job) == submit.context.span_id
    assert queue.start_time == int(payload["submitted_at"] * 1e9)
    assert queue.end_time is not None and job.start_time is not None
    assert queue.end_time <= job.start_time and job.kind == SpanKind.CONSUMER
    # And the steps nest in their order under the job, the provider call under the last
    steps = [seen[f"llmfleet.step {step}"] for step in STEPS]
    parents = [job, *steps]
    for step, parent in zip(steps, parents, strict=False):
        assert parent_of(step) == parent.context.span_id, step.name
    model = rig.fleet.tiers["simple"].models[0]
    call = seen[f"chat {model}"]
    assert parent_of(call) == steps[-1].context.span_id and call.kind == SpanKind.CLIENT
    # And the spans say what the GenAI conventions ask, and what it cost
    assert submit.attributes is not None and job.attributes is not None
    assert call.attributes is not None
    assert submit.attributes["llmfleet.job_id"] == result.job_id
    assert dict(call.attributes) == {
        "gen_ai.operation.name": "chat", "gen_ai.system": result.provider,
        "gen_ai.request.model": model, "gen_ai.response.model": model,
        "gen_ai.usage.input_tokens": result.usage.prompt_tokens,
        "gen_ai.usage.output_tokens": result.usage.completion_tokens,
        "llmfleet.attempt": 1}
    assert {k: job.attributes[k] for k in (
        "llmfleet.job_id", "llmfleet.agent", "llmfleet.user", "llmfleet.tier",
        "gen_ai.operation.name", "gen_ai.system", "gen_ai.response.model",
        "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "llmfleet.cost_usd",
        "llmfleet.cache_hit")} == {
        "llmfleet.job_id": result.job_id, "llmfleet.agent": "tracer", "llmfleet.user": "u1",
        "llmfleet.tier": "simple", "gen_ai.operation.name": "chat",
        "gen_ai.system": result.provider, "gen_ai.response.model": result.model,
        "gen_ai.usage.input_tokens": result.usage.prompt_tokens,
        "gen_ai.usage.output_tokens": result.usage.completion_tokens,
        "llmfleet.cost_usd": result.cost_usd, "llmfleet.cache_hit": False}
    assert result.cost_usd > 0
    # And the worker's log lines of the job carry its ids (the provider call's, here)
    calls = [r for r in caplog.records
             if r.name == "httpx" and "chat/completions" in r.getMessage()]
    assert calls, "the provider call was not logged"
    assert {(r.job_id, r.agent, r.user, r.tier, r.trace_id) for r in calls} == {  # type: ignore[attr-defined]
        (result.job_id, "tracer", "u1", "simple", trace_id)}


def test_a_failed_call_is_an_error_span_and_the_fallback_its_sibling(
        rig: Rig, spans: InMemorySpanExporter, sim: Any) -> None:
    # Given the simple tier's first model answering 404 (no retry: the chain moves on)
    first, second = rig.fleet.tiers["simple"].models[:2]
    sim.configure(fail_models={rig.fleet.models[first].wire_name or first: 404})
    # When a job runs
    handle = rig.client.submit(f"fall back {time.time_ns()}", tier="simple", max_tokens=16)
    rig.run_sent()
    result = handle.get(timeout=30)
    assert result.fallback_used and result.model == second
    # Then each call is a span under the innermost step: the first an error naming its
    # type and status, the second the answer
    seen = by_name(spans)
    failed, answered = seen[f"chat {first}"], seen[f"chat {second}"]
    budget = seen["llmfleet.step BudgetStep"]
    assert parent_of(failed) == parent_of(answered) == budget.context.span_id
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes is not None and answered.attributes is not None
    assert failed.attributes["error.type"] == "ModelNotFoundError"
    assert failed.attributes["http.response.status_code"] == 404
    assert answered.status.status_code == StatusCode.UNSET
    assert answered.attributes["gen_ai.response.model"] == second
    # And the job span names the model that answered
    job = seen["llmfleet.job"]
    assert job.attributes is not None
    assert job.attributes["gen_ai.response.model"] == second
    assert job.attributes["llmfleet.fallback_used"] is True


def test_a_refused_job_ends_its_span_in_error(rig: Rig, spans: InMemorySpanExporter) -> None:
    # Given a job whose payload the worker refuses (a tier the fleet file lacks)
    rig.client.submit(f"refused {time.time_ns()}", tier="simple", max_tokens=16)
    (name, payload), = rig.sent
    rig.sent[0] = (name, {**payload, "tier": "nonexistent"})
    # When the worker runs it
    rig.run_sent()
    # Then its job span is an error naming the error's type, still in the client's trace
    seen = by_name(spans)
    job = seen["llmfleet.job"]
    assert job.status.status_code == StatusCode.ERROR
    assert job.attributes is not None and job.attributes["error.type"] == "UnknownTierError"
    assert job.context.trace_id == seen["llmfleet.submit"].context.trace_id
    assert not any(s.name.startswith("llmfleet.step") for s in spans.get_finished_spans())
