"""What the fleet's limits and the providers' quotas hold now, read from Redis without
changing anything: for ``llmfleet limits``, the admin API, /metrics and the dashboard.

A rate's key holds its theoretical arrival time (``workers.admission.limiter``), so what
it holds now is ``ceil((tat - now) / per_ms)`` units, on Redis' clock: what was admitted
and is not yet freed, a limit freeing one unit every ``per_ms`` (60 rpm: one a second).
A fleet limit holds at most its size (a minute's burst); a provider quota may show more,
since parked jobs reserve their turns ahead. A place's use is its jobs whose lease has
not ended. The counters (rejected, delayed) are per limit or quota,
since the fleet began; a limit with both a rate and a place shows them on each.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis

from schemas import FleetConfig, LimitConfig
from schemas.keys import LIMIT_INFLIGHT, LIMIT_RATE, LIMIT_STATS, PARKED, QUOTA_RATE
from tasks._redis import as_text

__all__ = ["limits_snapshot", "parked_jobs"]

Kind = Literal["rpm", "tpm", "concurrency"]
Source = Literal["limits", "key", "quota"]
#: Less than this share of a unit is rounding, not use.
_ROUNDING = 1e-4


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    scope: str
    kind: Kind
    limit: int
    mode: str
    source: Source
    key: str

    def row(self, used: int, stats: dict[str, int]) -> dict[str, Any]:
        return {"name": self.name, "scope": self.scope, "kind": self.kind,
                "limit": self.limit, "used": used, "mode": self.mode, "source": self.source,
                "rejected": stats.get(f"{self.name}:rejected", 0),
                "delayed": stats.get(f"{self.name}:delayed", 0)}


def _limit_entries(limits: Iterable[LimitConfig], source: Source) -> list[_Entry]:
    entries = []
    for limit in limits:
        for kind in ("rpm", "tpm"):
            value = getattr(limit, kind)
            if value is not None:
                entries.append(_Entry(limit.name, limit.scope, kind, value, limit.mode, source,
                                      LIMIT_RATE.format(name=limit.name, kind=kind)))
        if limit.concurrency is not None:
            entries.append(_Entry(limit.name, limit.scope, "concurrency", limit.concurrency,
                                  limit.mode, source, LIMIT_INFLIGHT.format(name=limit.name)))
    return entries


def _quota_entries(fleet: FleetConfig) -> list[_Entry]:
    """Each model's and provider's quota, named by its owner as admission names it
    (``workers.admission.plan.quota_rates``); a quota always queues."""
    owners = [(f"model:{name}", m.rpm, m.tpm) for name, m in fleet.models.items()]
    owners += [(f"provider:{name}", p.rpm, p.tpm) for name, p in fleet.providers.items()]
    entries = []
    for owner, rpm, tpm in owners:
        rates: tuple[tuple[Kind, int | None], ...] = (("rpm", rpm), ("tpm", tpm))
        for kind, value in rates:
            if value is not None:
                entries.append(_Entry(owner, owner, kind, value, "queue", "quota",
                                      QUOTA_RATE.format(owner=owner, kind=kind)))
    return entries


def _now_ms(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


def _number(raw: Any) -> float | None:
    if raw is None:
        return None
    return float(as_text(raw))


def _stats(raw: dict[Any, Any]) -> dict[str, int]:
    return {as_text(k): int(v) for k, v in raw.items()}


def limits_snapshot(client: redis.Redis, fleet: FleetConfig,
                    keys: Sequence[LimitConfig] = ()) -> list[dict[str, Any]]:
    """One row per rate or place of every ``[[limits]]`` entry, of every fleet key's own
    limit in ``keys`` (``workers.api.keys.key_limits``) and of every provider or model
    quota: name, scope (a quota's owner), kind (rpm, tpm, concurrency), limit, used now,
    mode, source (limits, key, quota), and the limit's rejected and delayed counts.
    Two round trips; nothing is written."""
    entries = [*_limit_entries(fleet.limits, "limits"), *_limit_entries(keys, "key"),
               *_quota_entries(fleet)]
    now = _now_ms(client)
    pipe = client.pipeline(transaction=False)
    for entry in entries:
        if entry.kind == "concurrency":
            pipe.zcount(entry.key, f"({now:.0f}", "+inf")  # leases not yet ended
        else:
            pipe.get(entry.key)
    pipe.hgetall(LIMIT_STATS)
    *values, raw_stats = pipe.execute()
    stats = _stats(raw_stats)
    rows = []
    for entry, value in zip(entries, values, strict=True):
        if entry.kind == "concurrency":
            used = int(value)
        else:
            tat = _number(value)
            per_ms = 60_000.0 / entry.limit
            held = 0.0 if tat is None else max(0.0, tat - now) / per_ms
            # (the script stores tat to a thousandth of a ms: not a unit's worth)
            used = max(0, math.ceil(held - _ROUNDING))
        rows.append(entry.row(used, stats))
    return rows


def parked_jobs(client: redis.Redis) -> int:
    """Jobs waiting parked for a limit or a quota, fleet-wide."""
    return int(client.zcard(PARKED))
