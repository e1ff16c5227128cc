"""Vector stores for retrieval: Postgres with pgvector, and an in-memory twin.

Both implement ``VectorStore`` (``_base``); one contract suite tests them alike.
"""

from workers.vectors._base import Document, Hit, VectorStore
from workers.vectors._memory import MemoryVectorStore
from workers.vectors._pg import PgVectorStore

__all__ = ["Document", "Hit", "MemoryVectorStore", "PgVectorStore", "VectorStore"]
