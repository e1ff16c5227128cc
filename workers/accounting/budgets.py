"""Budgets that cannot be overshot: reserve the worst case, settle the actual.

Before any provider call a job reserves its worst-case cost (its prompt at the chain's
dearest input price plus ``max_tokens`` at its dearest output price) against every
budget that covers it, in one Lua script, so that concurrent jobs on any number of
workers cannot pass a limit together. Afterwards the reservation is replaced by the
actual cost. Amounts are integers of nano-USD. A reservation carries an expiry, so one
left by a killed worker stops counting by itself; a job's spend is added once even if
the job runs twice (``BUDGET_SETTLED``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from zoneinfo import ZoneInfo

import redis.asyncio as aioredis

from schemas import BudgetConfig, FleetConfig
from schemas.keys import BUDGET, BUDGET_SETTLED
from tasks._redis import as_text

__all__ = ["NANO", "BudgetLedger", "BudgetState", "Period", "Refusal", "budget_key",
           "budget_state", "counter_figures", "covers", "period_of", "to_nano"]

NANO = 1_000_000_000
#: A reservation stops counting after this long (longer than any job may run).
RESERVATION_TTL_S = 1800


def to_nano(usd: float) -> int:
    return round(usd * NANO)


@dataclass(frozen=True, slots=True)
class Period:
    start: dt.datetime
    end: dt.datetime

    @property
    def label(self) -> str:
        return self.start.isoformat()


def period_of(budget: BudgetConfig, now: dt.datetime, tz: str) -> Period:
    """The period of ``budget`` containing ``now``, in time zone ``tz``."""
    local = now.astimezone(ZoneInfo(tz))
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if budget.period == "daily":
        start, end = day, day + dt.timedelta(days=1)
    elif budget.period == "weekly":
        start = day - dt.timedelta(days=day.weekday())
        end = start + dt.timedelta(days=7)
    else:
        start = day.replace(day=1)
        end = (start + dt.timedelta(days=32)).replace(day=1)
    # Rebuild from wall-clock fields so a DST change inside the period is honoured.
    zone = ZoneInfo(tz)
    return Period(start.replace(tzinfo=None).replace(tzinfo=zone),
                  end.replace(tzinfo=None).replace(tzinfo=zone))


def covers(budget: BudgetConfig, *, agent: str, user: str | None, tier: str,
           models: list[str]) -> bool:
    """Does the budget's scope take in a job of this agent, user, tier and chain?"""
    if budget.scope == "global":
        return True
    kind, _, name = budget.scope.partition(":")
    return {"agent": agent == name, "user": user == name, "tier": tier == name,
            "model": name in models}.get(kind, False)


BudgetState = Literal["ok", "alert", "exceeded"]


def budget_state(budget: BudgetConfig, spent_usd: float) -> BudgetState:
    """"exceeded" at the limit, "alert" at the alert threshold, else "ok"."""
    if to_nano(spent_usd) >= to_nano(budget.limit_usd):
        return "exceeded"
    return "alert" if spent_usd >= budget.limit_usd * budget.alert_threshold else "ok"


def counter_figures(values: Mapping[Any, Any], now: float) -> tuple[int, int]:
    """(settled spend, live reservations) in nano-USD from a budget counter's hash: the
    ``spent`` field, and each ``r:<job_id>`` = "<nano>:<expiry epoch>" not yet expired
    at ``now`` (an expired one belonged to a killed worker and stops counting)."""
    spent = held = 0
    for field, value in values.items():
        name, figure = as_text(field), as_text(value)
        if name == "spent":
            spent = int(figure) if figure.lstrip("-").isdigit() else 0
        elif name.startswith("r:"):
            amount, _, expiry = figure.partition(":")
            if amount.isdigit() and expiry.isdigit() and int(expiry) >= now:
                held += int(amount)
    return spent, held


def budget_key(budget: BudgetConfig, period: Period) -> str:
    return BUDGET.format(name=budget.name, period=period.label)


@dataclass(frozen=True, slots=True)
class Refusal:
    """The budget a reservation would overshoot, with its figures in USD."""

    budget: BudgetConfig
    period: Period
    spent_usd: float
    limit_usd: float


# KEYS: budget keys. ARGV: job id, amount, now, expiry, key TTL, then one limit per key.
# Returns 0 when reserved, else the 1-based index of the refusing budget, its spent and
# its other reservations.
_RESERVE = """
local job, amount, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[5 + i])
  local spent = tonumber(redis.call('HGET', key, 'spent') or '0')
  local held = 0
  local fields = redis.call('HGETALL', key)
  for j = 1, #fields, 2 do
    local field = fields[j]
    if string.sub(field, 1, 2) == 'r:' and field ~= 'r:' .. job then
      local each, expiry = string.match(fields[j + 1], '^(%d+):(%d+)$')
      if tonumber(expiry) < now then
        redis.call('HDEL', key, field)
      else
        held = held + tonumber(each)
      end
    end
  end
  if spent + held + amount > limit then
    return {i, spent, held}
  end
end
for _, key in ipairs(KEYS) do
  redis.call('HSET', key, 'r:' .. job, ARGV[2] .. ':' .. ARGV[4])
  redis.call('EXPIRE', key, ARGV[5])
end
return {0, 0, 0}
"""

# KEYS: the settled marker, then budget keys. ARGV: job id, then one amount per budget.
_SETTLE = """
local first = redis.call('SET', KEYS[1], '1', 'NX', 'EX', 172800)
for i = 2, #KEYS do
  redis.call('HDEL', KEYS[i], 'r:' .. ARGV[1])
  if first then
    redis.call('HINCRBY', KEYS[i], 'spent', ARGV[i])
  end
end
return first and 1 or 0
"""


class BudgetLedger:
    """The fast counters in Redis. The ledger in Postgres stays the source of truth:
    beat recomputes ``spent`` from it and overwrites drift."""

    def __init__(self, redis: aioredis.Redis, fleet: FleetConfig) -> None:
        self._redis = redis
        self.fleet = fleet
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)

    def applicable(self, *, agent: str, user: str | None, tier: str, models: list[str],
                   now: dt.datetime) -> list[tuple[BudgetConfig, Period]]:
        tz = self.fleet.budget_timezone
        return [(b, period_of(b, now, tz)) for b in self.fleet.budgets
                if covers(b, agent=agent, user=user, tier=tier, models=models)]

    async def reserve(self, job_id: str, amount_usd: float,
                      budgets: list[tuple[BudgetConfig, Period]]) -> Refusal | None:
        """Reserve on every budget or on none; the refusing budget when one is full."""
        if not budgets:
            return None
        now = int(dt.datetime.now(dt.UTC).timestamp())
        ttl = max(int(p.end.timestamp() - now) + 86400 for _, p in budgets)
        args: list[str | int] = [job_id, to_nano(amount_usd), now, now + RESERVATION_TTL_S, ttl,
                *[to_nano(b.limit_usd) for b, _ in budgets]]
        index, spent, held = await self._reserve(
            keys=[budget_key(b, p) for b, p in budgets], args=args)
        if index == 0:
            return None
        budget, period = budgets[int(index) - 1]
        return Refusal(budget, period, (int(spent) + int(held)) / NANO, budget.limit_usd)

    async def settle(self, job_id: str, budgets: list[tuple[BudgetConfig, Period]],
                     amounts_usd: list[float]) -> bool:
        """Replace the job's reservations with its actual spend; False if it was
        settled before (a redelivered job), in which case only reservations go."""
        if not budgets:
            return True
        keys = [BUDGET_SETTLED.format(job_id=job_id), *[budget_key(b, p) for b, p in budgets]]
        done = await self._settle(keys=keys, args=[job_id, *map(to_nano, amounts_usd)])
        return bool(done)

    async def spent(self, budget: BudgetConfig, period: Period) -> tuple[float, float]:
        """(settled spend, live reservations) in USD, from the fast counter."""
        values = await self._redis.hgetall(budget_key(budget, period))
        spent, held = counter_figures(values, dt.datetime.now(dt.UTC).timestamp())
        return spent / NANO, held / NANO

    async def repair(self, budget: BudgetConfig, period: Period, spent_usd: float) -> None:
        """Overwrite the fast counter's settled spend with the ledger's figure."""
        await self._redis.hset(budget_key(budget, period), "spent", to_nano(spent_usd))
