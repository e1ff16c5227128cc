"""A vector store in process memory: exact cosine search in plain Python.

For tests and small tools: no server, nothing kept after the process. It answers what
the Postgres store answers for the same data (the contract suite runs on both), only
exactly and slowly (every search scans the collection).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.vectors import (
    Document,
    Hit,
    VectorStore,
    check_dimensions,
    contains,
    normalized,
)

__all__ = ["MemoryVectorStore"]


@dataclass
class _Collection:
    dimensions: int
    created_at: dt.datetime
    #: doc id -> its chunks as (text, unit vector, metadata).
    docs: dict[str, list[tuple[str, list[float], dict[str, Any]]]] = field(default_factory=dict)


class MemoryVectorStore(VectorStore):
    """Collections in a dict, guarded by one lock."""

    def __init__(self) -> None:
        self._collections: dict[str, _Collection] = {}
        self._lock = threading.Lock()

    def create_collection(self, name: str, dimensions: int) -> None:
        with self._lock:
            self._create(name, dimensions)

    def _create(self, name: str, dimensions: int) -> _Collection:
        existing = self._collections.get(name)
        if existing is not None:
            check_dimensions(name, existing.dimensions, [[0.0] * dimensions])
            return existing
        created = _Collection(dimensions=dimensions, created_at=dt.datetime.now(dt.UTC))
        self._collections[name] = created
        return created

    def dimensions(self, collection: str) -> int | None:
        found = self._collections.get(collection)
        return found.dimensions if found else None

    def upsert(self, collection: str, documents: Sequence[Document]) -> int:
        vectors = [v for d in documents for v in d.embeddings]
        if not vectors:
            return 0
        with self._lock:
            found = self._collections.get(collection)
            width = found.dimensions if found else len(vectors[0])
            check_dimensions(collection, width, vectors)
            target = self._create(collection, width)
            for doc in documents:
                target.docs[doc.id] = [
                    (text, normalized(vector), dict(doc.metadata))
                    for text, vector in zip(doc.chunks, doc.embeddings, strict=True)]
        return len(vectors)

    def delete(self, collection: str, doc_ids: Sequence[str]) -> int:
        with self._lock:
            found = self._collections.get(collection)
            if found is None:
                return 0
            return sum(len(found.docs.pop(i, [])) for i in set(doc_ids))

    def search(self, collection: str, vector: Sequence[float], top_k: int = 5, *,
               filters: Mapping[str, Any] | None = None, ef_search: int | None = None,
               exact: bool = False) -> list[Hit]:
        with self._lock:
            found = self._collections.get(collection)
            if found is None:
                return []
            check_dimensions(collection, found.dimensions, [vector])
            query = normalized(vector)
            hits = [
                Hit(id=doc_id, score=sum(a * b for a, b in zip(query, vec, strict=True)),
                    text=text, metadata=metadata, chunk=index)
                for doc_id, chunks in found.docs.items()
                for index, (text, vec, metadata) in enumerate(chunks)
                if filters is None or contains(metadata, filters)]
        hits.sort(key=lambda h: (-h.score, h.id, h.chunk))
        return hits[:top_k]

    def count(self, collection: str) -> int:
        found = self._collections.get(collection)
        return sum(len(c) for c in found.docs.values()) if found else 0

    def drop_collection(self, name: str) -> None:
        with self._lock:
            self._collections.pop(name, None)
