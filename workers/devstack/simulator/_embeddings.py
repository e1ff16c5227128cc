"""Feature-hashing embeddings for the provider simulator.

Random vectors would make retrieval tests meaningless; hashing lowercase
words and word bigrams into signed buckets gives vectors whose cosine
similarity rises with shared vocabulary, with no model and no numpy. The
hash is blake2b, not Python's per-process salted hash(), so vectors are
identical across runs and processes.
"""

from __future__ import annotations

import array
import base64
import functools
import hashlib
import itertools
import math
import re
import sys

DEFAULT_DIMENSIONS = 1536
LARGE_DIMENSIONS = 3072
MAX_DIMENSIONS = 16000
MAX_INPUTS = 2048
_NATIVE_DIMENSIONS = {
    "text-embedding-3-small": DEFAULT_DIMENSIONS,
    "text-embedding-3-large": LARGE_DIMENSIONS,
}
_WORD = re.compile(r"\w+")
_SIGN_BIT = 1 << 63


def default_dimensions(model: str) -> int:
    """Native width of `model`; a provider prefix ("openai/...") is ignored."""
    return _NATIVE_DIMENSIONS.get(model.rsplit("/", 1)[-1], DEFAULT_DIMENSIONS)


def max_dimensions(model: str) -> int:
    """The widest `dimensions` a request may ask of `model`.

    OpenAI's own models only shorten their native width; other names may ask
    for anything pgvector can store.
    """
    name = model.rsplit("/", 1)[-1]
    return _NATIVE_DIMENSIONS.get(name, MAX_DIMENSIONS)


@functools.lru_cache(maxsize=1 << 16)
def _feature_hash(feature: str) -> int:
    return int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")


def _features(text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


def embed(text: str, dimensions: int) -> list[float]:
    """A unit vector of `dimensions` floats for `text`.

    Each word and word bigram adds +1 or -1 (sign from the hash's top bit) to
    the bucket its hash selects. A text with no words, or whose features
    cancel out, maps to the first basis vector.
    """
    buckets: dict[int, float] = {}
    for feature in _features(text):
        hashed = _feature_hash(feature)
        index = hashed % dimensions
        buckets[index] = buckets.get(index, 0.0) + (-1.0 if hashed & _SIGN_BIT else 1.0)
    norm = math.sqrt(math.fsum(x * x for x in buckets.values()))
    vector = [0.0] * dimensions  # sparse: only the touched buckets are visited
    if norm == 0.0:
        vector[0] = 1.0
        return vector
    for index, value in buckets.items():
        vector[index] = value / norm
    return vector


def to_base64(vector: list[float]) -> str:
    """OpenAI's `encoding_format: "base64"`: little-endian float32, base64."""
    packed = array.array("f", vector)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")
