"""Vectors as Redis keeps them: little-endian float32 bytes, whatever the host's order.
Both caches that store vectors (per-text embeddings, the semantic index) use these."""

from __future__ import annotations

import array
import sys
from collections.abc import Iterable

__all__ = ["from_float32", "to_float32"]


def to_float32(vector: Iterable[float]) -> bytes:
    floats = array.array("f", vector)
    if sys.byteorder == "big":
        floats.byteswap()
    return floats.tobytes()


def from_float32(data: bytes) -> array.array[float]:
    floats = array.array("f")
    floats.frombytes(data)
    if sys.byteorder == "big":
        floats.byteswap()
    return floats
