"""The OpenAI wire format, as far as the fleet serves it: request and response models.

Requests forbid unknown fields, so a parameter the fleet does not support is refused
with a 400 naming it rather than silently dropped (an agent that sets ``logprobs`` must
not believe it will get them). Messages, tools, tool choice and response formats are the
fleet's own shapes (``schemas.chat``), which are OpenAI's. The served OpenAPI schema
comes from these classes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas import MAX_EMBED_TEXTS, Message, ResponseFormat, Tool, ToolCall, ToolChoice

__all__ = ["ChatChoice", "ChatCompletionRequest", "ChatCompletionResponse", "CompletionUsage",
           "EmbeddingData", "EmbeddingRequest", "EmbeddingResponse", "EmbeddingUsage",
           "ModelCard", "ModelList", "ResponseMessage"]

_NAME = Field(min_length=1, max_length=200)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Request):
    include_usage: bool | None = None


class ChatCompletionRequest(_Request):
    """``POST /v1/chat/completions``. ``model``: a tier (``simple`` or ``tier/simple``)
    or a model of the fleet file."""

    model: str = _NAME
    #: OpenAI's chat messages, whole: roles system, developer, user, assistant, tool;
    #: content parts (text, image_url); assistant tool_calls; tool_call_id.
    messages: list[Message] = Field(min_length=1)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=200_000)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=200_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = Field(default=None)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    user: str | None = Field(default=None, max_length=200)
    #: Only one choice per request.
    n: int | None = Field(default=None, description="Only 1 is supported.")
    #: The answer as server-sent events in OpenAI's chunk format.
    stream: bool | None = None
    stream_options: StreamOptions | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only n=1 is supported by the fleet")
        return value

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: str | None
    logprobs: None = None


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage
    system_fingerprint: str | None = None


class EmbeddingRequest(_Request):
    """``POST /v1/embeddings``: text (token arrays are not supported)."""

    model: str = _NAME
    input: str | list[str]
    #: The OpenAI SDK asks for base64 unless told otherwise; both are served.
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1, le=8192)
    user: str | None = Field(default=None, max_length=200)

    @field_validator("input")
    @classmethod
    def _texts(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise ValueError("at least one text is needed")
        if len(texts) > MAX_EMBED_TEXTS:
            raise ValueError(f"at most {MAX_EMBED_TEXTS} texts")
        if any(not t for t in texts):
            raise ValueError("an empty string cannot be embedded")
        return value


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    #: Floats, or base64 of little-endian float32 when ``encoding_format`` is base64.
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class ModelCard(BaseModel):
    """A tier (``owned_by`` "llmfleet-tier", its chain in ``models``) or a model
    (``owned_by`` its provider)."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str
    models: list[str] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
