"""The batch wire modules against the simulator over real HTTP: OpenAI's Files and
Batch API and Anthropic's Message Batches, each sent, polled, read back as live
answers; item errors, adoption by metadata, cancelling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from schemas import Message, ProviderConfig
from workers.providers import (
    BATCH_KINDS,
    PROVIDER_KINDS,
    BatchAPI,
    BatchItem,
    ChatRequest,
    custom_id,
)

KINDS = ["openai", "anthropic"]
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-haiku-20240307"}


@pytest.fixture()
def run() -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


def _api(sim: Any, kind: str, http: httpx.AsyncClient) -> BatchAPI:
    base = sim.openai_base_url if kind == "openai" else sim.base_url
    provider = PROVIDER_KINDS[kind](kind, ProviderConfig(kind=kind, base_url=base), http,
                                    "sk-test")
    return BATCH_KINDS[kind](provider)


def _items(kind: str, count: int) -> list[BatchItem]:
    model = MODELS[kind]
    return [BatchItem(custom_id(f"job-{i:04d}"), ChatRequest(
        model=model, wire_model=model, max_tokens=16,
        messages=[Message(role="user", content=f"batch question {i}")]))
        for i in range(count)]


async def _until_ended(api: BatchAPI, batch: str, model: str, limit_s: float = 15) -> str:
    end = time.monotonic() + limit_s
    while True:
        state = await api.state(batch, model)
        if state.ended:
            return state.status
        assert time.monotonic() < end, f"batch still {state.status}"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_is_sent_polled_and_read_as_live_answers(sim: Any, run: Any, kind: str
                                                         ) -> None:
    sim.configure(batch_completion_s=0.5, batch_item_error_rate=0, batch_expire=False)

    async def scenario() -> dict[str, Any]:
        async with httpx.AsyncClient() as http:
            api = _api(sim, kind, http)
            items = _items(kind, 5)
            # Given five requests sent as one batch
            batch = await api.submit(items, "ours0001", MODELS[kind])
            # When it ends
            status = await _until_ended(api, batch, MODELS[kind])
            results = await api.results(batch, {i.custom_id: i.request for i in items},
                                        MODELS[kind])
            return {"status": status, "results": results, "ids": [i.custom_id for i in items]}

    outcome = run(scenario())
    # Then each request has its answer, read as a live call's, usage included
    assert outcome["status"] in ("completed", "ended")
    assert sorted(outcome["results"]) == sorted(outcome["ids"])
    for result in outcome["results"].values():
        assert result.completion is not None and result.completion.content
        assert result.completion.usage is not None and result.completion.usage.prompt_tokens
    assert sim.stats()["batch_requests"] == 5
    assert sim.stats()["requests"] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_item_errors_come_back_without_an_answer(sim: Any, run: Any, kind: str) -> None:
    sim.configure(batch_completion_s=0.3, batch_item_error_rate=1.0, batch_expire=False)

    async def scenario() -> dict[str, Any]:
        async with httpx.AsyncClient() as http:
            api = _api(sim, kind, http)
            items = _items(kind, 3)
            batch = await api.submit(items, "ours0002", MODELS[kind])
            await _until_ended(api, batch, MODELS[kind])
            return await api.results(batch, {i.custom_id: i.request for i in items},
                                     MODELS[kind])

    results = run(scenario())
    assert len(results) == 3
    assert all(r.completion is None and r.error for r in results.values())


def test_an_openai_batch_whose_id_was_lost_is_found_by_its_metadata(sim: Any, run: Any
                                                                    ) -> None:
    sim.configure(batch_completion_s=5, batch_item_error_rate=0, batch_expire=False)

    async def scenario() -> tuple[str, str | None, str | None]:
        async with httpx.AsyncClient() as http:
            api = _api(sim, "openai", http)
            ours = f"lost{time.time_ns()}"
            batch = await api.submit(_items("openai", 2), ours, MODELS["openai"])
            found = await api.find(ours, MODELS["openai"])
            never = await api.find("never-sent", MODELS["openai"])
            await api.cancel(batch, MODELS["openai"])
            return batch, found, never

    batch, found, never = run(scenario())
    assert found == batch
    assert never is None


@pytest.mark.parametrize("kind", KINDS)
def test_a_cancelled_batch_ends_and_its_unrun_items_say_so(sim: Any, run: Any, kind: str
                                                           ) -> None:
    sim.configure(batch_completion_s=1000, batch_item_error_rate=0, batch_expire=False)

    async def scenario() -> dict[str, Any]:
        async with httpx.AsyncClient() as http:
            api = _api(sim, kind, http)
            items = _items(kind, 3)
            batch = await api.submit(items, "ours0003", MODELS[kind])
            await api.cancel(batch, MODELS[kind])
            await _until_ended(api, batch, MODELS[kind])
            return await api.results(batch, {i.custom_id: i.request for i in items},
                                     MODELS[kind])

    results = run(scenario())
    assert all(r.completion is None for r in results.values())
