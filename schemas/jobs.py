"""Job requests and results: the shapes that cross the queue as JSON.

Validated twice: where a job is submitted (the agent hears of a bad field at once) and
again in the worker (a message that skipped the client never reaches a provider).
Tier and model names are checked against the fleet file by ``FleetConfig.route``;
here only the shape is checked.
"""

from __future__ import annotations

import enum
import re
import time
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "MAX_EMBED_TEXTS",
    "MAX_REQUEST_CHARS",
    "Attempt",
    "CompletionJob",
    "CompletionResult",
    "EmbeddingJob",
    "EmbeddingResult",
    "JobStatus",
    "Message",
    "TextPart",
    "Usage",
    "new_job_id",
]

#: Upper bound on the characters of one job's messages (about 500k tokens): a
#: request past it is refused at submit, before it costs a queue slot.
MAX_REQUEST_CHARS = 2_000_000
#: Metadata rides with every ledger row: a few short values.
MAX_METADATA_KEYS = 64
MAX_METADATA_CHARS = 2000
#: Upper bound on the texts of one embedding job; the worker splits it further
#: into provider-sized batches.
MAX_EMBED_TEXTS = 10_000

#: A lone surrogate: a Python string may hold one, but no UTF-8 body (to a provider, a
#: broker or Postgres) can carry it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def unencodable(text: str) -> bool:
    """Does ``text`` hold what no UTF-8 body can carry (a lone surrogate)?"""
    return _SURROGATE.search(text) is not None


Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:/@+-]+$")]


def new_job_id() -> str:
    """A fresh job id: 32 hex characters."""
    return uuid.uuid4().hex


class JobStatus(enum.StrEnum):
    """Where a job is in its life."""

    #: Accepted by the client and sent to the queue.
    QUEUED = "queued"
    #: Answered by a provider (or the cache).
    SUCCEEDED = "succeeded"
    #: Every attempt failed.
    FAILED = "failed"
    #: Refused before any provider call (validation, budget).
    REJECTED = "rejected"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TextPart(_Strict):
    """One text block of a message's content (the OpenAI and Anthropic block shape)."""

    type: Literal["text"] = "text"
    text: str


class Message(_Strict):
    """One chat message."""

    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    @property
    def text(self) -> str:
        """The content as one string, blocks joined."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class _JobBase(_Strict):
    job_id: str = Field(default_factory=new_job_id, min_length=8, max_length=64)
    tier: Name | None = None
    model: Name | None = None
    agent: Name = "anonymous"
    user: Name | None = None
    metadata: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    #: Seconds the caller will wait; the worker drops a job whose caller is gone.
    timeout: float | None = Field(default=None, gt=0, le=3600)
    #: Epoch seconds when the job was submitted; latency counts from here. Bounded, so
    #: that no client clock (or hostile message) makes a date Postgres cannot store.
    submitted_at: float = Field(default_factory=time.time, ge=946_684_800, le=4_102_444_800)

    @field_validator("metadata")
    @classmethod
    def _storable_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Metadata lands in the ledger: small, and nothing Postgres refuses (NUL, a lone
        surrogate)."""
        if len(value) > MAX_METADATA_KEYS:
            raise ValueError(f"at most {MAX_METADATA_KEYS} metadata keys")
        for key, item in value.items():
            if not 0 < len(key) <= 100 or "\x00" in key or unencodable(key):
                raise ValueError(f"key {key[:40]!r}: 1 to 100 characters, no NUL or lone "
                                 "surrogate")
            if isinstance(item, str) and (len(item) > MAX_METADATA_CHARS or "\x00" in item
                                          or unencodable(item)):
                raise ValueError(f"{key}: at most {MAX_METADATA_CHARS} characters, no NUL or "
                                 "lone surrogate")
        return value


class CompletionJob(_JobBase):
    """A chat completion: messages plus a tier or a model."""

    kind: Literal["completion"] = "completion"
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=200_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: list[str] | None = Field(default=None, max_length=4)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    #: May the job move to the next model of its tier's chain when one fails?
    fallback: bool = True
    #: The response cache. None: use it within the fleet's temperature bound
    #: (``[cache].max_temperature``); "use": read and write it whatever the temperature;
    #: "refresh": do not read it, store the new answer; "skip": neither read nor write.
    cache: Literal["use", "skip", "refresh"] | None = None

    @model_validator(mode="after")
    def _check_shape(self) -> CompletionJob:
        if not any(m.role != "system" for m in self.messages):
            raise ValueError("messages: at least one user or assistant message is needed")
        size = sum(len(m.text) for m in self.messages)
        if size > MAX_REQUEST_CHARS:
            raise ValueError(f"messages: {size} characters, over the limit of {MAX_REQUEST_CHARS}")
        for i, message in enumerate(self.messages):
            if unencodable(message.text):
                raise ValueError(f"messages.{i}.content: holds a lone surrogate, which no "
                                 "UTF-8 request can carry")
        if any(unencodable(s) for s in self.stop or ()):
            raise ValueError("stop: holds a lone surrogate, which no UTF-8 request can carry")
        return self

    def sampling(self) -> dict[str, Any]:
        """The sampling options that were set, as sent to a provider."""
        names = ("temperature", "top_p", "stop", "presence_penalty", "frequency_penalty", "seed")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


class EmbeddingJob(_JobBase):
    """Texts to embed, in order."""

    kind: Literal["embedding"] = "embedding"
    texts: list[str] = Field(min_length=1, max_length=MAX_EMBED_TEXTS)
    dimensions: int | None = Field(default=None, ge=1, le=8192)

    @field_validator("texts")
    @classmethod
    def _check_texts(cls, value: list[str]) -> list[str]:
        if any(not t for t in value):
            raise ValueError("texts: an empty string cannot be embedded")
        if sum(len(t) for t in value) > MAX_REQUEST_CHARS:
            raise ValueError(f"texts: over the limit of {MAX_REQUEST_CHARS} characters")
        if any(unencodable(t) for t in value):
            raise ValueError("texts: a lone surrogate, which no UTF-8 request can carry")
        return value


class Usage(_Strict):
    """Tokens of one job; ``estimated`` when the provider gave none and we counted."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Attempt(_Strict):
    """One provider call made for a job."""

    model: str
    provider: str
    ok: bool
    latency_ms: float
    status_code: int | None = None
    error: str | None = None


#: Job metadata keys a result carries as its own fields.
_LABELS = ("experiment", "variant", "template", "template_version")


class _ResultBase(_Strict):
    job_id: str
    model: str
    provider: str
    tier: str | None
    requested_model: str | None = None
    agent: str = "anonymous"
    user: str | None = None
    usage: Usage
    cost_usd: float
    latency_ms: float
    cache_hit: bool = False
    fallback_used: bool = False
    attempt_log: list[Attempt] = Field(default_factory=list)
    #: The experiment and variant that chose this job's prompt, model or tier.
    experiment: str | None = None
    variant: str | None = None
    #: The stored template the prompt was rendered from, and its version.
    template: str | None = None
    template_version: int | None = None

    @property
    def attempts(self) -> int:
        """How many provider calls the job took (0 for a cache hit)."""
        return len(self.attempt_log)

    def labelled(self, metadata: Mapping[str, Any]) -> Self:
        """This result with the experiment and template labels the client put in its
        job's metadata (whoever built the result, pipeline or cache)."""
        labels = {key: metadata[key] for key in _LABELS if metadata.get(key) is not None}
        return self.model_copy(update=labels) if labels else self


class CompletionResult(_ResultBase):
    """The answer to a CompletionJob."""

    kind: Literal["completion"] = "completion"
    content: str
    finish_reason: str | None = None


class EmbeddingResult(_ResultBase):
    """The vectors of an EmbeddingJob, in the order of its texts."""

    kind: Literal["embedding"] = "embedding"
    vectors: list[list[float]]
    dimensions: int
