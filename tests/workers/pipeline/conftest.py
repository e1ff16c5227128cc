"""What the pipeline tests share: providers answering through scripted httpx mock
transports, a fleet of two providers (OpenAI-compatible ``a``, Anthropic ``b``) and a
pipeline rig whose breaker keeps its state in real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from schemas import CompletionJob, FleetConfig, parse_fleet_config
from workers.pipeline.attempts import AttemptRunner
from workers.pipeline.breaker import Breaker
from workers.pipeline.chain import Pipeline
from workers.providers import build_providers


@dataclass
class Script:
    """Per provider host, the answers to give in order (the last one repeats)."""

    answers: dict[str, list[httpx.Response]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def handler(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.calls[host] = self.calls.get(host, 0) + 1
        queue = self.answers[host]
        return queue.pop(0) if len(queue) > 1 else queue[0]


def ok_openai(text: str = "fine", usage: bool = True) -> httpx.Response:
    body: dict[str, Any] = {"choices": [{"message": {"content": text}, "finish_reason": "stop"}]}
    if usage:
        body["usage"] = {"prompt_tokens": 1000, "completion_tokens": 500,
                         "prompt_tokens_details": {"cached_tokens": 200}}
    return httpx.Response(200, json=body)


def ok_anthropic() -> httpx.Response:
    return httpx.Response(200, json={"content": [{"type": "text", "text": "from b"}],
                                     "stop_reason": "end_turn",
                                     "usage": {"input_tokens": 10, "output_tokens": 2}})


def status(code: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(code, json={"error": {"message": f"status {code}"}}, headers=headers)


def fleet_config(tag: str) -> FleetConfig:
    return parse_fleet_config({
        "providers": {f"a{tag}": {"kind": "openai", "base_url": "http://a.test/v1"},
                      f"b{tag}": {"kind": "anthropic", "base_url": "http://b.test"}},
        "models": {
            "m1": {"provider": f"a{tag}", "input_per_mtok": 1.0, "output_per_mtok": 4.0,
                   "cached_input_per_mtok": 0.5, "context_window": 4000},
            "m2": {"provider": f"b{tag}", "input_per_mtok": 2.0, "output_per_mtok": 8.0,
                   "context_window": 100000, "wire_name": "m2-wire"},
            "e1": {"provider": f"a{tag}", "input_per_mtok": 0.02, "output_per_mtok": 0,
                   "context_window": 8000},
        },
        "tiers": {"simple": {"models": ["m1", "m2"]}, "embeddings": {"models": ["e1"]}},
        "retry": {"max_retries": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.05,
                  "retry_after_max_s": 5},
        "breaker": {"failure_threshold": 3, "window_s": 30, "cooldown_s": 30},
    })


@dataclass
class Rig:
    pipeline: Pipeline
    script: Script
    sleeps: list[float]
    fleet: FleetConfig
    loop: asyncio.AbstractEventLoop

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def complete(self, **job: Any) -> Any:
        job.setdefault("messages", [{"role": "user", "content": "hello"}])
        return self.run(self.pipeline.complete(CompletionJob.model_validate(job)))

    def use_transport(self, handler: Any) -> None:
        """Point the providers at another scripted transport (same breaker)."""
        async def make() -> None:
            http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
            self.pipeline.providers = build_providers(self.fleet, http, {})
        self.run(make())


@pytest.fixture()
def make_rig(redis_url: str) -> Iterator[Any]:
    tag = uuid.uuid4().hex[:8]  # providers unique to the test: breaker keys do not mix
    loop = asyncio.new_event_loop()
    clients: list[aioredis.Redis] = []

    def build(script: Script) -> Rig:
        fleet = fleet_config(tag)
        sleeps: list[float] = []

        async def fake_sleep(seconds: float) -> None:
            sleeps.append(seconds)

        async def make() -> Pipeline:
            http = httpx.AsyncClient(transport=httpx.MockTransport(script.handler))
            clients.append(aioredis.from_url(redis_url))
            breaker = Breaker(clients[-1], fleet.breaker)
            runner = AttemptRunner(retry=fleet.retry, breaker=breaker, sleep=fake_sleep)
            return Pipeline(fleet, build_providers(fleet, http, {}), breaker, runner)

        return Rig(loop.run_until_complete(make()), script, sleeps, fleet, loop)

    yield build
    for client in clients:
        loop.run_until_complete(client.aclose())
    loop.close()
