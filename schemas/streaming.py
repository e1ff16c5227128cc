"""A streamed job's answer as it is written: chunks in order, each with its position, the
last one carrying the finish reason and the job's whole outcome (the same result, or
error, a job that was not streamed returns). Workers append chunks to one Redis Stream
per job; readers (the client's iterators, the HTTP API's server-sent events) read them
from any position, so one that arrives late or comes back loses nothing.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["StreamChunk", "ToolCallChunk", "split_answer"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ToolCallChunk(_Strict):
    """A piece of the ``index``-th tool call: id and name first, then fragments of its
    arguments' JSON (OpenAI's delta shape)."""

    index: int = Field(ge=0)
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class StreamChunk(_Strict):
    """One chunk: text, tool-call pieces, or (the last) the finish and the outcome."""

    #: Position in the job's stream, from 0; resuming readers say the last they had.
    i: int = Field(ge=0)
    content: str = ""
    tool_calls: list[ToolCallChunk] | None = None
    finish_reason: str | None = None
    #: On the last chunk only: the job's envelope, ``{"ok": true, "result": ...}`` or
    #: ``{"ok": false, "error": ...}`` (``schemas.outcome``).
    outcome: dict[str, Any] | None = None

    @property
    def last(self) -> bool:
        return self.outcome is not None


def split_answer(content: str, pieces: int = 8) -> list[str]:
    """A whole answer as a few deltas (a cached answer replayed as a stream), split on
    word boundaries, none empty."""
    words = content.split(" ")
    if len(words) <= 1 or not content:
        return [content] if content else []
    size = max(1, -(-len(words) // pieces))
    parts = [" ".join(words[i:i + size]) for i in range(0, len(words), size)]
    return [p + " " if n < len(parts) - 1 else p for n, p in enumerate(parts)]
