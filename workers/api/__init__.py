"""The fleet's HTTP API (``llmfleet api``): the OpenAI wire format for agents in any
language, the admin API for operators, Prometheus metrics. ``workers.api.app.create_app``
builds it; nothing is imported here, so that the CLI loads FastAPI only when serving."""

__all__: list[str] = []
