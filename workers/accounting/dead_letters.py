"""Ledger rows Postgres refused, set aside by the flusher (``LEDGER_DEAD_LETTERS``):
listed for an operator, counted for health and metrics, and moved back to the spool
once their cause is fixed (a row refused again comes back here)."""

from __future__ import annotations

import json
from typing import Any

from schemas.keys import LEDGER_DEAD_LETTERS, LEDGER_SPOOL

__all__ = ["dead_letter_count", "list_dead_letters", "replay_dead_letters"]

#: Move every entry's row back to the spool's tail and drop the entries, in one step:
#: two operators replaying at once move each row once. KEYS: dead letters, spool.
_REPLAY = """
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
local moved = 0
for _, entry in ipairs(entries) do
  local ok, decoded = pcall(cjson.decode, entry)
  if ok and type(decoded) == 'table' and type(decoded['row']) == 'string' then
    redis.call('RPUSH', KEYS[2], decoded['row'])
    moved = moved + 1
  end
end
redis.call('LTRIM', KEYS[1], #entries, -1)
return moved
"""


def dead_letter_count(sync_redis: Any) -> int:
    return int(sync_redis.llen(LEDGER_DEAD_LETTERS))


def list_dead_letters(sync_redis: Any, limit: int = 100) -> list[dict[str, Any]]:
    """The oldest ``limit`` entries: job id, reason, when it was set aside, the row."""
    entries = []
    for raw in sync_redis.lrange(LEDGER_DEAD_LETTERS, 0, limit - 1):
        try:
            entry = json.loads(raw)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            entry = {"reason": "unreadable entry", "row": str(raw)[:200]}
        try:
            row = json.loads(entry.get("row") or "")
        except (ValueError, TypeError):
            row = None
        entries.append({"job_id": row.get("job_id") if isinstance(row, dict) else None,
                        "reason": entry.get("reason"), "at": entry.get("at"),
                        "row": entry.get("row")})
    return entries


def replay_dead_letters(sync_redis: Any) -> int:
    """Move every set-aside row back to the spool; how many were moved."""
    return int(sync_redis.eval(_REPLAY, 2, LEDGER_DEAD_LETTERS, LEDGER_SPOOL))
