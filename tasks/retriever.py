"""Retrieval-augmented generation for agents: chunk, embed through the fleet, search.

``ContextRetriever`` embeds through ``FleetClient.embed`` (so the fleet's per-text
cache, budgets and ledger apply to indexing too) and keeps chunks in a vector store,
by default Postgres with pgvector at DATABASE_URL (or the embedded stack's). The store
is imported only when first needed: ``import tasks`` stays free of database code.
POSTGRES_VECTOR_CONNECTION puts the vectors in another Postgres than the fleet's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from schemas import ConfigError, JobValidationError, Settings, load_config
from schemas.vectors import Document, Hit, VectorStore
from tasks._discovery import STACK_FILE
from tasks.client import FleetClient

__all__ = ["ContextRetriever", "chunk_text"]

#: Chunks per embedding job: many jobs in flight at once, each well under the limits.
EMBED_BATCH = 256

_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _pieces(text: str, size: int) -> Iterator[tuple[str, str]]:
    """(separator before it, piece): paragraphs, else sentences, else words, each at
    most ``size`` characters; only a word longer than ``size`` is cut."""
    for paragraph in filter(None, (p.strip() for p in _PARAGRAPH.split(text))):
        if len(paragraph) <= size:
            yield "\n\n", paragraph
            continue
        for s_index, sentence in enumerate(filter(None, _SENTENCE.split(paragraph))):
            sep = "\n\n" if s_index == 0 else " "
            if len(sentence) <= size:
                yield sep, sentence
                continue
            for w_index, word in enumerate(sentence.split()):
                sep = sep if w_index == 0 else " "
                for start in range(0, len(word), size):
                    yield (sep if start == 0 else ""), word[start:start + size]


def _tail(text: str, overlap: int) -> str:
    """The last whole words of ``text``, at most ``overlap`` characters."""
    if overlap <= 0:
        return ""
    cut = text[-overlap:]
    if len(cut) < len(text) and not text[-overlap - 1].isspace():
        cut = cut.split(None, 1)[1] if len(cut.split(None, 1)) > 1 else ""
    return cut.strip()


def chunk_text(text: str, size: int = 800, overlap: int = 100) -> list[str]:
    """Split ``text`` into chunks of at most ``size`` characters on paragraph, sentence
    or word boundaries; each chunk repeats up to ``overlap`` characters (whole words) of
    the one before, so a sentence cut at a boundary is still found whole on one side."""
    if not 0 <= overlap < size:
        raise ValueError(f"chunk_overlap {overlap} must be >= 0 and < chunk_size {size}")
    text = text.strip()
    if len(text) <= size:
        return [text] if text else []
    chunks: list[str] = []
    current = ""
    for sep, piece in _pieces(text, size):
        if not current or len(current) + len(sep) + len(piece) <= size:
            current = current + sep + piece if current else piece
            continue
        chunks.append(current)
        tail = _tail(current, overlap)
        current = f"{tail} {piece}" if tail and len(tail) + 1 + len(piece) <= size else piece
    chunks.append(current)
    return chunks


def _database_url(settings: Settings) -> str:
    """The vector store's Postgres: POSTGRES_VECTOR_CONNECTION, else DATABASE_URL, else
    the embedded stack's published one (as for Redis)."""
    configured = settings.vector_url(settings.database_url)
    if configured:
        return configured
    path = settings.resolved_data_dir / STACK_FILE
    try:
        url = json.loads(path.read_text("utf-8")).get("database_url")
    except (OSError, ValueError):
        url = None
    if not url:
        raise ConfigError(f"DATABASE_URL is not set and no embedded fleet is running under "
                          f"{path.parent}: start one with `llmfleet up`, or set DATABASE_URL "
                          "(or POSTGRES_VECTOR_CONNECTION)", key="DATABASE_URL")
    return str(url)


class ContextRetriever:
    """Documents in, relevant chunks out, for one collection.

    ``client`` embeds (a FleetClient of the environment if None); ``store`` keeps the
    vectors (if None, PgVectorStore on POSTGRES_VECTOR_CONNECTION, else on the fleet's
    Postgres). ``dimensions`` asks the
    embedding model for that width (a collection keeps the width it was made with).
    """

    def __init__(self, collection: str, *, client: FleetClient | None = None,
                 store: VectorStore | None = None, chunk_size: int = 800,
                 chunk_overlap: int = 100, dimensions: int | None = None,
                 model: str | None = None, timeout: float = 120) -> None:
        if not 0 <= chunk_overlap < chunk_size:
            raise ValueError(f"chunk_overlap {chunk_overlap} must be >= 0 and < "
                             f"chunk_size {chunk_size}")
        self.collection = collection
        self.chunk_size, self.chunk_overlap = chunk_size, chunk_overlap
        self.dimensions, self.model, self.timeout = dimensions, model, timeout
        self._client, self._owns_client = client, client is None
        self._store, self._owns_store = store, store is None

    @property
    def client(self) -> FleetClient:
        if self._client is None:
            self._client = FleetClient(agent="retriever")
        return self._client

    @property
    def store(self) -> VectorStore:
        if self._store is None:
            from tasks.vectors.pg import PgVectorStore

            settings = self._client.settings if self._client else load_config()[0]
            self._store = PgVectorStore(_database_url(settings))
        return self._store

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Vectors for ``texts`` in order: every batch submitted before any is awaited."""
        options = {"dimensions": self.dimensions, "model": self.model}
        handles = [self.client.embed(list(texts[i:i + EMBED_BATCH]), **options)
                   for i in range(0, len(texts), EMBED_BATCH)]
        return [v for h in handles for v in h.get(timeout=self.timeout).vectors]

    def add_documents(self, docs: Iterable[Mapping[str, Any]]) -> int:
        """Chunk, embed and upsert documents ({"id", "text", "metadata"?}); a document
        already stored has all its chunks replaced. Returns the chunks written."""
        chunked: list[tuple[str, list[str], Mapping[str, Any]]] = []
        for index, doc in enumerate(docs):
            if "id" not in doc or not isinstance(doc.get("text"), str):
                raise JobValidationError(f"docs[{index}]: needs an id and a text",
                                         field=f"docs[{index}]")
            chunks = chunk_text(doc["text"], self.chunk_size, self.chunk_overlap)
            if chunks:
                chunked.append((str(doc["id"]), chunks, dict(doc.get("metadata") or {})))
        vectors = iter(self.embed([c for _, chunks, _ in chunked for c in chunks]))
        documents = [Document(id=doc_id, chunks=chunks,
                              embeddings=[next(vectors) for _ in chunks], metadata=meta)
                     for doc_id, chunks, meta in chunked]
        return self.store.upsert(self.collection, documents)

    def delete(self, ids: Sequence[str]) -> int:
        """Remove documents by id; returns the chunks removed."""
        return self.store.delete(self.collection, [str(i) for i in ids])

    def retrieve(self, query: str, top_k: int = 5,
                 filters: Mapping[str, Any] | None = None) -> list[Hit]:
        """The ``top_k`` chunks closest to ``query``, best first (``score``: cosine
        similarity); ``filters``: metadata the chunks' documents must contain."""
        vector = self.embed([query])[0]
        return self.store.search(self.collection, vector, top_k, filters=filters)

    def retrieve_and_format(self, query: str, top_k: int = 5,
                            filters: Mapping[str, Any] | None = None,
                            max_chars: int | None = None) -> str:
        """The retrieved chunks numbered with their ids, ready for a prompt; at most
        ``max_chars`` (whole chunks first, the last one cut if it alone is too long)."""
        parts: list[str] = []
        used = 0
        for number, hit in enumerate(self.retrieve(query, top_k, filters), 1):
            part = f"[{number}] (id: {hit.id}, chunk {hit.chunk}, score {hit.score:.3f})\n" \
                   f"{hit.text}"
            if max_chars is not None and used + len(part) > max_chars:
                if not parts:
                    parts.append(part[:max_chars])
                break
            parts.append(part)
            used += len(part) + 2
        return "\n\n".join(parts)

    def close(self) -> None:
        if self._owns_store and self._store is not None:
            self._store.close()
        if self._owns_client and self._client is not None:
            self._client.close()

    def __enter__(self) -> ContextRetriever:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
