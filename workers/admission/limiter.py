"""Rates and places, fleet-wide and exact: one Redis script decides for every limit and
quota a job falls under at once, on Redis' clock.

A rate (requests or tokens per minute) is a GCRA: the rate's theoretical arrival time
moves ahead by ``amount x per_ms`` for each admission, and an admission fits while
that time is at most ``tau_ms`` ahead of now. ``tau`` is the burst: a whole minute for
the fleet's own limits (10 per minute admits 10 at once, then one every 6 s), about a
second for a provider's quota (spread out, so a provider that counts per second sees no
burst). A place (concurrency) is a sorted set of job ids scored by their lease's end.

All or nothing: a job fits every rate and place, or none is touched; except that a job
which fits within ``horizon_ms`` reserves its future turn on every rate (the script says
when) and so never has to ask again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis

from schemas.keys import LIMIT_STATS, QUOTA_HOLD

__all__ = ["Decision", "Place", "Rate", "RateLimiter"]

Mode = Literal["reject", "queue"]

#: KEYS: stats, then each rate's key, then each place's key.
#: ARGV: n rates, n places, horizon ms, member, lease ms, poll ms; then per rate: name,
#: mode, per_ms, tau_ms, amount; then per place: name, mode, most.
#: Returns {status, index of the deciding rate or place (1-based over rates then
#: places; 0 for none), wait ms, then per rate: remaining, reset ms}. Status: 0 admitted,
#: 1 admitted for later (reserved, wait ms), 2 refused (a reject limit; wait ms until it
#: fits), 3 not yet (nothing taken; look again after wait ms), 4 never fits (too big).
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nr, np = tonumber(ARGV[1]), tonumber(ARGV[2])
local horizon, member = tonumber(ARGV[3]), ARGV[4]
local lease, poll = tonumber(ARGV[5]), tonumber(ARGV[6])
local new, out = {}, {}
local refuse, rwait, worst, wwait = 0, 0, 0, 0
for i = 1, nr do
  local a = 6 + (i - 1) * 5
  local per, tau, amount = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  if amount * per > tau then
    redis.call('HINCRBY', KEYS[1], ARGV[a + 1] .. ':rejected', 1)
    return {4, i, 0}
  end
  local tat = tonumber(redis.call('GET', KEYS[1 + i])) or now
  if tat < now then tat = now end
  new[i] = tat + amount * per
  local w = math.max(0, new[i] - tau - now)
  if w > 0 and ARGV[a + 2] == 'reject' and w > rwait then refuse, rwait = i, w end
  if w > wwait then worst, wwait = i, w end
  out[#out + 1] = math.max(0, math.floor((now + tau - new[i]) / per))
  out[#out + 1] = math.ceil(new[i] - now)
end
local full, fmode = 0, ''
for j = 1, np do
  local key, a = KEYS[1 + nr + j], 6 + nr * 5 + (j - 1) * 3
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local most = tonumber(ARGV[a + 3])
  if not redis.call('ZSCORE', key, member) and redis.call('ZCARD', key) >= most then
    if full == 0 or ARGV[a + 2] == 'reject' then full, fmode = j, ARGV[a + 2] end
  end
end
local function named(i)
  if i > nr then return ARGV[6 + nr * 5 + (i - nr - 1) * 3 + 1] end
  return ARGV[6 + (i - 1) * 5 + 1]
end
local function answer(status, i, wait)
  local head = {status, i, math.ceil(wait)}
  for _, v in ipairs(out) do head[#head + 1] = v end
  return head
end
if refuse > 0 then
  redis.call('HINCRBY', KEYS[1], named(refuse) .. ':rejected', 1)
  return answer(2, refuse, rwait)
end
if full > 0 and fmode == 'reject' then
  redis.call('HINCRBY', KEYS[1], named(nr + full) .. ':rejected', 1)
  return answer(2, nr + full, poll)
end
if full > 0 then
  redis.call('HINCRBY', KEYS[1], named(nr + full) .. ':delayed', 1)
  return answer(3, nr + full, poll)
end
if wwait > horizon then
  redis.call('HINCRBY', KEYS[1], named(worst) .. ':delayed', 1)
  return answer(3, worst, wwait - horizon)
end
for i = 1, nr do
  local a = 6 + (i - 1) * 5
  redis.call('SET', KEYS[1 + i], string.format('%.3f', new[i]), 'PX',
             math.ceil(new[i] - now + tonumber(ARGV[a + 4])) + 1000)
end
for j = 1, np do
  redis.call('ZADD', KEYS[1 + nr + j], now + lease, member)
  redis.call('PEXPIRE', KEYS[1 + nr + j], lease + 1000)
end
if wwait > 0 then
  redis.call('HINCRBY', KEYS[1], named(worst) .. ':delayed', 1)
  return answer(1, worst, wwait)
end
return answer(0, 0, 0)
"""

#: Give back part of what rates hold and leave places. KEYS: rates, then places.
#: ARGV: n rates, member, then per rate: per_ms, amount to give back.
_SETTLE = """
local nr = tonumber(ARGV[1])
for i = 1, nr do
  local tat = tonumber(redis.call('GET', KEYS[i]))
  local back = tonumber(ARGV[2 + 2 * i]) * tonumber(ARGV[1 + 2 * i])
  if tat and back > 0 then
    redis.call('SET', KEYS[i], string.format('%.3f', tat - back), 'KEEPTTL')
  end
end
for j = nr + 1, #KEYS do redis.call('ZREM', KEYS[j], ARGV[2]) end
return 1
"""

#: A provider said 429: nothing more goes to that rate before ``wait`` ms from now,
#: and calls admitted before wait for the hold too. KEYS: the rate, its hold.
#: ARGV: per_ms, tau_ms, wait ms.
_HOLD_OFF = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local per, tau, wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
local held = math.max(tat, now + wait + tau - per)
redis.call('SET', KEYS[1], string.format('%.3f', held), 'PX', math.ceil(held - now + tau) + 1000)
redis.call('SET', KEYS[2], '1', 'PX', math.max(1, math.ceil(wait)))
return 1
"""

#: The waiting line of a rate: a job told "not yet" takes the next return time, one
#: job's worth of the rate after the last one handed out (and no sooner than the rate
#: could take it), so waiting jobs come back spread at the rate they can be admitted
#: instead of all at once (each ask costs a worker a Redis script). KEYS: the line.
#: ARGV: the wait the limiter gave (ms), the job's share of the rate (ms). Returns the
#: job's park time (ms).
_LINE_UP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait, step = tonumber(ARGV[1]), tonumber(ARGV[2])
local line = tonumber(redis.call('GET', KEYS[1])) or 0
local at = math.max(line, now + wait) + step
redis.call('SET', KEYS[1], string.format('%.3f', at), 'PX', math.ceil(at - now) + 60000)
return math.ceil(at - now)
"""


@dataclass(frozen=True, slots=True)
class Rate:
    """One rate a job falls under: ``amount`` of ``limit`` units per minute."""

    name: str  # the limit's or quota's name, for errors and counters
    kind: Literal["rpm", "tpm"]
    key: str
    limit: int
    amount: int
    tau_ms: float
    mode: Mode

    @property
    def per_ms(self) -> float:
        return 60_000.0 / self.limit


@dataclass(frozen=True, slots=True)
class Place:
    """A limit on jobs in flight."""

    name: str
    key: str
    limit: int
    mode: Mode


@dataclass(frozen=True, slots=True)
class Decision:
    """What the script decided. ``status``: admitted, later (admitted, its turn ``wait_s``
    from now: reserved), refused, not_yet (nothing taken; look again in ``wait_s``),
    too_big. ``deciding`` names the rate or place that decided; ``remaining`` and
    ``reset_s`` per rate, in order."""

    status: Literal["admitted", "later", "refused", "not_yet", "too_big"]
    wait_s: float
    deciding: Rate | Place | None
    remaining: tuple[int, ...]
    reset_s: tuple[float, ...]


_STATUSES: tuple[Any, ...] = ("admitted", "later", "refused", "not_yet", "too_big")


class RateLimiter:
    """The scripts, on one async Redis client."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._admit = redis.register_script(_ADMIT)
        self._settle = redis.register_script(_SETTLE)
        self._hold_off = redis.register_script(_HOLD_OFF)
        self._line_up = redis.register_script(_LINE_UP)

    async def admit(self, rates: Sequence[Rate], places: Sequence[Place], member: str, *,
                    horizon_s: float, lease_s: float, poll_s: float = 0.5) -> Decision:
        args: list[Any] = [len(rates), len(places), round(horizon_s * 1000), member,
                           round(lease_s * 1000), round(poll_s * 1000)]
        for rate in rates:
            args += [rate.name, rate.mode, repr(rate.per_ms), repr(rate.tau_ms), rate.amount]
        for place in places:
            args += [place.name, place.mode, place.limit]
        keys = [LIMIT_STATS, *(r.key for r in rates), *(p.key for p in places)]
        raw = [int(v) for v in await self._admit(keys=keys, args=args)]
        status, index, wait_ms, rest = raw[0], raw[1], raw[2], raw[3:]
        both: list[Rate | Place] = [*rates, *places]
        return Decision(status=_STATUSES[status], wait_s=wait_ms / 1000,
                        deciding=both[index - 1] if index else None,
                        remaining=tuple(rest[0::2]),
                        reset_s=tuple(v / 1000 for v in rest[1::2]))

    async def settle(self, given_back: Sequence[tuple[str, float, int]], places: Sequence[str],
                     member: str) -> None:
        """Give back (key, per_ms, amount) on rates; leave ``places``."""
        args: list[Any] = [len(given_back), member]
        for _key, per_ms, amount in given_back:
            args += [repr(per_ms), amount]
        await self._settle(keys=[k for k, _, _ in given_back] + list(places), args=args)

    async def line_up(self, rate: Rate, wait_s: float) -> float:
        """When a job told "not yet" by ``rate`` (after ``wait_s``) should ask again: its
        place in the rate's waiting line, in seconds from now."""
        ms = await self._line_up(keys=[rate.key + ":line"],
                                 args=[math.ceil(wait_s * 1000), repr(rate.per_ms * rate.amount)])
        return int(ms) / 1000

    async def hold_off(self, rate: Rate, wait_s: float) -> None:
        """Nothing more on ``rate`` for ``wait_s`` (a provider's Retry-After)."""
        await self._hold_off(keys=[rate.key, QUOTA_HOLD.format(owner=rate.name)],
                             args=[repr(rate.per_ms), repr(rate.tau_ms),
                                   math.ceil(wait_s * 1000)])

    async def held_s(self, owners: Sequence[str]) -> float:
        """How long the longest hold on ``owners`` lasts still (0: none)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for owner in owners:
                pipe.pttl(QUOTA_HOLD.format(owner=owner))
            left = await pipe.execute()
        return max([0, *(int(ms) for ms in left)]) / 1000
