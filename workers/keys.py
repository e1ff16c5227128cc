"""Every Redis key the fleet writes, with its expiry, in one place (as arq's constants)."""

from __future__ import annotations

__all__ = ["BEAT_LAST_RUN", "BREAKER_CALLS", "BREAKER_FAILURES", "BREAKER_OPEN", "PREFIX"]

#: Every key of ours starts here, apart from Celery's own (``celery-task-meta-*``).
PREFIX = "llmfleet:"
#: Transient failures of a route (``provider:model``) in one window (``bucket`` is the
#: window's number since the epoch), across workers; expires after two windows.
BREAKER_FAILURES = PREFIX + "breaker:failures:{route}:{bucket}"
#: All calls of a route in one window; expires after two windows.
BREAKER_CALLS = PREFIX + "breaker:calls:{route}:{bucket}"
#: Present while a route is in cool-down; expires after ``cooldown_s``.
BREAKER_OPEN = PREFIX + "breaker:open:{route}"
#: Epoch seconds of beat's last heartbeat; no expiry.
BEAT_LAST_RUN = PREFIX + "beat:last_run"
