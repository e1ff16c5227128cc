"""Vector stores an agent process opens for retrieval: Postgres with pgvector, and an
in-memory twin. Both implement ``schemas.vectors.VectorStore``; one contract suite tests
them alike. Imported on demand (``ContextRetriever.store``): ``import tasks`` loads no
database code."""

from schemas.vectors import Document, Hit, VectorStore
from tasks.vectors.memory import MemoryVectorStore
from tasks.vectors.pg import PgVectorStore

__all__ = ["Document", "Hit", "MemoryVectorStore", "PgVectorStore", "VectorStore"]
