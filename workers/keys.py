"""Every Redis key the fleet writes, with its expiry, in one place (as arq's constants)."""

from __future__ import annotations

__all__ = ["BEAT_LAST_RUN", "BREAKER_FAILURES", "BREAKER_OPEN", "PREFIX"]

#: Every key of ours starts here, apart from Celery's own (``celery-task-meta-*``).
PREFIX = "llmfleet:"
#: Consecutive transient failures of a provider across workers; expires after the
#: breaker's window, and is deleted by the next success.
BREAKER_FAILURES = PREFIX + "breaker:failures:{provider}"
#: Present while a provider is in cool-down; expires after ``cooldown_s``.
BREAKER_OPEN = PREFIX + "breaker:open:{provider}"
#: Epoch seconds of beat's last heartbeat; no expiry.
BEAT_LAST_RUN = PREFIX + "beat:last_run"
