"""Tracing into the SDK's in-memory exporter, for a test's duration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tasks._context import use_tracer_provider


@pytest.fixture()
def spans() -> Iterator[InMemorySpanExporter]:
    """Every span this process ends goes here (the client's and an in-process
    worker's); afterwards the process decides from its environment again (no tracing)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        use_tracer_provider(None)
        provider.shutdown()
