"""The vector store in Postgres with pgvector, through SQLAlchemy.

One ``vector_chunks`` table for every collection, its ``embedding`` a ``vector``
without a fixed width, and per collection a partial HNSW index on
``(embedding::vector(N)) vector_cosine_ops WHERE collection = '<name>'``. Why not a
table per collection: one schema to migrate and back up, no table names made from
user input, and a collection costs one index, not one table. The price is that every
search must say the same cast and predicate as its collection's index (the queries
here do) and run with custom plans (a generic plan cannot prove a bound collection
name implies the index's predicate). Widths past 2,000 (HNSW's limit for ``vector``)
are indexed as ``halfvec`` (up to 4,000); wider collections are searched exactly.

The tables are created here, lazily, not by a migration: a Postgres without pgvector
still runs the fleet, and only this store refuses, with PgvectorMissingError.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from pgvector.sqlalchemy import VECTOR
from sqlalchemy import (
    Column,
    Connection,
    Integer,
    MetaData,
    Table,
    Text,
    create_engine,
    insert,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError

from schemas import PgvectorMissingError, VectorStoreError, sqlalchemy_url
from schemas.vectors import Document, Hit, VectorStore, check_dimensions

__all__ = ["PgVectorStore"]

#: Collection names become SQL literals in index predicates: keep them plain.
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
#: Widest ``vector`` an HNSW index takes; ``halfvec`` takes twice that.
_VECTOR_INDEX_MAX, _HALFVEC_INDEX_MAX = 2000, 4000
#: Serialises our DDL across processes (an arbitrary, fixed advisory lock key).
_DDL_LOCK = 0x6C6C6D76

_meta = MetaData()
vector_chunks = Table(
    "vector_chunks", _meta,
    Column("collection", Text, primary_key=True),
    Column("doc_id", Text, primary_key=True),
    Column("chunk_index", Integer, primary_key=True),
    Column("text", Text, nullable=False),
    Column("metadata", JSONB, nullable=False),
    Column("embedding", VECTOR(), nullable=False),
)

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS vector_collections (
        name text PRIMARY KEY,
        dimensions integer NOT NULL CHECK (dimensions BETWEEN 1 AND 16000),
        created_at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE IF NOT EXISTS vector_chunks (
        collection text NOT NULL REFERENCES vector_collections (name) ON DELETE CASCADE,
        doc_id text NOT NULL,
        chunk_index integer NOT NULL,
        text text NOT NULL,
        metadata jsonb NOT NULL DEFAULT '{}',
        embedding vector NOT NULL,
        PRIMARY KEY (collection, doc_id, chunk_index))""",
    """CREATE INDEX IF NOT EXISTS ix_vector_chunks_metadata
        ON vector_chunks USING gin (metadata jsonb_path_ops)""",
]


def _missing_message(available: bool, server_major: int) -> str:
    how = ("run `CREATE EXTENSION vector;` in this database as a superuser"
           if available else
           f"install pgvector on the server (the postgresql-{server_major}-pgvector "
           "package, or the pgvector/pgvector Docker image), then run "
           "`CREATE EXTENSION vector;` in this database as a superuser")
    return ("the pgvector extension is missing from this database and could not be "
            f"created: {how}. The rest of the fleet runs without it; only the vector "
            "store needs it.")


def _cast(dimensions: int) -> str:
    """The type a collection's vectors are indexed and compared as."""
    kind = "vector" if dimensions <= _VECTOR_INDEX_MAX else "halfvec"
    return f"{kind}({dimensions})"


def _index_name(collection: str) -> str:
    return "ix_vector_chunks_hnsw_" + hashlib.sha256(collection.encode()).hexdigest()[:16]


class PgVectorStore(VectorStore):
    """Collections of chunks in Postgres, searched through per-collection HNSW indexes.

    ``m`` and ``ef_construction`` shape each new index (pgvector's defaults);
    ``ef_search`` is the default candidate list per query (pgvector's default is 40).
    """

    def __init__(self, database_url: str, *, ef_search: int = 100, m: int = 16,
                 ef_construction: int = 64) -> None:
        self._engine = create_engine(sqlalchemy_url(database_url), pool_pre_ping=True,
                                     pool_size=2)
        self._ef_search = ef_search
        self._index_options = f"m = {int(m)}, ef_construction = {int(ef_construction)}"
        self._ready = False
        self._dims: dict[str, int] = {}

    # -- schema --------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        """A connection in a transaction (committed at the end), the schema ensured
        first (once per store)."""
        if not self._ready:
            with self._engine.begin() as conn:
                self._ensure_schema(conn)
            self._ready = True
        with self._engine.begin() as conn:
            yield conn

    def _ensure_schema(self, conn: Connection) -> None:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _DDL_LOCK})
        has = conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'vector'"))
        if has.first() is None:
            try:
                with conn.begin_nested():
                    conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
            except DBAPIError:
                available = conn.execute(text(
                    "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).first()
                major = int(conn.execute(text("SHOW server_version_num")).scalar_one()) // 10000
                raise PgvectorMissingError(_missing_message(available is not None, major)
                                           ) from None
        for statement in _SCHEMA:
            conn.execute(text(statement))

    def create_collection(self, name: str, dimensions: int) -> None:
        with self._engine.begin() as conn:
            if not self._ready:
                self._ensure_schema(conn)
                self._ready = True
            self._create(conn, name, dimensions)

    def _create(self, conn: Connection, name: str, dimensions: int) -> int:
        if not _NAME.match(name):
            raise VectorStoreError(f"collection name {name!r}: use 1-200 letters, digits "
                                   "and _ . : -", collection=name)
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _DDL_LOCK})
        conn.execute(text("INSERT INTO vector_collections (name, dimensions) VALUES (:n, :d) "
                          "ON CONFLICT (name) DO NOTHING"), {"n": name, "d": dimensions})
        width = int(conn.execute(text("SELECT dimensions FROM vector_collections "
                                      "WHERE name = :n"), {"n": name}).scalar_one())
        check_dimensions(name, width, [[0.0] * dimensions])
        if width <= _HALFVEC_INDEX_MAX:
            ops = "vector_cosine_ops" if width <= _VECTOR_INDEX_MAX else "halfvec_cosine_ops"
            conn.execute(text(
                f"CREATE INDEX IF NOT EXISTS {_index_name(name)} ON vector_chunks "
                f"USING hnsw ((embedding::{_cast(width)}) {ops}) "
                f"WITH ({self._index_options}) WHERE collection = '{name}'"))
        self._dims[name] = width
        return width

    def dimensions(self, collection: str) -> int | None:
        if collection in self._dims:
            return self._dims[collection]
        with self._connect() as conn:
            found = conn.execute(text("SELECT dimensions FROM vector_collections "
                                      "WHERE name = :n"), {"n": collection}).scalar()
        if found is not None:
            self._dims[collection] = int(found)
        return None if found is None else int(found)

    # -- writes --------------------------------------------------------------

    def upsert(self, collection: str, documents: Sequence[Document]) -> int:
        vectors = [v for d in documents for v in d.embeddings]
        if not vectors:
            return 0
        width = self.dimensions(collection)
        check_dimensions(collection, width or len(vectors[0]), vectors)
        rows = [{"collection": collection, "doc_id": d.id, "chunk_index": i, "text": t,
                 "metadata": dict(d.metadata), "embedding": list(v)}
                for d in documents for i, (t, v) in enumerate(zip(d.chunks, d.embeddings,
                                                                  strict=True))]
        with self._connect() as conn:
            if width is None:
                self._create(conn, collection, len(vectors[0]))
            conn.execute(text("DELETE FROM vector_chunks WHERE collection = :c "
                              "AND doc_id = ANY(:ids)"),
                         {"c": collection, "ids": [d.id for d in documents]})
            conn.execute(insert(vector_chunks), rows)
        return len(rows)

    def delete(self, collection: str, doc_ids: Sequence[str]) -> int:
        with self._connect() as conn:
            result = conn.execute(text("DELETE FROM vector_chunks WHERE collection = :c "
                                       "AND doc_id = ANY(:ids)"),
                                  {"c": collection, "ids": list(doc_ids)})
        return int(result.rowcount)

    def drop_collection(self, name: str) -> None:
        with self._connect() as conn:
            conn.execute(text(f"DROP INDEX IF EXISTS {_index_name(name)}"))
            conn.execute(text("DELETE FROM vector_collections WHERE name = :n"), {"n": name})
        self._dims.pop(name, None)

    # -- reads ---------------------------------------------------------------

    def count(self, collection: str) -> int:
        with self._connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM vector_chunks "
                                         "WHERE collection = :c"), {"c": collection}
                                    ).scalar_one())

    def search(self, collection: str, vector: Sequence[float], top_k: int = 5, *,
               filters: Mapping[str, Any] | None = None, ef_search: int | None = None,
               exact: bool = False) -> list[Hit]:
        width = self.dimensions(collection)
        if width is None:
            return []
        check_dimensions(collection, width, [vector])
        cast = _cast(width)
        where = "collection = :c" + (" AND metadata @> CAST(:f AS jsonb)" if filters else "")
        distance = f"embedding::{cast} <=> CAST(:q AS {cast})"
        query = text(f"SELECT doc_id, chunk_index, text, metadata, {distance} AS distance "
                     f"FROM vector_chunks WHERE {where} ORDER BY {distance} LIMIT :k")
        params = {"c": collection, "q": VECTOR().bind_processor(self._engine.dialect)(
            list(vector)), "k": top_k, "f": json.dumps(filters or {})}
        with self._connect() as conn:
            self._tune(conn, ef_search or max(self._ef_search, top_k), bool(filters), exact)
            rows = conn.execute(query, params).all()
        hits = [Hit(id=r.doc_id, score=1.0 - float(r.distance), text=r.text,
                    metadata=r.metadata, chunk=r.chunk_index) for r in rows]
        hits.sort(key=lambda h: -h.score)  # iterative scans may return slightly out of order
        return hits

    @staticmethod
    def _tune(conn: Connection, ef_search: int, filtered: bool, exact: bool) -> None:
        """Settings for this transaction only (``SET LOCAL``)."""
        settings = {"hnsw.ef_search": str(int(ef_search)),
                    # The partial index's predicate must be provable from the bound name.
                    "plan_cache_mode": "force_custom_plan"}
        if filtered:  # pgvector 0.8: keep scanning the index until enough rows pass
            settings["hnsw.iterative_scan"] = "relaxed_order"
        if exact:
            settings.update(enable_indexscan="off", enable_bitmapscan="off")
        for name, value in settings.items():
            conn.execute(text("SELECT set_config(:n, :v, true)"), {"n": name, "v": value})

    def close(self) -> None:
        self._engine.dispose()
