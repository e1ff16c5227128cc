"""The breaker, shared through real Redis: opens on a failing route, not on noise."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from schemas import BreakerConfig
from workers.pipeline.breaker import Breaker, route_key

CONFIG = BreakerConfig(failure_threshold=5, window_s=30, cooldown_s=1)


@pytest.fixture()
def run(redis_url: str) -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    clients: list[aioredis.Redis] = []

    def breaker() -> Breaker:
        clients.append(aioredis.from_url(redis_url))
        return Breaker(clients[-1], CONFIG)

    yield loop.run_until_complete, breaker
    for client in clients:
        loop.run_until_complete(client.aclose())
    loop.close()


def test_a_route_failing_every_call_opens_for_every_worker(run: Any) -> None:
    until, make = run
    route = route_key(f"p-{uuid.uuid4().hex[:6]}", "m")
    one, other = make(), make()
    for _ in range(CONFIG.failure_threshold):
        until(one.record_failure(route))
    assert until(one.is_open(route))
    assert until(other.is_open(route))  # another worker sees it at once


def test_a_steady_share_of_errors_never_opens(run: Any) -> None:
    until, make = run
    route = route_key(f"p-{uuid.uuid4().hex[:6]}", "m")
    workers = [make(), make()]
    for i in range(200):  # 10% failures, spread over two workers
        worker = workers[i % 2]
        if i % 10 == 0:
            until(worker.record_failure(route))
        else:
            until(worker.record_success(route))
        if i % 50 == 0:
            until(worker.flush())
    assert not until(make().is_open(route))


def test_one_failing_model_leaves_its_providers_other_models_alone(run: Any) -> None:
    until, make = run
    provider = f"p-{uuid.uuid4().hex[:6]}"
    breaker = make()
    for _ in range(CONFIG.failure_threshold):
        until(breaker.record_failure(route_key(provider, "overloaded")))
    assert until(breaker.is_open(route_key(provider, "overloaded")))
    assert not until(breaker.is_open(route_key(provider, "healthy")))


def test_the_route_closes_after_its_cool_down(run: Any) -> None:
    until, make = run
    route = route_key(f"p-{uuid.uuid4().hex[:6]}", "m")
    breaker = make()
    for _ in range(CONFIG.failure_threshold):
        until(breaker.record_failure(route))
    until(asyncio.sleep(CONFIG.cooldown_s + 0.1))
    assert not until(make().is_open(route))
