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

from schemas.admission import Priority, Ticket
from schemas.chat import Message, ResponseFormat, Tool, ToolCall, ToolChoice
from schemas.durations import parse_duration
from schemas.sections import LimitConfig

__all__ = [
    "MAX_DEADLINE_S",
    "MAX_EMBED_TEXTS",
    "MAX_REQUEST_CHARS",
    "Attempt",
    "CompletionJob",
    "CompletionResult",
    "EmbeddingJob",
    "EmbeddingResult",
    "JobStatus",
    "TraceContext",
    "Usage",
    "check_conversation",
    "new_job_id",
]

#: Upper bound on the characters of one job's messages (about 500k tokens): a
#: request past it is refused at submit, before it costs a queue slot.
MAX_REQUEST_CHARS = 2_000_000
#: Metadata rides with every ledger row: a few short values.
MAX_METADATA_KEYS = 64
MAX_METADATA_CHARS = 2000
#: The longest a job may say it can wait (``deadline``): a provider batch's 24-hour
#: window, and then some for a slow fleet.
MAX_DEADLINE_S = 7 * 24 * 3600.0
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
    #: Cancelled by an agent, before it started or in flight.
    CANCELLED = "cancelled"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: W3C trace context (www.w3.org/TR/trace-context): a trace id is 32 lowercase hex
#: digits, a ``traceparent`` version 00 names it and its parent span (16 digits).
_TRACE_ID = r"^[0-9a-f]{32}$"
_TRACEPARENT = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"


class TraceContext(_Strict):
    """Where a job's log lines and spans belong, stamped by the client that submits it:
    the trace id every process logs the job's lines with and, when the client traces
    (OpenTelemetry), the W3C ``traceparent`` of its submit span. Fixed, short fields:
    a message cannot carry anything else here."""

    trace_id: str = Field(pattern=_TRACE_ID)
    traceparent: str | None = Field(default=None, pattern=_TRACEPARENT)

    @model_validator(mode="after")
    def _consistent(self) -> TraceContext:
        if self.trace_id == "0" * 32:
            raise ValueError("trace_id: all zeros is not a trace id")
        if self.traceparent is not None and (self.traceparent[3:35] != self.trace_id
                                             or self.traceparent[36:52] == "0" * 16):
            raise ValueError("traceparent: must name the job's trace_id and a parent span")
        return self


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
    #: Which of its tier's queues the job waits in (never sent to a provider).
    priority: Priority = "normal"
    #: What admission reserved for the job, settled when it ends (set by the fleet).
    ticket: Ticket | None = None
    #: The fleet key the job came through (set by the HTTP API), and that key's own
    #: limits (``key-<id>``), enforced beside the fleet file's.
    key_id: Name | None = None
    key_limits: list[LimitConfig] = Field(default_factory=list, max_length=3)
    #: The channel of the client that waits for it: the worker publishes the outcome
    #: there (only a client's reply channel may be named).
    reply_to: str | None = Field(default=None, pattern=r"^llmfleet:reply:[0-9a-f]{32}$")
    #: The job's trace (``TraceContext``): its log lines and spans in every process
    #: share it. Set by the client at submit; never sent to a provider.
    trace: TraceContext | None = None
    #: Seconds from submission (or a duration: "24h") the caller can wait for the
    #: answer: long enough (``[batch] min_deadline_s``), the job may go through a
    #: provider's batch API at its batch price, answered by then all the same.
    deadline: float | None = Field(default=None, gt=0, le=MAX_DEADLINE_S)
    #: Run now, never deferred to a batch (set by the batcher when it sends a waiting
    #: job back to the live path).
    live: bool = False

    @field_validator("deadline", mode="before")
    @classmethod
    def _deadline_seconds(cls, value: Any) -> Any:
        """Seconds as a number, or a duration as people write it ("90m", "24h")."""
        if isinstance(value, bool):
            raise ValueError("a number of seconds or a duration like 24h")
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
            try:
                return parse_duration(value).total_seconds()
            except ValueError:
                raise ValueError(f"{value[:40]!r} is neither seconds nor a duration like "
                                 "90m, 12h or 2d") from None
        return value

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
    """A chat completion: messages plus a tier or a model; tools the model may call and
    the shape its answer must take, as OpenAI's chat format says them."""

    kind: Literal["completion"] = "completion"
    messages: list[Message] = Field(min_length=1, max_length=10_000)
    max_tokens: int | None = Field(default=None, ge=1, le=200_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: list[str] | None = Field(default=None, max_length=4)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    tools: list[Tool] | None = Field(default=None, min_length=1, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    #: May the job move to the next model of its tier's chain when one fails?
    fallback: bool = True
    #: Write the answer as it comes, chunk by chunk, to the job's stream
    #: (``client.stream``); the job's result is the same either way.
    stream: bool = False
    #: The response cache. None: use it within the fleet's temperature bound
    #: (``[cache].max_temperature``); "use": read and write it whatever the temperature;
    #: "refresh": do not read it, store the new answer; "skip": neither read nor write.
    cache: Literal["use", "skip", "refresh"] | None = None

    @model_validator(mode="after")
    def _check_shape(self) -> CompletionJob:
        if not any(m.role not in ("system", "developer") for m in self.messages):
            raise ValueError("messages: at least one user or assistant message is needed")
        size = sum(len(m.text) for m in self.messages)
        if size > MAX_REQUEST_CHARS:
            raise ValueError(f"messages: {size} characters, over the limit of {MAX_REQUEST_CHARS}")
        for i, message in enumerate(self.messages):
            if unencodable(message.text) or any(
                    unencodable(c.function.arguments) for c in message.tool_calls or ()):
                raise ValueError(f"messages.{i}.content: holds a lone surrogate, which no "
                                 "UTF-8 request can carry")
        if any(unencodable(s) for s in self.stop or ()):
            raise ValueError("stop: holds a lone surrogate, which no UTF-8 request can carry")
        check_conversation(self.messages)
        self._check_tools()
        return self

    def _check_tools(self) -> None:
        names = [t.function.name for t in self.tools or ()]
        if len(set(names)) != len(names):
            raise ValueError("tools: two tools share a name")
        if not names and self.tool_choice is not None:
            raise ValueError("tool_choice: needs tools")
        if not names and self.parallel_tool_calls is not None:
            raise ValueError("parallel_tool_calls: needs tools")
        choice = self.tool_choice
        if choice is not None and not isinstance(choice, str) and choice.function.name not in names:
            raise ValueError(f"tool_choice: no tool is named {choice.function.name!r}")
        if self.response_format is not None and self.response_format.type == "json_object" \
                and not any("json" in m.text.lower() for m in self.messages):
            # OpenAI refuses it so (the model might write JSON forever otherwise).
            raise ValueError("response_format: json_object needs a message that asks for JSON "
                             "(says \"JSON\")")

    def sampling(self) -> dict[str, Any]:
        """The sampling options that were set, as sent to a provider."""
        names = ("temperature", "top_p", "stop", "presence_penalty", "frequency_penalty", "seed")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def options(self) -> dict[str, Any]:
        """Tools, tool choice and response format, as OpenAI's wire format says them."""
        out: dict[str, Any] = {}
        if self.tools:
            out["tools"] = [t.model_dump(mode="json", exclude_none=True) for t in self.tools]
        if self.tool_choice is not None:
            out["tool_choice"] = (self.tool_choice if isinstance(self.tool_choice, str)
                                  else self.tool_choice.model_dump(mode="json"))
        if self.parallel_tool_calls is not None:
            out["parallel_tool_calls"] = self.parallel_tool_calls
        if self.response_format is not None:
            out["response_format"] = self.response_format.wire()
        return out


def check_conversation(messages: list[Message]) -> None:
    """Tool messages answer the calls of the assistant message just before them, each
    once and all of them, before the conversation goes on (OpenAI refuses anything
    else, and Anthropic's tool_result blocks must follow their tool_use at once)."""
    pending: dict[str, int] = {}  # call id -> the assistant message that made it
    answered: set[str] = set()
    for i, message in enumerate(messages):
        if message.role == "tool":
            call = message.tool_call_id or ""
            if call not in pending:
                raise ValueError(f"messages.{i}.tool_call_id: {call!r} answers no call of the "
                                 "assistant message before it")
            if call in answered:
                raise ValueError(f"messages.{i}.tool_call_id: call {call!r} is answered twice")
            answered.add(call)
            continue
        _all_answered(pending, answered)
        pending = {c.id: i for c in message.tool_calls or ()}
        answered = set()
    _all_answered(pending, answered)


def _all_answered(pending: dict[str, int], answered: set[str]) -> None:
    missing = [call for call in pending if call not in answered]
    if missing:
        raise ValueError(f"messages.{pending[missing[0]]}.tool_calls: call {missing[0]!r} is "
                         "not answered by a tool message")


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
    """The answer to a CompletionJob: text, or the tool calls the model asks for;
    ``parsed`` holds the answer's JSON when the job asked for a JSON response format.
    ``finish_reason`` in OpenAI's words: stop, length, tool_calls, content_filter."""

    kind: Literal["completion"] = "completion"
    content: str
    finish_reason: str | None = None
    tool_calls: list[ToolCall] | None = None
    parsed: Any = None

    def message(self) -> dict[str, Any]:
        """This answer as the assistant message a conversation goes on with."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content or None}
        if self.tool_calls:
            message["tool_calls"] = [c.model_dump(mode="json") for c in self.tool_calls]
        elif message["content"] is None:
            message["content"] = ""
        return message


class EmbeddingResult(_ResultBase):
    """The vectors of an EmbeddingJob, in the order of its texts."""

    kind: Literal["embedding"] = "embedding"
    vectors: list[list[float]]
    dimensions: int
