"""Providers, chosen from a registry by the fleet file's ``kind`` (never an if-chain)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import httpx

from schemas import FleetConfig
from workers.providers.anthropic import AnthropicProvider
from workers.providers.anthropic_batches import AnthropicBatches
from workers.providers.base import (
    ChatRequest,
    Completion,
    Embeddings,
    EmbedRequest,
    Provider,
)
from workers.providers.batches import BatchAPI, BatchItem, BatchState, ItemResult, custom_id
from workers.providers.errors import error_for_status, redact
from workers.providers.openai import OpenAIProvider
from workers.providers.openai_batches import OpenAIBatches
from workers.providers.streaming import Delta, ToolCallDelta

__all__ = [
    "BATCH_KINDS",
    "PROVIDER_KINDS",
    "BatchAPI",
    "BatchItem",
    "BatchState",
    "ChatRequest",
    "Completion",
    "Delta",
    "EmbedRequest",
    "Embeddings",
    "ItemResult",
    "Provider",
    "ToolCallDelta",
    "build_batch_apis",
    "build_providers",
    "custom_id",
    "error_for_status",
    "missing_keys",
    "redact",
]

#: Wire format name -> the class that speaks it.
PROVIDER_KINDS: dict[str, type[Provider]] = {
    OpenAIProvider.kind: OpenAIProvider,
    AnthropicProvider.kind: AnthropicProvider,
}

#: Wire format name -> its batch API.
BATCH_KINDS: dict[str, type[BatchAPI]] = {
    OpenAIBatches.kind: OpenAIBatches,
    AnthropicBatches.kind: AnthropicBatches,
}


def build_providers(fleet: FleetConfig, http: httpx.AsyncClient,
                    env: Mapping[str, str]) -> dict[str, Provider]:
    """One provider object per fleet-file provider, sharing one HTTP client."""
    return {
        name: PROVIDER_KINDS[cfg.kind](
            name, cfg, http, env.get(cfg.api_key_env) if cfg.api_key_env else None)
        for name, cfg in fleet.providers.items()
    }


def missing_keys(fleet: FleetConfig, tiers: Iterable[str],
                 env: Mapping[str, str]) -> dict[str, str]:
    """Providers used by ``tiers`` whose key variable is unset: {provider: variable}."""
    used = {fleet.models[m].provider for t in tiers for m in fleet.tiers[t].models}
    return {name: cfg.api_key_env for name, cfg in fleet.providers.items()
            if name in used and cfg.api_key_env and not env.get(cfg.api_key_env)}


def build_batch_apis(fleet: FleetConfig, providers: Mapping[str, Provider]
                     ) -> dict[str, BatchAPI]:
    """The batch API of each provider that serves one (``batch_api``), by provider name."""
    return {name: BATCH_KINDS[cfg.kind](providers[name])
            for name, cfg in fleet.providers.items()
            if cfg.batch_api and cfg.kind in BATCH_KINDS}
