"""Anthropic's Message Batches: the requests sent in one body, the batch polled until
``processing_status`` is ``ended``, then its results read as JSONL.

A message batch carries no metadata, so one whose id was lost (its batcher died
between creating it and recording it) cannot be found again: ``find`` says so, and the
batcher sends its jobs again (the provider may then answer a job twice; the fleet
charges it once).
"""

from __future__ import annotations

import json
from typing import Any

from schemas import ProviderServerError
from workers.providers.anthropic import AnthropicProvider
from workers.providers.base import ChatRequest
from workers.providers.batches import BatchAPI, BatchItem, BatchState, ItemResult

__all__ = ["AnthropicBatches"]


class AnthropicBatches(BatchAPI):
    kind = "anthropic"

    async def submit(self, items: list[BatchItem], batch_id: str, model: str) -> str:
        provider = self.provider
        assert isinstance(provider, AnthropicProvider)
        requests = [{"custom_id": item.custom_id,
                     "params": provider.chat_payload(item.request)[0]} for item in items]
        body = (await provider.send("POST", self._url("/v1/messages/batches"), model,
                                    json={"requests": requests})).json()
        found = body.get("id") if isinstance(body, dict) else None
        if not isinstance(found, str):
            raise ProviderServerError(f"{self.name}: the batch API answered without an id",
                                      provider=self.name, model=model)
        return found

    async def find(self, batch_id: str, model: str) -> str | None:
        return None  # no metadata to know ours by

    async def state(self, provider_batch_id: str, model: str) -> BatchState:
        body = (await self.provider.send(
            "GET", self._url(f"/v1/messages/batches/{provider_batch_id}"), model)).json()
        status = str(body.get("processing_status"))
        return BatchState(ended=status == "ended", status=status)

    async def results(self, provider_batch_id: str, requests: dict[str, ChatRequest],
                      model: str) -> dict[str, ItemResult]:
        content = await self.provider.send(
            "GET", self._url(f"/v1/messages/batches/{provider_batch_id}/results"), model)
        out: dict[str, ItemResult] = {}
        for text in content.text.splitlines():
            if text.strip():
                line: dict[str, Any] = json.loads(text)
                key, result = str(line.get("custom_id")), line.get("result") or {}
                kind = result.get("type")
                out[key] = (self._read(result.get("message"), requests.get(key))
                            if kind == "succeeded" else ItemResult(None, str(kind)))
        return out

    async def cancel(self, provider_batch_id: str, model: str) -> None:
        await self.provider.send(
            "POST", self._url(f"/v1/messages/batches/{provider_batch_id}/cancel"), model)
