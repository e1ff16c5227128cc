"""Retries attach, they do not multiply.

An HTTP client that retries a request whose job is still running must not start a second
job (a second provider call, a second charge). Two ways a request says it is a repeat:

- ``Idempotency-Key: <k>``: the request runs as the job whose id derives from the caller's
  fleet key and ``k``; the first request with that key starts it, every later one with the
  same body attaches to it (same job id, same answer, one charge) for 24 hours, and one
  with another body is refused. The id is derived, not stored, so two processes that see
  the same key at once agree on it; ``SET NX`` on the key's record decides which starts it.
- The official SDKs' automatic retries (``x-stainless-retry-count`` > 0), which carry no
  key of their own: the first attempt records its job under the caller and the body's
  hash for the job's lifetime, and a retry of the same body attaches to that job.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from schemas import CompletionResult, EmbeddingResult, encode_result, new_job_id
from schemas.keys import IDEMPOTENCY, REQUEST_ATTEMPT
from tasks._redis import as_text
from workers.api.errors import ApiError

__all__ = ["IDEMPOTENCY_TTL_S", "Attempt", "begin", "forget", "publish_answer"]

#: How long an Idempotency-Key keeps its job: as long as the job's result is kept.
IDEMPOTENCY_TTL_S = 24 * 3600
_META = "celery-task-meta-{}"
_MAX_KEY_CHARS = 255


@dataclass(frozen=True, slots=True)
class Attempt:
    """How a request runs: as job ``job_id`` (None: a fresh one), and whether an earlier
    request already started that job (then this one only waits for it)."""

    job_id: str | None
    attached: bool
    #: The record to drop if the job never reaches the queue (so a retry can start it).
    record: str | None = None


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def body_hash(body: Any) -> str:
    return _digest(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str))


def begin(redis: Redis, key_id: str, body: Any, idempotency_key: str | None,
          retry_count: int | None, lifetime_s: float) -> Attempt:
    """Decide how a request runs (see the module's docstring). Redis trouble makes it a
    plain request: at worst a retry runs twice, as it would without this."""
    fingerprint = body_hash(body)
    try:
        if idempotency_key is not None:
            return _by_key(redis, key_id, idempotency_key, fingerprint)
        if retry_count is None:
            return Attempt(None, attached=False)  # not an SDK: no retry to attach
        record = REQUEST_ATTEMPT.format(key_id=key_id, body=fingerprint)
        if retry_count > 0:
            earlier = redis.get(record)
            if earlier is not None:
                return Attempt(as_text(earlier), attached=True)
        job_id = new_job_id()  # two identical first attempts are two requests
        redis.set(record, job_id, ex=max(1, int(lifetime_s)))
        return Attempt(job_id, attached=False, record=record)
    except RedisError:
        return Attempt(None, attached=False)


def _by_key(redis: Redis, key_id: str, key: str, fingerprint: str) -> Attempt:
    if not 0 < len(key) <= _MAX_KEY_CHARS or not key.isprintable():
        raise ApiError(400, f"Idempotency-Key: 1 to {_MAX_KEY_CHARS} printable characters",
                       param="Idempotency-Key", code="invalid_idempotency_key",
                       headers={"x-should-retry": "false"})
    job_id = _digest(key_id, key)[:32]
    record = IDEMPOTENCY.format(key_id=key_id, key=_digest(key))
    if redis.set(record, fingerprint, nx=True, ex=IDEMPOTENCY_TTL_S):
        return Attempt(job_id, attached=False, record=record)
    first = redis.get(record)
    if first is not None and as_text(first) != fingerprint:
        raise ApiError(400, "this Idempotency-Key was used with another request body: a key "
                       "stands for one request", param="Idempotency-Key",
                       code="idempotency_key_reused", headers={"x-should-retry": "false"})
    return Attempt(job_id, attached=True)


def forget(redis: Redis, attempt: Attempt) -> None:
    """The job never reached the queue: let a retry start it."""
    if attempt.record is not None:
        with contextlib.suppress(RedisError):
            redis.delete(attempt.record)


def publish_answer(redis: Redis, result: CompletionResult | EmbeddingResult) -> None:
    """Leave the answer where an attached request waits for it, unless a worker has (a
    cache hit at submit never reaches one): the result backend's key and channel."""
    meta = json.dumps({"status": "SUCCESS", "result": encode_result(result),
                       "task_id": result.job_id, "traceback": None, "children": []})
    key = _META.format(result.job_id)
    with contextlib.suppress(RedisError):
        if redis.set(key, meta, nx=True, ex=IDEMPOTENCY_TTL_S):
            redis.publish(key, meta)
