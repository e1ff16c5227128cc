"""What every vector store offers: collections of chunked documents, searched by cosine.

A collection holds documents of one embedding width; a document is stored as its
chunks (text, vector, the document's metadata). Upserting a document replaces all of
its chunks, so a re-chunked document leaves no stale tail behind. Search answers
``Hit``s, best first, with ``score`` the cosine similarity (higher is closer), and may
narrow by metadata containment (JSONB ``@>`` semantics: every key of the filter,
recursively, must be present with that value).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.errors import VectorDimensionError, VectorStoreError

__all__ = ["Document", "Hit", "VectorStore", "check_dimensions", "contains", "normalized"]


@dataclass(frozen=True)
class Hit:
    """One chunk found by a search."""

    #: The document's id.
    id: str
    #: Cosine similarity to the query, in [-1, 1]; higher is closer.
    score: float
    text: str
    metadata: Mapping[str, Any]
    #: The chunk's position within its document (0 for an unchunked document).
    chunk: int = 0


@dataclass(frozen=True)
class Document:
    """A document to upsert: its chunks' texts and vectors, in order."""

    id: str
    chunks: Sequence[str]
    embeddings: Sequence[Sequence[float]]
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.chunks) != len(self.embeddings):
            raise VectorStoreError(
                f"document {self.id!r}: {len(self.chunks)} chunks but "
                f"{len(self.embeddings)} embeddings")


class VectorStore(ABC):
    """The interface both stores implement; one contract suite tests them alike."""

    @abstractmethod
    def create_collection(self, name: str, dimensions: int) -> None:
        """Create ``name`` for vectors of ``dimensions``; a no-op if it exists with that
        width, a VectorDimensionError if it exists with another."""

    @abstractmethod
    def dimensions(self, collection: str) -> int | None:
        """The collection's width, None if it does not exist."""

    @abstractmethod
    def upsert(self, collection: str, documents: Sequence[Document]) -> int:
        """Replace the chunks of each document (creating the collection at the first
        vector's width if needed); returns the chunks written."""

    @abstractmethod
    def delete(self, collection: str, doc_ids: Sequence[str]) -> int:
        """Remove documents with all their chunks; returns the chunks removed."""

    @abstractmethod
    def search(self, collection: str, vector: Sequence[float], top_k: int = 5, *,
               filters: Mapping[str, Any] | None = None, ef_search: int | None = None,
               exact: bool = False) -> list[Hit]:
        """The ``top_k`` chunks closest to ``vector``. ``ef_search`` widens the index's
        candidate list for this query (recall against speed); ``exact`` skips the index."""

    @abstractmethod
    def count(self, collection: str) -> int:
        """Chunks in the collection (0 if it does not exist)."""

    @abstractmethod
    def drop_collection(self, name: str) -> None:
        """Remove the collection and everything in it."""

    def close(self) -> None:  # noqa: B027 - a store that holds nothing closes nothing
        """Release connections."""

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def check_dimensions(collection: str, expected: int, vectors: Sequence[Sequence[float]]) -> None:
    """Refuse any vector whose width is not the collection's, naming both widths."""
    for vector in vectors:
        if len(vector) != expected:
            raise VectorDimensionError(
                f"collection {collection!r} holds vectors of {expected} dimensions, "
                f"not {len(vector)}: embed with dimensions={expected}, or use another "
                "collection", collection=collection, expected=expected, got=len(vector))


def contains(value: Any, pattern: Any) -> bool:
    """JSONB containment (``value @> pattern``) for plain JSON values."""
    if isinstance(pattern, Mapping):
        return isinstance(value, Mapping) and all(
            k in value and contains(value[k], v) for k, v in pattern.items())
    if isinstance(pattern, list):
        if not isinstance(value, list):
            return False
        return all(any(contains(item, p) for item in value) for p in pattern)
    if isinstance(value, bool) or isinstance(pattern, bool):
        return value is pattern
    return bool(value == pattern)

def normalized(vector: Sequence[float]) -> list[float]:
    """``vector`` scaled to unit length (the zero vector stays zero)."""
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if norm else [0.0] * len(vector)
