"""Provider batch APIs: many chat requests sent at once, answered within a day at about
half the price. One interface (``BatchAPI``), one module per wire format
(``openai_batches``: Files and Batch; ``anthropic_batches``: Message Batches), chosen
from ``BATCH_KINDS`` by the provider's ``kind``.

A batch API wraps the provider of its wire format: the same headers, timeouts and
error mapping (``Provider.send``), each request written as a live call's body
(``chat_payload``) and each answer read back as one (``read_completion``).
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from schemas import ProviderError
from workers.providers.base import ChatRequest, Completion, Provider

__all__ = ["BatchAPI", "BatchItem", "BatchState", "ItemResult", "custom_id"]

_CUSTOM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def custom_id(job_id: str) -> str:
    """A job's id in a batch: itself when both formats take it (ids the fleet makes are
    32 hex digits), else a digest of it that they do."""
    if _CUSTOM_ID.match(job_id):
        return job_id
    return "h" + hashlib.sha256(job_id.encode()).hexdigest()[:60]


@dataclass(frozen=True, slots=True)
class BatchItem:
    custom_id: str
    request: ChatRequest


@dataclass(frozen=True, slots=True)
class BatchState:
    """Where a provider batch stands: ``ended`` once its results can be read;
    ``status`` in the provider's words (completed, expired, failed, cancelled, ...)."""

    ended: bool
    status: str


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One request's end: its answer, or why it has none (errored, expired,
    canceled, malformed)."""

    completion: Completion | None
    error: str | None = None


class BatchAPI(ABC):
    """A provider's batch API for chat completions."""

    #: The fleet file's provider ``kind`` this class serves.
    kind: ClassVar[str]

    def __init__(self, provider: Provider) -> None:
        self.provider = provider

    @property
    def name(self) -> str:
        return self.provider.name

    def _url(self, path: str) -> str:
        return self.provider.config.base_url.rstrip("/") + path

    @abstractmethod
    async def submit(self, items: list[BatchItem], batch_id: str, model: str) -> str:
        """Send ``items`` (one model's) as one batch labelled ``batch_id`` where the
        format allows; the provider's id of the batch."""

    @abstractmethod
    async def find(self, batch_id: str, model: str) -> str | None:
        """The provider's id of a batch submitted as ``batch_id`` (a submit whose answer
        was lost), when the format lets it be found; else None."""

    @abstractmethod
    async def state(self, provider_batch_id: str, model: str) -> BatchState: ...

    @abstractmethod
    async def results(self, provider_batch_id: str, requests: dict[str, ChatRequest],
                      model: str) -> dict[str, ItemResult]:
        """The ended batch's results by custom id; ``requests`` (by custom id) tell how
        to read each answer. An item absent from the map has no result at all."""

    @abstractmethod
    async def cancel(self, provider_batch_id: str, model: str) -> None: ...

    def _read(self, body: object, request: ChatRequest | None) -> ItemResult:
        """An item's answer read as a live call's, or the reason it cannot be."""
        if request is None:
            return ItemResult(None, "unknown custom_id")
        reader = getattr(self.provider, "read_completion", None)
        if reader is None:
            return ItemResult(None, f"{self.provider.kind} answers cannot be read")
        try:
            completion: Completion = reader(body, request)
        except ProviderError as exc:
            return ItemResult(None, f"malformed: {exc.message[:200]}")
        return ItemResult(completion)
