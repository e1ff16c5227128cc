"""The admission script against real Redis: exact under concurrency, all or nothing,
reservations ahead, settling, places, a provider's hold-off."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from schemas.keys import LIMIT_INFLIGHT, LIMIT_RATE
from workers.admission.limiter import Decision, Place, Rate, RateLimiter


def rate(limit: int, *, kind: str = "rpm", amount: int = 1, tau_ms: float = 60_000,
         mode: str = "reject", name: str | None = None) -> Rate:
    name = name or f"t-{uuid.uuid4().hex[:8]}"
    return Rate(name, kind, LIMIT_RATE.format(name=name, kind=kind), limit, amount,  # type: ignore[arg-type]
                tau_ms, mode)  # type: ignore[arg-type]


def place(limit: int, mode: str = "reject") -> Place:
    name = f"p-{uuid.uuid4().hex[:8]}"
    return Place(name, LIMIT_INFLIGHT.format(name=name), limit, mode)  # type: ignore[arg-type]


def scenario(redis_url: str, body: Callable[[RateLimiter], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await body(RateLimiter(client))
        finally:
            await client.aclose()
    return asyncio.run(run())


def admit(limiter: RateLimiter, rates: list[Rate], places: list[Place] = (),  # type: ignore[assignment]
          member: str | None = None, horizon_s: float = 0.0) -> Awaitable[Decision]:
    return limiter.admit(rates, places, member or uuid.uuid4().hex, horizon_s=horizon_s,
                         lease_s=60)


def test_64_jobs_at_once_against_10_per_minute_admit_exactly_10(redis_url: str) -> None:
    limit = rate(10)

    async def body(limiter: RateLimiter) -> Counter[str]:
        decisions = await asyncio.gather(*(admit(limiter, [limit]) for _ in range(64)))
        return Counter(d.status for d in decisions)

    assert scenario(redis_url, body) == {"admitted": 10, "refused": 54}


def test_a_refusal_says_which_limit_and_when_it_fits(redis_url: str) -> None:
    loose, tight = rate(1000), rate(2)

    async def body(limiter: RateLimiter) -> Decision:
        for _ in range(2):
            assert (await admit(limiter, [loose, tight])).status == "admitted"
        return await admit(limiter, [loose, tight])

    refused = scenario(redis_url, body)
    assert refused.status == "refused" and refused.deciding == tight
    assert 25 < refused.wait_s <= 30  # two per minute: the next fits 30 s after the first
    assert refused.remaining == (997, 0)


def test_all_or_nothing_a_refused_job_takes_nothing(redis_url: str) -> None:
    loose, tight = rate(3), rate(1)

    async def body(limiter: RateLimiter) -> list[str]:
        statuses = [(await admit(limiter, [loose, tight])).status for _ in range(3)]
        # The refused ones took nothing of the loose limit: two more fit it alone
        statuses += [(await admit(limiter, [loose])).status for _ in range(3)]
        return statuses

    assert scenario(redis_url, body) == ["admitted", "refused", "refused",
                                         "admitted", "admitted", "refused"]


def test_tokens_are_reserved_at_worst_and_settled_to_what_was_used(redis_url: str) -> None:
    async def body(limiter: RateLimiter) -> list[str]:
        tpm = rate(1000, kind="tpm", amount=600)
        out = [(await admit(limiter, [tpm], member="a")).status,
               (await admit(limiter, [tpm], member="b")).status]
        # The first job used 200 of its 600: 400 go back, and another 600 fit
        await limiter.settle([(tpm.key, tpm.per_ms, 400)], [], "a")
        out.append((await admit(limiter, [tpm], member="c")).status)
        too_big = rate(1000, kind="tpm", amount=1500)
        out.append((await admit(limiter, [too_big])).status)
        return out

    assert scenario(redis_url, body) == ["admitted", "refused", "admitted", "too_big"]


def test_places_hold_until_their_jobs_leave(redis_url: str) -> None:
    two, waiting = place(2), place(1, mode="queue")

    async def body(limiter: RateLimiter) -> list[str]:
        out = [(await admit(limiter, [], [two], member=m)).status for m in "abc"]
        out.append((await admit(limiter, [], [two], member="a")).status)  # held already
        await limiter.settle([], [two.key], "a")
        out.append((await admit(limiter, [], [two], member="c")).status)
        out += [(await admit(limiter, [], [waiting], member=m)).status for m in "xy"]
        return out

    assert scenario(redis_url, body) == ["admitted", "admitted", "refused", "admitted",
                                         "admitted", "admitted", "not_yet"]


def test_queued_jobs_reserve_their_turns_ahead_within_the_horizon(redis_url: str) -> None:
    # 60 per minute with a whole minute of burst: 60 now, then one a second
    limit = rate(60, mode="queue")

    async def body(limiter: RateLimiter) -> list[Decision]:
        return [await admit(limiter, [limit], horizon_s=2.5) for _ in range(63)]

    decisions = scenario(redis_url, body)
    assert {d.status for d in decisions[:60]} == {"admitted"}
    assert [d.status for d in decisions[60:]] == ["later", "later", "not_yet"]
    assert 0.9 < decisions[60].wait_s <= 1.0 and 1.9 < decisions[61].wait_s <= 2.0
    assert 0.4 < decisions[62].wait_s <= 0.5  # it could reserve half a second from now


def test_a_provider_quota_is_spread_over_the_minute(redis_url: str) -> None:
    # 600 per minute, a burst of one second: ten at once, then one every 100 ms
    quota = rate(600, tau_ms=1000, mode="queue")

    async def body(limiter: RateLimiter) -> list[tuple[float, float]]:
        out = []
        for _ in range(20):
            asked = time.time()
            out.append((asked, (await admit(limiter, [quota], horizon_s=60)).wait_s))
        return out

    admitted = scenario(redis_url, body)
    waits = [wait for _, wait in admitted]
    assert waits[:10] == [0.0] * 10
    # Each next place 100 ms after the one before, on the clock (a wait is counted from
    # its own call, and calls are a few ms apart on a busy machine)
    places = [asked + wait for asked, wait in admitted[10:]]
    steps = [b - a for a, b in itertools.pairwise(places)]
    assert 0.0 < waits[10] <= 0.1 and all(0.09 <= step <= 0.11 for step in steps), steps


def test_a_429_holds_a_quota_off_for_its_retry_after(redis_url: str) -> None:
    quota = rate(600, tau_ms=1000, mode="queue")

    async def body(limiter: RateLimiter) -> Decision:
        await limiter.hold_off(quota, 2.0)
        return await admit(limiter, [quota], horizon_s=60)

    held = scenario(redis_url, body)
    assert held.status == "later" and 1.9 < held.wait_s <= 2.0


def test_jobs_told_not_yet_come_back_one_rate_step_apart(redis_url: str) -> None:
    # 60 per minute (one a second), the horizon full: each job told "not yet" takes the
    # next place in the rate's line, a second after the one before, instead of all of
    # them asking again together
    limit = rate(60, mode="queue", tau_ms=1000)

    async def body(limiter: RateLimiter) -> list[float]:
        for _ in range(3):
            await admit(limiter, [limit], horizon_s=1.0)
        waiting = [await admit(limiter, [limit], horizon_s=1.0) for _ in range(4)]
        assert {d.status for d in waiting} == {"not_yet"}
        return [await limiter.line_up(limit, d.wait_s) for d in waiting]

    parks = scenario(redis_url, body)
    steps = [b - a for a, b in itertools.pairwise(parks)]
    assert parks[0] >= 1.0 and all(0.95 <= step <= 1.05 for step in steps), parks
