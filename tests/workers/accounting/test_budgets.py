"""Budget reservations in real Redis: atomic under a race, settled once, periods."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from schemas import BudgetConfig, load_fleet_config
from workers.accounting.budgets import BudgetLedger, covers, period_of


@pytest.fixture()
def ledger(redis_url: str) -> Iterator[tuple[Any, BudgetLedger]]:
    loop = asyncio.new_event_loop()
    client = aioredis.from_url(redis_url)
    yield loop.run_until_complete, BudgetLedger(client, load_fleet_config())
    loop.run_until_complete(client.aclose())
    loop.close()


def _budget(limit: float, **kw: Any) -> BudgetConfig:
    return BudgetConfig(name=f"b-{uuid.uuid4().hex[:8]}", limit_usd=limit, **kw)


def test_64_racing_reservations_never_pass_the_limit(ledger: Any) -> None:
    run, budgets = ledger
    # Given a $1 budget and 64 jobs each reserving a worst case of $0.07
    budget = _budget(1.0)
    period = period_of(budget, dt.datetime.now(dt.UTC), "UTC")

    async def race() -> list[Any]:
        return await asyncio.gather(*(budgets.reserve(f"job-{i}-{budget.name}", 0.07,
                                                      [(budget, period)]) for i in range(64)))

    # When they race
    refusals = run(race())
    # Then exactly 14 fit (14 x 0.07 = 0.98) and the rest are refused naming the budget
    admitted = [r for r in refusals if r is None]
    assert len(admitted) == 14
    assert all(r.budget.name == budget.name for r in refusals if r is not None)
    spent, held = run(budgets.spent(budget, period))
    assert spent == 0 and held == pytest.approx(0.98)


def test_settling_replaces_the_reservation_once(ledger: Any) -> None:
    run, budgets = ledger
    budget = _budget(1.0)
    period = period_of(budget, dt.datetime.now(dt.UTC), "UTC")
    job = f"job-{uuid.uuid4().hex}"
    assert run(budgets.reserve(job, 0.5, [(budget, period)])) is None
    assert run(budgets.settle(job, [(budget, period)], [0.1])) is True
    # A redelivered job reserves and settles again: its spend is not added twice
    assert run(budgets.reserve(job, 0.5, [(budget, period)])) is None
    assert run(budgets.settle(job, [(budget, period)], [0.1])) is False
    assert run(budgets.spent(budget, period)) == (pytest.approx(0.1), 0)


def test_a_refusal_reports_spend_and_limit(ledger: Any) -> None:
    run, budgets = ledger
    budget = _budget(0.3)
    period = period_of(budget, dt.datetime.now(dt.UTC), "UTC")
    run(budgets.reserve("j1" + budget.name, 0.2, [(budget, period)]))
    run(budgets.settle("j1" + budget.name, [(budget, period)], [0.25]))
    refusal = run(budgets.reserve("j2" + budget.name, 0.1, [(budget, period)]))
    assert refusal is not None
    assert (refusal.spent_usd, refusal.limit_usd) == (pytest.approx(0.25), 0.3)


def test_all_or_nothing_across_budgets(ledger: Any) -> None:
    run, budgets = ledger
    roomy, tight = _budget(10.0), _budget(0.05)
    now = dt.datetime.now(dt.UTC)
    pairs = [(roomy, period_of(roomy, now, "UTC")), (tight, period_of(tight, now, "UTC"))]
    refusal = run(budgets.reserve("j" + roomy.name, 0.1, pairs))
    assert refusal is not None and refusal.budget is tight
    assert run(budgets.spent(roomy, pairs[0][1])) == (0, 0)  # nothing held on the other


def test_scopes() -> None:
    job = {"agent": "coder", "user": "u1", "tier": "simple", "models": ["m1", "m2"]}
    assert covers(_budget(1), **job)
    assert covers(_budget(1, scope="agent:coder"), **job)
    assert not covers(_budget(1, scope="agent:planner"), **job)
    assert covers(_budget(1, scope="user:u1"), **job)
    assert covers(_budget(1, scope="tier:simple"), **job)
    assert covers(_budget(1, scope="model:m2"), **job)
    assert not covers(_budget(1, scope="model:m3"), **job)


@pytest.mark.parametrize(("period", "now", "tz", "start", "end"), [
    ("daily", "2026-03-10T23:59:59+00:00", "UTC", "2026-03-10T00:00:00+00:00",
     "2026-03-11T00:00:00+00:00"),
    ("daily", "2026-03-11T00:00:00+00:00", "UTC", "2026-03-11T00:00:00+00:00",
     "2026-03-12T00:00:00+00:00"),
    ("weekly", "2026-03-12T10:00:00+00:00", "UTC", "2026-03-09T00:00:00+00:00",
     "2026-03-16T00:00:00+00:00"),
    ("monthly", "2026-12-31T10:00:00+00:00", "UTC", "2026-12-01T00:00:00+00:00",
     "2027-01-01T00:00:00+00:00"),
    # 03:00 UTC is still the previous day in New York
    ("daily", "2026-03-11T03:00:00+00:00", "America/New_York",
     "2026-03-10T00:00:00-04:00", "2026-03-11T00:00:00-04:00"),
    # The day DST starts has 23 hours there
    ("daily", "2026-03-08T12:00:00+00:00", "America/New_York",
     "2026-03-08T00:00:00-05:00", "2026-03-09T00:00:00-04:00"),
])
def test_periods(period: str, now: str, tz: str, start: str, end: str) -> None:
    span = period_of(_budget(1, period=period), dt.datetime.fromisoformat(now), tz)
    assert span.start == dt.datetime.fromisoformat(start)
    assert span.end == dt.datetime.fromisoformat(end)
