"""Logs and traces of the fleet's processes: ``logs`` (text, or JSON lines carrying the
job's ids) and ``traces`` (OpenTelemetry spans, when OTEL_EXPORTER_OTLP_ENDPOINT is
set). The bottom layer of ``workers``: it imports nothing of the fleet but ``schemas``
and ``tasks._context``, where the job's context lives on the agent's side."""
