"""The embedded default stack: a real Redis and a real Postgres + pgvector, started once
per data directory when ``REDIS_URL`` / ``DATABASE_URL`` are unset, joined by later
processes, and stopped only by ``stop_stack``."""

from workers.devstack.embedded._stack import (
    StackInfo,
    default_data_dir,
    ensure_stack,
    stack_status,
    stop_stack,
)

__all__ = [
    "StackInfo",
    "default_data_dir",
    "ensure_stack",
    "stack_status",
    "stop_stack",
]
