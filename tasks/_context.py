"""A job's context in logs and traces, from the agent's process on.

The log context is a ``ContextVar`` of a few short fields (``FIELDS``: the job's id,
agent, user, tier, model and its trace id); ``ContextFilter`` copies them onto log
records, so a line says which job it is about. The client binds them while it submits
a job and stamps the job's ``trace`` (``schemas.TraceContext``) with its trace id; the
API binds a trace id per request; the worker binds them again around each job
(``workers.observability``). One job's lines therefore share a trace id everywhere.

Tracing (OpenTelemetry) is on only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or its
``_TRACES_`` twin) is set; ``tracer()`` is then a tracer of the process's provider (the
one a process of the fleet set up, or the host application's), else of a provider of
our own that is not made global. Unset, ``tracer()`` is None and nothing of
OpenTelemetry is imported or made.

A library must not take over its host's logging: the client only adds its fields to its
own records (a filter on its own loggers); with ``LLMFLEET_LOG_FORMAT=json`` and no
logging configured by the host, its warnings come out as JSON lines on stderr where
Python's last-resort handler would have printed them as text.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any

from schemas import CompletionJob, EmbeddingJob, Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

__all__ = [
    "FIELDS",
    "ContextFilter",
    "Submission",
    "bind",
    "bound",
    "build_provider",
    "current",
    "install_fallback",
    "job_trace",
    "json_formatter",
    "new_trace_id",
    "reset",
    "tracer",
    "use_tracer_provider",
]

log = logging.getLogger(__name__)

#: What a log line carries of its job, when known.
FIELDS = ("job_id", "agent", "user", "tier", "model", "trace_id")

_EMPTY: Mapping[str, str] = MappingProxyType({})
_fields: ContextVar[Mapping[str, str]] = ContextVar("llmfleet_log_context", default=_EMPTY)


def current() -> Mapping[str, str]:
    """The fields bound here (this thread, this task)."""
    return _fields.get()


def bind(**fields: str | None) -> Token[Mapping[str, str]]:
    """Add ``fields`` (those set) to the log context; ``reset`` with the token undoes it."""
    return _fields.set({**_fields.get(), **{k: v for k, v in fields.items() if v}})


def reset(token: Token[Mapping[str, str]]) -> None:
    _fields.reset(token)


@contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    token = bind(**fields)
    try:
        yield
    finally:
        _fields.reset(token)


def new_trace_id() -> str:
    """A fresh W3C trace id: 32 random hex digits."""
    return os.urandom(16).hex()


class ContextFilter(logging.Filter):
    """Copies the log context onto each record (never over a field the call set)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _fields.get().items():
            record.__dict__.setdefault(key, value)
        return True


def json_formatter() -> logging.Formatter:
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, the
    context's fields and whatever else the call put on its record."""
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter("%(levelname)s %(name)s %(message)s", timestamp="time",
                         rename_fields={"levelname": "level", "name": "logger"})


#: The client's own loggers: the only records it adds its fields to.
_OWN_LOGGERS = ("tasks", "tasks.client", "tasks._cache", "tasks._results", "tasks._streams")
_FILTER = ContextFilter()
for _name in _OWN_LOGGERS:
    logging.getLogger(_name).addFilter(_FILTER)


class _FallbackHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """JSON lines on stderr for the client's records while the process has no logging
    configured (no handler on the root logger); silent once it has."""

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            super().emit(record)


_fallback_lock = threading.Lock()
_fallback: _FallbackHandler | None = None


def install_fallback(settings: Settings) -> None:
    """With LLMFLEET_LOG_FORMAT=json: the fallback handler on the ``tasks`` logger (once
    per process). Python's last-resort handler prints warnings as text when nothing
    else would; this one prints them as JSON instead, and only then."""
    global _fallback
    if _fallback is not None or settings.log_format != "json":
        return
    with _fallback_lock:
        if _fallback is None:
            handler = _FallbackHandler(sys.stderr)
            handler.setLevel(logging.WARNING)
            handler.setFormatter(json_formatter())
            handler.addFilter(_FILTER)
            logging.getLogger("tasks").addHandler(handler)
            _fallback = handler


# -- traces ------------------------------------------------------------------

_UNDECIDED: Any = object()
_tracer: Any = _UNDECIDED
_tracer_lock = threading.Lock()


def use_tracer_provider(provider: TracerProvider | None) -> None:
    """Trace with ``provider`` from now on (a fleet process's set-up, a test's in-memory
    exporter); None: decide again from the environment at the next ``tracer()``."""
    global _tracer
    with _tracer_lock:
        _tracer = _UNDECIDED if provider is None else provider.get_tracer("llmfleet")


def tracer(settings: Settings | None = None) -> Tracer | None:
    """This process's tracer, or None when tracing is off (the fast path: one global
    read). Decided once, from ``settings`` (else the environment)."""
    found = _tracer
    if found is _UNDECIDED:
        found = _decide(settings)
    return found  # type: ignore[no-any-return]


def _decide(settings: Settings | None) -> Tracer | None:
    global _tracer
    with _tracer_lock:
        if _tracer is not _UNDECIDED:
            return _tracer  # type: ignore[no-any-return]
        settings = Settings.from_env() if settings is None else settings
        found = None
        if settings.otlp_endpoint:
            try:
                from opentelemetry import trace
                from opentelemetry.sdk.trace import TracerProvider

                host = trace.get_tracer_provider()
                provider = host if isinstance(host, TracerProvider) else \
                    build_provider("llmfleet-client")
                found = provider.get_tracer("llmfleet")
            except ImportError:
                log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry's SDK is "
                            "not installed (pip install 'llmfleet[otel]'): no traces")
        _tracer = found
        return found


def build_provider(service: str) -> TracerProvider:
    """An SDK tracer provider exporting over OTLP in batches, configured by
    OpenTelemetry's own variables (endpoint, headers, protocol: ``grpc`` needs
    opentelemetry-exporter-otlp-proto-grpc; ``http/protobuf`` is the default).
    ``service`` names it unless OTEL_SERVICE_NAME does."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
    exporter: Any
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
            OTLPSpanExporter as GrpcExporter,
        )

        exporter = GrpcExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    named = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service}
    provider = TracerProvider(resource=Resource.create(named))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def job_trace(traced: bool) -> dict[str, str]:
    """The ``trace`` a job is stamped with: the current span's trace and, as parent,
    the span itself when tracing; else the log context's trace id, or a new one."""
    if traced:
        from opentelemetry import trace

        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            trace_id = format(span.trace_id, "032x")
            return {"trace_id": trace_id, "traceparent":
                    f"00-{trace_id}-{span.span_id:016x}-{int(span.trace_flags):02x}"}
    return {"trace_id": _fields.get().get("trace_id") or new_trace_id()}


class Submission:
    """One submit, as its context sees it: the client's span (``llmfleet.submit``,
    when tracing) around it, and once its job is built, the job's fields in the log
    context until it is sent."""

    __slots__ = ("_name", "_scope", "_token", "_tracer", "span")

    def __init__(self, settings: Settings, name: str = "llmfleet.submit") -> None:
        self._tracer = tracer(settings)
        self._name = name
        self._scope: Any = None
        self._token: Token[Mapping[str, str]] | None = None
        self.span: Span | None = None

    @property
    def traced(self) -> bool:
        return self.span is not None

    def __enter__(self) -> Submission:
        if self._tracer is not None:
            from opentelemetry.trace import SpanKind

            self._scope = self._tracer.start_as_current_span(self._name, kind=SpanKind.PRODUCER)
            self.span = self._scope.__enter__()
        return self

    def describe(self, job: CompletionJob | EmbeddingJob) -> None:
        """The job's fields into the log context, and onto the span."""
        trace_id = job.trace.trace_id if job.trace is not None else None
        if self._token is None:
            self._token = bind(job_id=job.job_id, agent=job.agent, user=job.user,
                               tier=job.tier, model=job.model, trace_id=trace_id)
        if self.span is not None:
            self.span.set_attributes({
                "llmfleet.job_id": job.job_id, "llmfleet.agent": job.agent,
                "llmfleet.tier": job.tier or "", "gen_ai.request.model": job.model or "",
                "gen_ai.operation.name": "chat" if isinstance(job, CompletionJob)
                else "embeddings"})

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._token is not None:
            reset(self._token)
        if self._scope is not None:
            self._scope.__exit__(kind, exc, tb)
