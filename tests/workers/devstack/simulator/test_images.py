"""Image inputs over real HTTP: their tokens by each provider's rule, read from the
bytes' headers, and the checks Anthropic makes (size, media type against the bytes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.workers.devstack.simulator.conftest import CHAT, MESSAGES, anthropic_error
from tests.workers.devstack.simulator.media import b64, data_url, gif, jpeg, png, webp

TEXT = {"type": "text", "text": "Describe this picture"}


def openai_prompt_tokens(client: httpx.Client, parts: list[Any]) -> int:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": [TEXT, *parts]}]}
    response = client.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    tokens: int = response.json()["usage"]["prompt_tokens"]
    return tokens


def image_part(url: str, detail: str | None) -> dict[str, Any]:
    image = {"url": url} if detail is None else {"url": url, "detail": detail}
    return {"type": "image_url", "image_url": image}


@pytest.mark.parametrize(
    ("url", "detail", "tokens"),
    [
        (data_url(png(4000, 3000)), "low", 85),
        (data_url(png(512, 512)), None, 85 + 170),  # auto: one tile
        (data_url(png(1024, 1024)), "high", 85 + 170 * 4),  # to 768x768: 2x2 tiles
        (data_url(png(2048, 4096)), "high", 85 + 170 * 6),  # 1024x2048, then 768x1536: 2x3
        (data_url(jpeg(800, 600), "image/jpeg"), "auto", 85 + 170 * 4),  # unscaled: 2x2
        (data_url(gif(100, 1500), "image/gif"), "high", 85 + 170 * 3),  # unscaled: 1x3
        (data_url(webp(5000, 1000), "image/webp"), "high", 85 + 170 * 4),  # to 2048x410: 4x1
        ("https://example.com/cat.png", "high", 85 + 170 * 4),  # never fetched: 1024x1024
    ],
)
def test_openai_image_tokens(client: httpx.Client, url: str, detail: str | None,
                             tokens: int) -> None:
    # Given an image part, whose size the simulator reads from its bytes
    # When the prompt is counted with and without it
    with_image = openai_prompt_tokens(client, [image_part(url, detail)])
    without = openai_prompt_tokens(client, [])
    # Then the image costs OpenAI's tile rule
    assert with_image - without == tokens


def claude_prompt_tokens(client: httpx.Client, blocks: list[Any]) -> int:
    body = {"model": "claude-sonnet", "max_tokens": 20,
            "messages": [{"role": "user", "content": [*blocks, TEXT]}]}
    response = client.post(MESSAGES, json=body)
    assert response.status_code == 200, response.text
    tokens: int = response.json()["usage"]["input_tokens"]
    return tokens


def base64_image(data: bytes, media_type: str = "image/png") -> dict[str, Any]:
    return {"type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": b64(data)}}


@pytest.mark.parametrize(
    ("block", "tokens"),
    [
        (base64_image(png(200, 200)), 54),  # 40,000 / 750, rounded up
        (base64_image(jpeg(1000, 1000), "image/jpeg"), 1334),
        (base64_image(gif(1092, 1092), "image/gif"), 1590),  # the largest unscaled square
        (base64_image(webp(3000, 1500), "image/webp"), 1640),  # long side to 1568: 1568x784
        (base64_image(png(2000, 2000)), 1640),  # 1568x1568, then to about 1.23 megapixels
        ({"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
         1399),  # never fetched: 1024x1024
    ],
)
def test_anthropic_image_tokens(client: httpx.Client, block: dict[str, Any],
                                tokens: int) -> None:
    # Given an image block; When the prompt is counted with and without it
    with_image = claude_prompt_tokens(client, [block])
    without = claude_prompt_tokens(client, [])
    # Then the image costs Anthropic's rule: width * height / 750 once scaled
    assert with_image - without == tokens


def test_tool_result_images_count(client: httpx.Client) -> None:
    # Given a tool result holding an image
    use = {"type": "tool_use", "id": "toolu_1", "name": "shot", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1",
              "content": [{"type": "text", "text": "here"}, base64_image(png(200, 200))]}
    messages = [{"role": "user", "content": "take a shot"},
                {"role": "assistant", "content": [use]},
                {"role": "user", "content": [result]}]
    body = {"model": "claude-sonnet", "max_tokens": 50, "messages": messages}
    # When it is sent, and again with no image
    tokens = client.post(MESSAGES, json=body).json()["usage"]["input_tokens"]
    result["content"] = result["content"][:1]
    fewer = client.post(MESSAGES, json=body).json()["usage"]["input_tokens"]
    # Then the image costs its tokens
    assert tokens - fewer == 54


OVERSIZED = b"\x89PNG\r\n\x1a\n" + b"\x00" * (4 * 1024 * 1024)  # base64: over 5 MB


@pytest.mark.parametrize(
    ("make", "media_type", "words"),
    [
        (lambda: OVERSIZED, "image/png", "image exceeds 5 MB maximum"),
        (lambda: png(10, 10), "image/jpeg", "specified using the image/jpeg media type, but the "
                                            "image appears to be a image/png image"),
        (lambda: jpeg(10, 10), "image/webp", "appears to be a image/jpeg image"),
        (lambda: gif(10, 10), "image/png", "appears to be a image/gif image"),
        (lambda: b"plain text, no image", "image/png", "Could not process image"),
        (lambda: png(10, 10), "image/bmp", "media_type"),
    ],
)
def test_anthropic_image_validation(
    client: httpx.Client, make: Callable[[], bytes], media_type: str, words: str
) -> None:
    # Given an image block that is too large, or whose bytes are not its media type
    body = {"model": "claude-sonnet", "max_tokens": 20,
            "messages": [{"role": "user", "content": [base64_image(make(), media_type), TEXT]}]}
    # When it is posted; Then it is a 400 naming the block's field and the reason
    message = anthropic_error(client.post(MESSAGES, json=body), 400, "invalid_request_error")
    assert message.startswith("messages.0.content.0.image.source.base64")
    assert words in message
