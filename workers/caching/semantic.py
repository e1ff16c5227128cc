"""The semantic cache: a miss of the exact cache served by a cached answer to a question
that means the same, for the tiers that opt in (``[cache].semantic_tiers``).

Only the last user message is compared by meaning; everything else must be equal (the
model, max_tokens, sampling options and the conversation before it form the *scope*,
hashed like an exact key), so a different system prompt never matches. Each scope is a
Redis hash of exact cache key -> embedding (float32, ``DIMENSIONS`` wide), compared by
brute force: entries with another guard (below) are skipped by a byte compare, the rest
ranked by one numpy float32 matrix product (``bench/cache.py`` times it by scope size).
A match returns the exact entry it points to, so TTL and LRU eviction govern both caches
at once.

Embeddings blur exactly the details that change an answer: another number, a negation.
So a match also needs the same numbers, in order, and as many negations (a lexical
guard); the threshold stays high. The question is embedded by a fleet job of its own
(the pipeline's embedding path: budget, retries, breaker, its ledger row); when that job
fails, the semantic lookup is skipped, never the job that asked.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import hashlib
import logging
import math
import operator
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas import (
    EMBEDDINGS_TIER,
    CompletionJob,
    ConfigError,
    EmbeddingJob,
    EmbeddingResult,
    FleetConfig,
    FleetError,
)
from schemas.cache_key import KEY_VERSION, CachedAnswer, canonical_hash
from schemas.keys import CACHE_SEMANTIC
from tasks._redis import as_text
from workers.caching.float32 import from_float32, to_float32
from workers.caching.response import ResponseCache
from workers.pipeline.steps import JobContext

#: How the semantic cache embeds a question: the pipeline's own embedding path.
Embedder = Callable[[EmbeddingJob], Awaitable[EmbeddingResult]]

__all__ = ["DIMENSIONS", "Embedder", "SemanticCache", "closest", "cosine", "guard_of", "pack",
           "unpack"]

log = logging.getLogger(__name__)

#: Width of stored vectors (``dimensions`` sent with the embedding request).
DIMENSIONS = 256
#: The longest a job waits for its embedding before skipping the semantic lookup.
EMBED_TIMEOUT_S = 5.0
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(r"[a-z']+")
#: A capitalised word of two letters or more that follows a word or a comma, not a
#: sentence's end: a name, most of the time.
_NAME = re.compile(r"(?<=[\w,;)'\"] )([A-Z][\w'-]+)")
_NEGATIONS = frozenset({"not", "no", "never", "none", "nothing", "neither", "nor",
                        "without", "cannot"})


def guard_of(text: str) -> str:
    """What must match exactly besides the meaning: the numbers in order, the count of
    negations (``isn't`` counts as one), and the names: capitalised words not opening
    a sentence (so a lower-cased repeat of a question with a name does not match)."""
    words = _WORD.findall(text.lower())
    negations = sum(w in _NEGATIONS or w.endswith("n't") for w in words)
    names = sorted({m.group(1).lower() for m in _NAME.finditer(" ".join(text.split()))})
    return " ".join(_NUMBER.findall(text)) + f"|{negations}|" + " ".join(names)


def pack(guard: str, vector: list[float]) -> bytes:
    """A stored entry: the guard, a newline, the unit vector as little-endian float32."""
    norm = math.sqrt(math.fsum(x * x for x in vector)) or 1.0
    return guard.encode() + b"\n" + to_float32(x / norm for x in vector)


def unpack(raw: bytes) -> tuple[str, array.array[float]]:
    guard, _, data = raw.partition(b"\n")
    return guard.decode(), from_float32(data)


def cosine(a: array.array[float], b: array.array[float]) -> float:
    """The cosine of two unit vectors (their dot product). ``sum``, not ``fsum``: float32
    inputs gain nothing from exact rounding, and it is 1.5x faster."""
    return sum(map(operator.mul, a, b)) if len(a) == len(b) else -1.0


def closest(query: array.array[float], guard: str, stored: Mapping[Any, Any],
            threshold: float) -> Any | None:
    """The key of the stored vector closest to ``query`` among those with the same
    guard, if its cosine reaches ``threshold``. The guard is compared first (a byte
    prefix), then one float32 matrix product ranks what is left."""
    prefix = guard.encode() + b"\n"
    width = len(query) * 4
    keys: list[Any] = []
    blobs: list[bytes] = []
    for key, raw in stored.items():
        # bytes only: a client that decodes responses cannot carry vectors
        if isinstance(raw, bytes) and raw.startswith(prefix) and len(raw) - len(prefix) == width:
            keys.append(key)
            blobs.append(raw[len(prefix):])
    if not keys:
        return None
    matrix = numpy.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(keys), len(query))
    similarities = matrix @ numpy.asarray(query, dtype=numpy.float32)
    best = int(numpy.argmax(similarities))
    return keys[best] if similarities[best] >= threshold else None


def _embedding_job(job: CompletionJob, text: str, model: str) -> EmbeddingJob:
    """The question's embedding as a fleet job of the asking agent and user: budgets,
    retries, breaker and a ledger row of its own, like any other. Its id derives from
    the job's, so a redelivered job reuses (and pays for) the same embedding once."""
    job_id = hashlib.sha256(f"{job.job_id}:semantic-cache".encode()).hexdigest()[:32]
    return EmbeddingJob(job_id=job_id, texts=[text], model=model, dimensions=DIMENSIONS,
                        agent=job.agent, user=job.user,
                        metadata={"purpose": "semantic_cache", "for_job": job.job_id})


def _last_user_text(job: CompletionJob) -> str | None:
    """The question to compare by meaning; None for a job that is not one plain question
    (tools, a response format or images change what an answer must be)."""
    last = job.messages[-1]
    if job.tools or job.response_format or any(m.images for m in job.messages):
        return None
    return last.text if last.role == "user" and last.text.strip() else None


class SemanticCache:
    """Finds a cached answer by the meaning of the last user message."""

    def __init__(self, redis: aioredis.Redis, fleet: FleetConfig, embed: Embedder,
                 cache: ResponseCache, *, ttl_s: float, max_size: int) -> None:
        config = fleet.cache
        for tier in config.semantic_tiers:
            if tier not in fleet.chat_tiers:
                raise ConfigError(f"cache.semantic_tiers: {tier!r} is not a chat tier",
                                  key="cache.semantic_tiers")
        embedders = fleet.tiers.get(EMBEDDINGS_TIER)
        model = config.semantic_model or (embedders.models[0] if embedders else None)
        if model is None or model not in fleet.models:
            raise ConfigError("cache.semantic_model: name an embeddings model of the fleet "
                              "file, or define an embeddings tier", key="cache.semantic_model")
        self._redis, self._cache = redis, cache
        self._tiers = frozenset(config.semantic_tiers)
        self._threshold = config.semantic_threshold
        self._model, self._embed = model, embed
        self._ttl_ms, self._max_size = max(1, round(ttl_s * 1000)), max_size

    def _scope(self, ctx: JobContext) -> str:
        job = ctx.job
        assert isinstance(job, CompletionJob)
        return CACHE_SEMANTIC.format(scope=canonical_hash({
            "v": KEY_VERSION, "model": ctx.primary_model, "max_tokens": ctx.max_tokens,
            "sampling": job.sampling(),
            "before": [m.model_dump(mode="json", exclude_none=True) for m in job.messages[:-1]],
        }))

    async def query(self, ctx: JobContext) -> bytes | None:
        """The job's packed query (guard and vector) that ``find`` and ``add`` take;
        None when the job is not of an opted-in tier or the embedding failed."""
        assert isinstance(ctx.job, CompletionJob)
        text = _last_user_text(ctx.job)
        packed = None
        if ctx.tier in self._tiers and text is not None:
            job = _embedding_job(ctx.job, text, self._model)
            try:
                result = await asyncio.wait_for(self._embed(job), EMBED_TIMEOUT_S)
                packed = pack(guard_of(text), result.vectors[0])
            except (FleetError, TimeoutError, IndexError) as exc:
                log.info("semantic lookup skipped: embedding failed (%s)", type(exc).__name__)
        return packed

    async def find(self, ctx: JobContext, packed: bytes | None) -> CachedAnswer | None:
        """The cached answer of the closest question in scope to the job's ``query``, if
        close enough."""
        if packed is None:
            return None
        guard, query = unpack(packed)
        scope = self._scope(ctx)
        try:
            stored = await self._redis.hgetall(scope)
        except RedisError:
            return None
        best_key = closest(query, guard, stored, self._threshold)
        if best_key is None:
            return None
        key_text = as_text(best_key)
        answer = await self._cache.get(key_text)
        if answer is None:  # its entry expired or was evicted: forget the vector too
            await self._forget(scope, key_text)
        return answer

    async def add(self, ctx: JobContext, key: str, packed: bytes | None) -> None:
        """Index the answer just stored under ``key`` by its question's meaning (the
        job's ``query``)."""
        if packed is None:
            return
        scope = self._scope(ctx)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hset(scope, key, packed)
                pipe.pexpire(scope, self._ttl_ms)
                pipe.hlen(scope)
                *_, size = await pipe.execute()
            if size > self._max_size:
                extra = await self._redis.hrandfield(scope, size - self._max_size)
                if extra:
                    await self._redis.hdel(scope, *extra)
        except RedisError as exc:
            log.warning("semantic index not updated (%s)", type(exc).__name__)

    async def _forget(self, scope: str, key: str) -> None:
        with contextlib.suppress(RedisError):
            await self._redis.hdel(scope, key)
