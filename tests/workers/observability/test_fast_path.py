"""Not tracing (OTEL_EXPORTER_OTLP_ENDPOINT unset), a job makes nothing of OpenTelemetry:
no span, no context attached, and the pipeline's steps are bound as they always were."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest
from opentelemetry import context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import NonRecordingSpan

import workers.runtime
from schemas import Settings, load_config
from tasks import FleetClient
from tasks._context import tracer, use_tracer_provider
from tests.conftest import intercept_sends
from workers.bodies.jobs import JOB_BODIES
from workers.runtime import WorkerRuntime


@pytest.fixture()
def made(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What OpenTelemetry makes from now on: every span (recording or not) and every
    context attached."""
    seen: list[str] = []
    for cls in (ReadableSpan, NonRecordingSpan):
        original = cls.__init__

        def counting(self: Any, *args: Any, _original: Any = original, **kw: Any) -> None:
            seen.append(type(self).__name__)
            _original(self, *args, **kw)

        monkeypatch.setattr(cls, "__init__", counting)
    attach = context.attach

    def counting_attach(ctx: Any) -> Any:
        seen.append("attach")
        return attach(ctx)

    monkeypatch.setattr(context, "attach", counting_attach)
    return seen


def test_the_counter_sees_a_span_when_one_is_made(made: list[str]) -> None:
    with TracerProvider().get_tracer("t").start_as_current_span("s"):
        pass
    assert {"_Span", "attach"} <= set(made)


def test_a_job_not_traced_makes_no_span(made: list[str], redis_url: str,
                                        fleet_env: dict[str, str], sim: Any,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a process whose environment names no OTLP endpoint
    env = {k: v for k, v in fleet_env.items() if not k.startswith("OTEL_")}
    settings, fleet = load_config(Settings.from_env(env))
    assert settings.otlp_endpoint is None
    use_tracer_provider(None)
    assert tracer(settings) is None
    settings = dataclasses.replace(settings, database_url=None)
    runtime = WorkerRuntime(fleet, settings, redis_url, env={})
    monkeypatch.setattr(workers.runtime, "_runtime", runtime)
    client = FleetClient(redis_url=redis_url, fleet=fleet, settings=settings, agent="plain")
    sent: list[tuple[str, Any]] = []
    intercept_sends(client, lambda m: bool(sent.append((m.name, m.args[0]))))
    try:
        # When a job is submitted, run by the worker's body and answered
        handle = client.submit(f"untraced {time.time_ns()}", tier="simple", max_tokens=8)
        for name, payload in sent:
            JOB_BODIES[name](payload)
        result = handle.get(timeout=30)
        # Then nothing of OpenTelemetry was made, and the steps are the plain ones
        assert made == []
        assert runtime.pipeline._complete.__qualname__ == "_bind.<locals>.handler"
        # And the job still carries a trace id for its log lines
        assert len(sent[0][1]["trace"]["trace_id"]) == 32
        assert sent[0][1]["trace"]["traceparent"] is None
        assert result.content
    finally:
        client.close()
        runtime.close()
