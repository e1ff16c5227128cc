"""Log lines of the fleet's processes (CLI, worker, beat, API): text by default, or
with LLMFLEET_LOG_FORMAT=json one JSON object a line (``tasks._context.json_formatter``)
carrying, when known, the job's ``job_id``, ``agent``, ``user``, ``tier``, ``model`` and
its ``trace_id`` (``tasks._context.FIELDS``).

These processes are ours: here the root logger is configured. Celery reconfigures it in
worker and beat processes (``workers.app.use_json_logs`` turns its handlers to JSON),
and uvicorn in API processes (``uvicorn_log_config``).
"""

from __future__ import annotations

import logging
from typing import Any

from tasks._context import ContextFilter, json_formatter

__all__ = ["TEXT_FORMAT", "configure_logging", "to_json", "uvicorn_log_config"]

#: The text lines' format (the default).
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str | int, log_format: str) -> None:
    """The root logger of a process of ours: a handler on stderr writing text or JSON
    lines. As ``logging.basicConfig``, it leaves alone a root logger that already has
    handlers (a test runner's, a host's)."""
    if log_format != "json":
        logging.basicConfig(level=level, format=TEXT_FORMAT)
        return
    handler = logging.StreamHandler()
    handler.setFormatter(json_formatter())
    handler.addFilter(ContextFilter())
    logging.basicConfig(level=level, handlers=[handler])


def to_json(logger: logging.Logger) -> None:
    """Every handler of ``logger`` writes JSON lines with the job's fields (for the
    handlers Celery makes)."""
    for handler in logger.handlers:
        handler.setFormatter(json_formatter())
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())


def uvicorn_log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging configuration (its loggers, access lines on stdout, the rest
    on stderr) with JSON lines everywhere, the root logger included: applied in each
    API process uvicorn starts."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "filters": ["context"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "tasks._context.json_formatter"}},
        "filters": {"context": {"()": "tasks._context.ContextFilter"}},
        "handlers": {"default": {**handler, "stream": "ext://sys.stderr"},
                     "access": {**handler, "stream": "ext://sys.stdout"}},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
        "root": {"handlers": ["default"], "level": level.upper()},
    }
