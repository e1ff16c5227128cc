"""Images in chat messages: what a ``data:`` URL holds, checked as strictly as the
strictest provider of the fleet (Anthropic: at most 5 MB, bytes that match their media
type), so that a job may fall back from one wire format to the other. Sizes are read
from the images' own headers (PNG, JPEG, GIF, WebP); nothing is decoded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

__all__ = ["MAX_IMAGE_BYTES", "InlineImage", "image_dimensions", "parse_data_url", "sniff"]

#: Anthropic's limit per image (OpenAI allows more): the fleet keeps to the smaller.
MAX_IMAGE_BYTES = 5 * 1024 * 1024
_DATA_URL = re.compile(r"^data:(image/[a-z+.-]+);base64,(.*)$", re.S)
MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")


@dataclass(frozen=True, slots=True)
class InlineImage:
    """An image sent inline: its media type, bytes and the size its header states."""

    media_type: str
    data: bytes
    width: int
    height: int

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def base64(self) -> str:
        return base64.b64encode(self.data).decode()


def sniff(data: bytes) -> str | None:
    """The media type the bytes' magic number says, if one the fleet takes."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_dimensions(data: bytes, media_type: str) -> tuple[int, int] | None:
    """(width, height) from the image's header; None when it cannot be read."""
    try:
        if media_type == "image/png" and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return int(width), int(height)
        if media_type == "image/gif":
            width, height = struct.unpack("<HH", data[6:10])
            return int(width), int(height)
        if media_type == "image/webp":
            return _webp(data)
        if media_type == "image/jpeg":
            return _jpeg(data)
    except struct.error:
        return None
    return None


def _webp(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _jpeg(data: bytes) -> tuple[int, int] | None:
    """Walk the JPEG's segments to its start-of-frame, which holds the size."""
    at = 2
    while at + 9 < len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        length = int.from_bytes(data[at + 2:at + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD,
                      0xCE, 0xCF):
            height, width = struct.unpack(">HH", data[at + 5:at + 9])
            return int(width), int(height)
        at += 2 + length
    return None


def parse_data_url(url: str) -> InlineImage:
    """The image a ``data:image/...;base64,...`` URL holds; ValueError saying what is
    wrong (not base64, too large, bytes of another type, an unreadable header)."""
    match = _DATA_URL.match(url)
    if match is None:
        raise ValueError("an inline image is a data:image/<type>;base64,<data> URL")
    declared = match[1]
    if declared not in MEDIA_TYPES:
        raise ValueError(f"{declared} is not one of {', '.join(MEDIA_TYPES)}")
    if len(match[2]) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise ValueError(f"the image is over {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
    try:
        data = base64.b64decode(match[2], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the image's data is not valid base64") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"the image is over {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
    actual = sniff(data)
    if actual != declared:
        raise ValueError(f"the bytes are {actual or 'no image the fleet takes'}, not {declared}")
    size = image_dimensions(data, declared)
    if size is None or min(size) < 1:
        raise ValueError("the image's header does not say its size")
    return InlineImage(declared, data, *size)
