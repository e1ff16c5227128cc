"""Anthropic Messages: the answer as one message, or as a stream of events.

A stream goes: message_start (with usage.input_tokens), then per content block a
content_block_start, its deltas (text_delta, or input_json_delta with partial_json for
a tool_use block), a content_block_stop; a ping after the first block starts, as the
API sends one; then message_delta (stop_reason, usage.output_tokens) and message_stop.
A failure mid-stream is an `event: error` with an overloaded_error, as Anthropic sends.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from ._answer import Answer, compose
from ._anthropic_request import MessagesRequest, parse_messages_request
from ._config import SimState
from ._protocol import Parsed, with_usage
from ._stream import Frame, Streamed, sse
from ._text import count_tokens, pieces

Json = dict[str, Any]
_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_ERROR = sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
             "error")


def _stop_reason(answer: Answer) -> str:
    return "stop_sequence" if answer.stop_sequence else _REASONS[answer.finish]


def _blocks(answer: Answer) -> list[Json]:
    blocks: list[Json] = [] if answer.text is None else [{"type": "text", "text": answer.text}]
    blocks += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.value}
               for c in answer.calls]
    return blocks


def _message(req: MessagesRequest, state: SimState) -> Json:
    answer = compose(req.ask, state, anthropic=True)
    result: Json = {
        "id": f"msg_{os.urandom(12).hex()}",
        "type": "message",
        "role": "assistant",
        "model": req.ask.model,
        "content": _blocks(answer),
        "stop_reason": _stop_reason(answer),
        "stop_sequence": answer.stop_sequence,
    }
    usage = {
        "input_tokens": req.prompt_tokens,
        "output_tokens": answer.tokens,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }
    return with_usage(state.config, result, usage)


def _block_frames(index: int, block: Json, deltas: list[tuple[str, int]]) -> Iterator[Frame]:
    start = {"type": "content_block_start", "index": index}
    if block["type"] == "text":
        yield Frame(sse({**start, "content_block": {"type": "text", "text": ""}},
                        "content_block_start"))
        kind, key = "text_delta", "text"
    else:  # a tool_use block: its start names the tool, so it counts as a delta
        head = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        yield Frame(sse({**start, "content_block": head}, "content_block_start"),
                    count_tokens(block["name"]), True)
        kind, key = "input_json_delta", "partial_json"
    if index == 0:
        yield Frame(sse({"type": "ping"}, "ping"))
    for text, tokens in deltas:
        delta = {"type": "content_block_delta", "index": index, "delta": {"type": kind, key: text}}
        yield Frame(sse(delta, "content_block_delta"), tokens, True)
    yield Frame(sse({"type": "content_block_stop", "index": index}, "content_block_stop"))


def _events(req: MessagesRequest, state: SimState) -> Streamed:
    answer = compose(req.ask, state, anthropic=True)
    blocks = _blocks(answer)
    texts = [answer.text] if answer.text is not None else []
    deltas = [pieces(text) for text in texts + [c.text for c in answer.calls]]
    usage = not state.config.omit_usage
    message: Json = {
        "id": f"msg_{os.urandom(12).hex()}", "type": "message", "role": "assistant",
        "model": req.ask.model, "content": [], "stop_reason": None, "stop_sequence": None,
    }
    if usage:
        message["usage"] = {"input_tokens": req.prompt_tokens, "output_tokens": 1,
                            "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}

    def frames() -> Iterator[Frame]:
        yield Frame(sse({"type": "message_start", "message": message}, "message_start"))
        for index, block in enumerate(blocks):
            yield from _block_frames(index, block, deltas[index])
        end: Json = {"type": "message_delta", "delta": {
            "stop_reason": _stop_reason(answer), "stop_sequence": answer.stop_sequence}}
        if usage:
            end["usage"] = {"output_tokens": answer.tokens}
        yield Frame(sse(end, "message_delta"))
        yield Frame(sse({"type": "message_stop"}, "message_stop"))

    count = sum(len(d) for d in deltas) + len(answer.calls)
    return Streamed(frames(), count, _ERROR)


def parse_messages(body: Json) -> Parsed:
    """POST /v1/messages."""
    req = parse_messages_request(body)
    stream = (lambda state: _events(req, state)) if req.stream else None
    quota_tokens = req.prompt_tokens + (req.ask.limit or 0)
    return Parsed(req.ask.model, req.prompt_tokens, lambda s: _message(req, s), stream,
                  quota_tokens)
