"""Image inputs: their format and size read from the bytes' headers, and their tokens.

The token rules need only width and height, which PNG, GIF and WebP state in their
first bytes and JPEG in its frame header, so no image library is needed: an image
costs one base64 decode and a few slices. URLs are never fetched (the simulator
makes no outbound calls); an image given by URL is taken to be 1024x1024.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import NamedTuple

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}
#: What an image given by URL is taken to measure: the simulator never fetches it.
URL_SIZE = (1024, 1024)
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+);base64,(.*)", re.DOTALL)
_PNG = b"\x89PNG\r\n\x1a\n"
_ANTHROPIC_LONG_SIDE = 1568
_ANTHROPIC_PIXELS = 1568 * 784
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # not DHT, JPG, DAC


class Image(NamedTuple):
    kind: str  # a key of MEDIA_TYPES
    width: int
    height: int


def _le(data: bytes, start: int, size: int) -> int:
    return int.from_bytes(data[start : start + size], "little")


def _be(data: bytes, start: int, size: int) -> int:
    return int.from_bytes(data[start : start + size], "big")


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy key frame
        return _le(data, 26, 2) & 0x3FFF, _le(data, 28, 2) & 0x3FFF
    if chunk == b"VP8L" and data[20:21] == b"\x2f":  # lossless
        bits = _le(data, 21, 4)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: canvas size, 24 bits each, minus one
        return _le(data, 24, 3) + 1, _le(data, 27, 3) + 1
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the segments to the first start-of-frame, which holds the size."""
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            at += 2
            continue
        if marker in _JPEG_SOF:
            return (_be(data, at + 7, 2), _be(data, at + 5, 2)) if at + 9 <= len(data) else None
        at += 2 + _be(data, at + 2, 2)
    return None


def read_image(data: bytes) -> Image | None:
    """The format and size of `data`, or None when it is no PNG, JPEG, GIF or WebP."""
    size: tuple[int, int] | None
    kind, size = "", None
    if data.startswith(_PNG) and data[12:16] == b"IHDR":
        kind, size = "png", (_be(data, 16, 4), _be(data, 20, 4))
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        kind, size = "gif", (_le(data, 6, 2), _le(data, 8, 2))
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        kind, size = "webp", _webp_size(data)
    elif data[:3] == b"\xff\xd8\xff":
        kind, size = "jpeg", _jpeg_size(data)
    if size is None or size[0] < 1 or size[1] < 1:
        return None
    return Image(kind, *size)


def sniff(data: bytes) -> str | None:
    """The format the magic number says, whether or not the size can be read."""
    for kind, magic in (("png", _PNG), ("jpeg", b"\xff\xd8\xff"), ("gif", b"GIF8")):
        if data.startswith(magic):
            return kind
    return "webp" if data[:4] == b"RIFF" and data[8:12] == b"WEBP" else None


def b64decode(data: str) -> bytes | None:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def data_url(url: str) -> tuple[str, bytes | None] | None:
    """(media type, bytes or None if not base64) of a data: URL; None for other URLs."""
    match = _DATA_URL.fullmatch(url)
    if match is None:
        return None
    return match[1], b64decode(match[2])


def openai_tokens(width: int, height: int, detail: str) -> int:
    """OpenAI's rule: low detail 85; else fit in 2048x2048, shortest side to 768,
    then 170 per 512-px tile plus 85. Images are only ever scaled down."""
    if detail == "low":
        return 85
    if max(width, height) > 2048:
        ratio = 2048 / max(width, height)
        width, height = round(width * ratio), round(height * ratio)
    if min(width, height) > 768:
        ratio = 768 / min(width, height)
        width, height = round(width * ratio), round(height * ratio)
    return 85 + 170 * math.ceil(width / 512) * math.ceil(height / 512)


def anthropic_tokens(width: int, height: int) -> int:
    """Anthropic's rule: width*height/750, rounded up, after scaling down to at most
    1568 px on the long side and to at most 1568x784 pixels in all: the largest
    image (about 1,600 tokens) its documentation lists as left unscaled."""
    if max(width, height) > _ANTHROPIC_LONG_SIDE:
        ratio = _ANTHROPIC_LONG_SIDE / max(width, height)
        width, height = max(1, round(width * ratio)), max(1, round(height * ratio))
    if width * height > _ANTHROPIC_PIXELS:
        ratio = math.sqrt(_ANTHROPIC_PIXELS / (width * height))
        width, height = max(1, round(width * ratio)), max(1, round(height * ratio))
    return math.ceil(width * height / 750)
