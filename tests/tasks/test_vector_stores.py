"""The vector stores: one contract suite over the memory store and Postgres + pgvector,
then what only Postgres has (the HNSW index's recall, its plan, a missing extension)."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import text

from schemas import PgvectorMissingError, VectorDimensionError, VectorStoreError
from tasks.vectors import Document, MemoryVectorStore, PgVectorStore, VectorStore


@pytest.fixture(params=["memory", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[VectorStore]:
    if request.param == "memory":
        yield MemoryVectorStore()
        return
    database_url = request.getfixturevalue("database_url")
    with PgVectorStore(database_url) as pg:
        yield pg


@pytest.fixture()
def collection(store: VectorStore) -> Iterator[str]:
    name = "t-" + uuid.uuid4().hex[:12]
    yield name
    store.drop_collection(name)


def doc(doc_id: str, *vectors: list[float], **metadata: object) -> Document:
    return Document(id=doc_id, chunks=[f"{doc_id} part {i}" for i in range(len(vectors))],
                    embeddings=list(vectors), metadata=metadata)


# -- the contract ------------------------------------------------------------


def test_search_ranks_by_cosine_with_scores(store: VectorStore, collection: str) -> None:
    # Given three documents pointing three ways
    store.upsert(collection, [doc("x", [1, 0, 0]), doc("y", [0, 1, 0]), doc("xy", [1, 1, 0])])
    # When searching near x
    hits = store.search(collection, [0.9, 0.1, 0], top_k=2)
    # Then x comes first, then xy, scores are cosine similarities
    assert [h.id for h in hits] == ["x", "xy"]
    assert hits[0].score == pytest.approx(0.9 / (0.82 ** 0.5), abs=1e-5)
    assert hits[0].text == "x part 0" and hits[0].chunk == 0
    assert store.dimensions(collection) == 3 and store.count(collection) == 3


def test_upsert_replaces_every_chunk_of_a_document(store: VectorStore, collection: str) -> None:
    # Given a document of three chunks
    store.upsert(collection, [doc("a", [1, 0], [0, 1], [1, 1], v=1), doc("b", [1, 0])])
    assert store.count(collection) == 4
    # When it is upserted again with one chunk
    store.upsert(collection, [doc("a", [0, 1], v=2)])
    # Then only the new chunk remains, with the new metadata
    assert store.count(collection) == 2
    hits = store.search(collection, [0, 1], top_k=5)
    assert (hits[0].id, hits[0].chunk, dict(hits[0].metadata)) == ("a", 0, {"v": 2})


def test_delete_removes_documents(store: VectorStore, collection: str) -> None:
    # Given two documents
    store.upsert(collection, [doc("a", [1, 0], [0, 1]), doc("b", [1, 1])])
    # When one is deleted (and an unknown id with it)
    removed = store.delete(collection, ["a", "nope"])
    # Then its chunks are gone and the other stays
    assert removed == 2
    assert [h.id for h in store.search(collection, [1, 0], top_k=5)] == ["b"]


def test_metadata_filters_use_containment(store: VectorStore, collection: str) -> None:
    # Given documents with nested metadata
    store.upsert(collection, [
        doc("py", [1, 0], lang="python", tags=["a", "b"], meta={"level": 1}),
        doc("go", [1, 0.1], lang="go", tags=["b"]),
        doc("py2", [0, 1], lang="python", tags=["c"], meta={"level": 2}),
    ])
    # When filtering, Then only documents containing the filter come back
    def ids(**filters: object) -> list[str]:
        return [h.id for h in store.search(collection, [1, 0], top_k=5, filters=filters)]

    assert ids(lang="python") == ["py", "py2"]
    assert ids(tags=["b"]) == ["py", "go"]
    assert ids(meta={"level": 2}) == ["py2"]
    assert ids(lang="rust") == []


def test_a_width_other_than_the_collections_is_a_typed_error(
        store: VectorStore, collection: str) -> None:
    # Given a collection of 3-dimensional vectors
    store.create_collection(collection, 3)
    store.create_collection(collection, 3)  # idempotent
    # When a 4-dimensional vector is upserted or searched, Then VectorDimensionError
    with pytest.raises(VectorDimensionError) as info:
        store.upsert(collection, [doc("a", [1, 0, 0, 0])])
    assert (info.value.expected, info.value.got, info.value.collection) == (3, 4, collection)
    assert "3 dimensions, not 4" in info.value.message
    with pytest.raises(VectorDimensionError):
        store.search(collection, [1, 0])
    with pytest.raises(VectorDimensionError):
        store.create_collection(collection, 5)
    assert isinstance(info.value, VectorStoreError)


def test_an_unknown_collection_finds_nothing(store: VectorStore) -> None:
    assert store.search("never-made", [1.0, 0.0]) == []
    assert store.count("never-made") == 0 and store.dimensions("never-made") is None


# -- Postgres only -----------------------------------------------------------


def clustered(n: int, dims: int, clusters: int, seed: int) -> list[list[float]]:
    """Points around random centres: closer to real text embeddings than uniform noise."""
    rng = random.Random(seed)
    centres = [[rng.gauss(0, 1) for _ in range(dims)] for _ in range(clusters)]
    return [[c + rng.gauss(0, 0.5) for c in centres[rng.randrange(clusters)]]
            for _ in range(n)]


def test_hnsw_recall_at_10_against_exact_search(database_url: str) -> None:
    # Given 10,000 clustered vectors of 64 dimensions in an HNSW-indexed collection
    n, dims, queries = 10_000, 64, 50
    vectors = clustered(n + queries, dims, clusters=50, seed=7)
    name = "recall-" + uuid.uuid4().hex[:8]
    with PgVectorStore(database_url) as store:
        started = time.monotonic()
        store.upsert(name, [Document(id=str(i), chunks=[""], embeddings=[v])
                            for i, v in enumerate(vectors[:n])])
        assert time.monotonic() - started < 60
        try:
            # When the same queries run through the index and exactly
            found = exact = 0
            for q in vectors[n:]:
                approx = {h.id for h in store.search(name, q, top_k=10, ef_search=100)}
                truth = {h.id for h in store.search(name, q, top_k=10, exact=True)}
                found, exact = found + len(approx & truth), exact + len(truth)
            # Then the index finds at least 95% of the true ten nearest
            assert found / exact >= 0.95, found / exact
        finally:
            store.drop_collection(name)


def test_searches_use_the_collections_partial_hnsw_index(database_url: str) -> None:
    # Given a collection with some rows
    name = "plan-" + uuid.uuid4().hex[:8]
    with PgVectorStore(database_url) as store:
        store.upsert(name, [doc(str(i), [random.random() for _ in range(8)])
                            for i in range(200)])
        try:
            # When the planner is asked how it runs the store's query shape
            with store._engine.begin() as conn:
                conn.execute(text("SET LOCAL enable_seqscan = off"))
                conn.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
                plan = "\n".join(r[0] for r in conn.execute(text(
                    "EXPLAIN SELECT doc_id FROM vector_chunks WHERE collection = :c "
                    "ORDER BY embedding::vector(8) <=> CAST(:q AS vector(8)) LIMIT 5"),
                    {"c": name, "q": "[1,0,0,0,0,0,0,0]"}))
            # Then it walks the collection's HNSW index
            assert "ix_vector_chunks_hnsw_" in plan, plan
        finally:
            store.drop_collection(name)


@pytest.fixture()
def database_without_pgvector(database_url: str) -> Iterator[str]:
    """A fresh database owned by a role that is no superuser: it may migrate the
    fleet's tables but not create pgvector (an untrusted extension)."""
    suffix = uuid.uuid4().hex[:8]
    db, role = f"nopgv_{suffix}", f"nopgv_{suffix}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(db), sql.Identifier(role)))
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    url = f"postgresql://{role}@{info.get('host', '127.0.0.1')}:{info.get('port', 5432)}/{db}"
    try:
        yield url
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(db)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_without_pgvector_the_fleet_migrates_and_only_the_store_refuses(
        database_without_pgvector: str) -> None:
    from workers.store.engines import migrate, sync_engine

    # Given a database where pgvector cannot be created
    url = database_without_pgvector
    try:
        # When the fleet migrates it, Then that works
        assert migrate(url)[1] is not None
    finally:
        sync_engine(url).dispose()
    # And when the vector store is used, Then it says pgvector is missing and how to add it
    with PgVectorStore(url) as store, pytest.raises(PgvectorMissingError) as info:
        store.upsert("docs", [doc("a", [1.0, 0.0])])
    message = info.value.message
    assert "pgvector" in message and "CREATE EXTENSION vector" in message
    assert "superuser" in message
