"""OpenAI's Batch API: the requests uploaded as a JSONL file (Files API, purpose
"batch"), a batch created from it with a 24-hour window and our batch id in its
``metadata``, polled, and its output and error files downloaded when it ends.

Found again by that metadata (``find``): a batcher that died between creating a batch
and recording its id lists the provider's batches and adopts its own.
"""

from __future__ import annotations

import json
from typing import Any

from schemas import ProviderServerError
from workers.providers.base import ChatRequest
from workers.providers.batches import BatchAPI, BatchItem, BatchState, ItemResult
from workers.providers.openai import OpenAIProvider

__all__ = ["OpenAIBatches"]

ENDPOINT = "/v1/chat/completions"
#: The metadata key that names our batch id.
LABEL = "llmfleet_batch"
_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
#: How far back ``find`` looks: pages of 100 batches, newest first.
_FIND_PAGES = 10


class OpenAIBatches(BatchAPI):
    kind = "openai"

    async def submit(self, items: list[BatchItem], batch_id: str, model: str) -> str:
        provider = self.provider
        assert isinstance(provider, OpenAIProvider)
        lines = [json.dumps({"custom_id": item.custom_id, "method": "POST", "url": ENDPOINT,
                             "body": provider.chat_payload(item.request)},
                            ensure_ascii=False, separators=(",", ":"))
                 for item in items]
        data = ("\n".join(lines) + "\n").encode()
        uploaded = await provider.send(
            "POST", self._url("/files"), model, data={"purpose": "batch"},
            files={"file": (f"llmfleet-{batch_id}.jsonl", data, "application/jsonl")})
        file_id = _field(uploaded.json(), "id", self.name, model)
        created = await provider.send(
            "POST", self._url("/batches"), model,
            json={"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h",
                  "metadata": {LABEL: batch_id}})
        return _field(created.json(), "id", self.name, model)

    async def find(self, batch_id: str, model: str) -> str | None:
        after: str | None = None
        for _ in range(_FIND_PAGES):
            params: dict[str, Any] = {"limit": 100, **({"after": after} if after else {})}
            page = (await self.provider.send("GET", self._url("/batches"), model,
                                             params=params)).json()
            for batch in page.get("data") or ():
                if (batch.get("metadata") or {}).get(LABEL) == batch_id:
                    return str(batch["id"])
            if not page.get("has_more") or not page.get("last_id"):
                return None
            after = str(page["last_id"])
        return None

    async def state(self, provider_batch_id: str, model: str) -> BatchState:
        body = (await self.provider.send("GET", self._url(f"/batches/{provider_batch_id}"),
                                         model)).json()
        status = str(body.get("status"))
        return BatchState(ended=status in _ENDED, status=status)

    async def results(self, provider_batch_id: str, requests: dict[str, ChatRequest],
                      model: str) -> dict[str, ItemResult]:
        body = (await self.provider.send("GET", self._url(f"/batches/{provider_batch_id}"),
                                         model)).json()
        out: dict[str, ItemResult] = {}
        for key in ("output_file_id", "error_file_id"):
            if body.get(key):
                content = await self.provider.send(
                    "GET", self._url(f"/files/{body[key]}/content"), model)
                for text in content.text.splitlines():
                    if text.strip():
                        self._line(json.loads(text), requests, out)
        return out

    def _line(self, line: dict[str, Any], requests: dict[str, ChatRequest],
              out: dict[str, ItemResult]) -> None:
        key = str(line.get("custom_id"))
        response, error = line.get("response"), line.get("error")
        if isinstance(response, dict) and response.get("status_code") == 200:
            out[key] = self._read(response.get("body"), requests.get(key))
        elif isinstance(error, dict):
            out[key] = ItemResult(None, str(error.get("code") or "error"))
        else:
            status = response.get("status_code") if isinstance(response, dict) else None
            out[key] = ItemResult(None, f"errored: HTTP {status}")

    async def cancel(self, provider_batch_id: str, model: str) -> None:
        await self.provider.send("POST", self._url(f"/batches/{provider_batch_id}/cancel"),
                                 model)


def _field(body: Any, name: str, provider: str, model: str) -> str:
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, str):
        raise ProviderServerError(f"{provider}: the batch API answered without {name!r}",
                                  provider=provider, model=model)
    return value
