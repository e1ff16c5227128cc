"""A job's spans (OpenTelemetry), when OTEL_EXPORTER_OTLP_ENDPOINT is set.

One job is one trace; its W3C context travels in the job (``CompletionJob.trace``)::

    POST /v1/chat/completions      SERVER   the HTTP API, when the job came through it
    └── llmfleet.submit            PRODUCER the client (``tasks._context.Submission``)
        ├── llmfleet.queue                  from submitted_at to the worker's start
        └── llmfleet.job           CONSUMER the job in the worker (``JobScope``)
            └── llmfleet.step OnceStep      a span per step, nested as the steps are
                └── ... llmfleet.step BudgetStep
                    └── chat m1    CLIENT   a span per provider call (``attempt``)

with the GenAI semantic conventions' attributes (``gen_ai.operation.name``,
``gen_ai.system``, ``gen_ai.request.model``, ``gen_ai.response.model``,
``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens``) and ``llmfleet.*`` ones
(job id, agent, tier, ``llmfleet.cost_usd``, cache hit). An error is named
(``error.type``), never quoted: a provider's message stays out of spans.

Off, ``tracer()`` is None and callers make nothing: no span, no context, no import of
OpenTelemetry (``compose`` even leaves the steps unwrapped).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from schemas import Settings
from tasks._context import bind, build_provider, new_trace_id, reset, tracer, use_tracer_provider

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

__all__ = ["JobScope", "RequestScope", "attempt", "operation_handler", "record_outcome",
           "setup_tracing", "step_handler", "tracer"]

log = logging.getLogger(__name__)

C = TypeVar("C")
R = TypeVar("R")
T = TypeVar("T")

_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
#: A job's own fields its log lines carry (its trace id apart), when short strings.
_JOB_FIELDS = ("job_id", "agent", "user", "tier", "model")

#: The job span of the job running here, for ``record_outcome``.
_job_span: ContextVar[Span | None] = ContextVar("llmfleet_job_span", default=None)
#: What the provider calls made here are: ``chat`` or ``embeddings``.
_operation: ContextVar[str] = ContextVar("llmfleet_operation", default="chat")


def setup_tracing(settings: Settings, service: str) -> bool:
    """A process of the fleet traces when OTEL_EXPORTER_OTLP_ENDPOINT is set: its SDK
    provider (named ``service`` unless OTEL_SERVICE_NAME says), global, since the
    process is ours. Returns whether it traces."""
    if not settings.otlp_endpoint:
        return False
    try:
        from opentelemetry import trace

        provider = build_provider(service)
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry's SDK is not "
                    "installed (pip install 'llmfleet[otel]'): no traces")
        return False
    trace.set_tracer_provider(provider)
    use_tracer_provider(provider)
    return True


def _parent(traceparent: str | None, trace_id: str | None) -> Context | None:
    """The remote parent a job or a request names: its ``traceparent``; else, a job
    stamped by a client that did not trace, a parent in its trace id (so that its spans
    and its log lines share that id)."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    found = _TRACEPARENT.fullmatch(traceparent) if traceparent else None
    if found is not None:
        ids = int(found.group(1), 16), int(found.group(2), 16), int(found.group(3), 16)
    elif trace_id is not None:
        ids = int(trace_id, 16), int(new_trace_id()[:16], 16), int(TraceFlags.SAMPLED)
    else:
        return None
    context = SpanContext(trace_id=ids[0], span_id=ids[1], is_remote=True,
                          trace_flags=TraceFlags(ids[2]))
    return trace.set_span_in_context(NonRecordingSpan(context))


def _failed(span: Span, exc: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode

    name = type(exc).__name__
    span.set_attribute("error.type", name)
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        span.set_attribute("http.response.status_code", status)
    span.set_status(Status(StatusCode.ERROR, name))


def _trace_hex(span: Span) -> str:
    return format(span.get_span_context().trace_id, "032x")


class JobScope:
    """One job's run in a worker, around its body: the job's ids in the log context
    (read from its payload, before it is validated: only short strings, and a trace id
    of the right shape) and, when tracing, its queue and job spans."""

    __slots__ = ("_attached", "_log", "_marks", "_payload", "_span")

    def __init__(self, payload: Any) -> None:
        self._payload = payload
        self._span: Span | None = None

    def __enter__(self) -> None:
        data: Mapping[str, Any] = self._payload if isinstance(self._payload, dict) else {}
        fields = {k: v for k in _JOB_FIELDS
                  if isinstance(v := data.get(k), str) and len(v) <= 200}
        trace = data.get("trace")
        trace = trace if isinstance(trace, dict) else {}
        trace_id = trace.get("trace_id")
        if not (isinstance(trace_id, str) and _TRACE_ID.fullmatch(trace_id)):
            trace_id = None
        found = tracer()
        if found is not None:
            parent = trace.get("traceparent")
            trace_id = self._start(found, data, fields, _parent(
                parent if isinstance(parent, str) else None, trace_id))
        self._log = bind(**fields, trace_id=trace_id)

    def _start(self, found: Tracer, data: Mapping[str, Any], fields: dict[str, str],
               parent: Context | None) -> str:
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind

        now = time.time_ns()
        operation = "embeddings" if data.get("kind") == "embedding" else "chat"
        attributes = {"gen_ai.operation.name": operation,
                      **{f"llmfleet.{k}": v for k, v in fields.items() if k != "model"}}
        if "model" in fields:
            attributes["gen_ai.request.model"] = fields["model"]
        submitted = data.get("submitted_at")
        if isinstance(submitted, int | float) and 0 < submitted * 1e9 <= now:
            found.start_span("llmfleet.queue", context=parent, attributes=attributes,
                             start_time=int(submitted * 1e9)).end(end_time=now)
        span = found.start_span("llmfleet.job", context=parent, kind=SpanKind.CONSUMER,
                                attributes=attributes, start_time=now)
        self._span = span
        self._attached = context.attach(trace.set_span_in_context(span))
        self._marks = _job_span.set(span), _operation.set(operation)
        return _trace_hex(span)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        reset(self._log)
        span = self._span
        if span is not None:
            from opentelemetry import context

            _job_span.reset(self._marks[0])
            _operation.reset(self._marks[1])
            context.detach(self._attached)
            if exc is not None:
                _failed(span, exc)
            span.end()


def record_outcome(envelope: Mapping[str, Any]) -> None:
    """The job's outcome on its span: the answering model, tokens and cost, or the
    error's type. Nothing when no job span is open here."""
    span = _job_span.get()
    if span is None:
        return
    if not envelope.get("ok"):
        error = envelope.get("error") or {}
        from opentelemetry.trace import Status, StatusCode

        name = str(error.get("type") or "error")
        span.set_attribute("error.type", name)
        span.set_status(Status(StatusCode.ERROR, name))
        return
    result = envelope.get("result") or {}
    usage = result.get("usage") or {}
    span.set_attributes({
        "gen_ai.system": str(result.get("provider") or ""),
        "gen_ai.response.model": str(result.get("model") or ""),
        "gen_ai.usage.input_tokens": int(usage.get("prompt_tokens") or 0),
        "gen_ai.usage.output_tokens": int(usage.get("completion_tokens") or 0),
        "llmfleet.cost_usd": float(result.get("cost_usd") or 0.0),
        "llmfleet.cache_hit": bool(result.get("cache_hit")),
        "llmfleet.attempts": len(result.get("attempt_log") or ()),
        "llmfleet.fallback_used": bool(result.get("fallback_used")),
    })


def step_handler(found: Tracer, name: str,
                 step: Callable[[C, Callable[[C], Awaitable[R]]], Awaitable[R]],
                 call_next: Callable[[C], Awaitable[R]]) -> Callable[[C], Awaitable[R]]:
    """``step`` around ``call_next`` inside a span of its own (``llmfleet.step NAME``),
    the current one for the layers inside it."""
    span_name = f"llmfleet.step {name}"

    async def handler(ctx: C) -> R:
        with found.start_as_current_span(span_name, attributes={"llmfleet.step": name},
                                         record_exception=False,
                                         set_status_on_exception=False) as span:
            try:
                return await step(ctx, call_next)
            except BaseException as exc:
                _failed(span, exc)
                raise

    return handler


def operation_handler(innermost: Callable[[C], Awaitable[R]], is_chat: Callable[[C], bool]
                      ) -> Callable[[C], Awaitable[R]]:
    """The provider chain, its calls named ``chat`` or ``embeddings`` as its job is (an
    embedding a completion's step asks for is its own)."""

    async def handler(ctx: C) -> R:
        token: Token[str] = _operation.set("chat" if is_chat(ctx) else "embeddings")
        try:
            return await innermost(ctx)
        finally:
            _operation.reset(token)

    return handler


async def attempt(found: Tracer, call: Callable[[], Awaitable[T]], *, model: str,
                  provider: str, number: int) -> T:
    """One provider call in a span (``chat MODEL``, kind CLIENT) with its model, its
    provider and the tokens it used, or its error's type and HTTP status."""
    from opentelemetry.trace import SpanKind

    operation = _operation.get()
    span = found.start_span(f"{operation} {model}", kind=SpanKind.CLIENT, attributes={
        "gen_ai.operation.name": operation, "gen_ai.system": provider,
        "gen_ai.request.model": model, "llmfleet.attempt": number})
    try:
        value = await call()
    except BaseException as exc:
        _failed(span, exc)
        span.end()
        raise
    usage = getattr(value, "usage", None)
    span.set_attribute("gen_ai.response.model", model)
    if usage is not None:
        span.set_attributes({"gen_ai.usage.input_tokens": int(usage.prompt_tokens),
                             "gen_ai.usage.output_tokens": int(usage.completion_tokens)})
    span.end()
    return value


class RequestScope:
    """One HTTP request to the API: its trace id in the log context (its
    ``traceparent`` header's, else a new one) and, when tracing, its server span, the
    parent of the jobs it submits."""

    __slots__ = ("_attached", "_log", "_scope", "span")

    def __init__(self, scope: Mapping[str, Any]) -> None:
        self._scope = scope
        self.span: Span | None = None

    def __enter__(self) -> RequestScope:
        header = next((value.decode("latin-1") for key, value in self._scope.get("headers", ())
                       if key == b"traceparent"), None)
        found = _TRACEPARENT.fullmatch(header) if header else None
        trace_id = found.group(1) if found is not None and int(found.group(1), 16) else None
        active = tracer()
        if active is not None:
            from opentelemetry import context, trace
            from opentelemetry.trace import SpanKind

            method, path = str(self._scope.get("method", "")), str(self._scope.get("path", ""))
            self.span = active.start_span(
                f"{method} {path}", context=_parent(header, None) if trace_id else None,
                kind=SpanKind.SERVER, attributes={"http.request.method": method,
                                                  "url.path": path})
            self._attached = context.attach(trace.set_span_in_context(self.span))
            trace_id = _trace_hex(self.span)
        self._log = bind(trace_id=trace_id or new_trace_id())
        return self

    def status(self, code: int) -> None:
        """The response's status, on the span."""
        if self.span is not None:
            self.span.set_attribute("http.response.status_code", code)
            if code >= 500:
                from opentelemetry.trace import Status, StatusCode

                self.span.set_status(Status(StatusCode.ERROR, str(code)))

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        reset(self._log)
        if self.span is not None:
            from opentelemetry import context

            context.detach(self._attached)
            if exc is not None:
                _failed(self.span, exc)
            self.span.end()
