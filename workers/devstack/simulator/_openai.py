"""OpenAI chat completions: the answer as one chat.completion, or as a stream of
chat.completion.chunk events.

A stream goes: a chunk with the assistant role, content deltas of a few tokens (or, for
tool calls, each call's id and name, then fragments of its arguments), a chunk with
the finish_reason and an empty delta, a last chunk with `choices: []` and the usage
only when stream_options.include_usage asks (then every other chunk has
`usage: null`), and `data: [DONE]`. A failure mid-stream is what OpenAI sends: a
`data: {"error": {...}}` event, which the official SDKs raise as an APIError, and the
end of the stream without [DONE].
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from ._answer import Answer, compose
from ._config import SimState
from ._openai_request import ChatRequest, parse_chat_request
from ._protocol import Parsed, with_usage
from ._stream import Frame, Streamed, sse
from ._text import count_tokens, pieces

Json = dict[str, Any]
_ERROR = sse({"error": {
    "message": "The server had an error while processing your request. Sorry about that!",
    "type": "server_error", "param": None, "code": None,
}})
_DONE = b"data: [DONE]\n\n"


def _usage(prompt: int, completion: int) -> Json:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _message(answer: Answer) -> Json:
    message: Json = {"role": "assistant", "content": answer.text, "refusal": None}
    if answer.calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.text}}
            for c in answer.calls
        ]
    return message


def _completion(req: ChatRequest, state: SimState) -> Json:
    answer = compose(req.ask, state)
    message = _message(answer)
    choices = [
        {"index": i, "message": message, "logprobs": None, "finish_reason": answer.finish}
        for i in range(req.n)
    ]
    result: Json = {
        "id": f"chatcmpl-{os.urandom(12).hex()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.ask.model,
        "choices": choices,
    }
    return with_usage(state.config, result, _usage(req.prompt_tokens, answer.tokens * req.n))


def _deltas(answer: Answer) -> list[tuple[Json, int]]:
    """The deltas after the role chunk, with the tokens each carries."""
    out: list[tuple[Json, int]] = [({"content": t}, n) for t, n in pieces(answer.text or "")]
    for index, call in enumerate(answer.calls):
        head = {"index": index, "id": call.id, "type": "function",
                "function": {"name": call.name, "arguments": ""}}
        out.append(({"tool_calls": [head]}, count_tokens(call.name)))
        out += [({"tool_calls": [{"index": index, "function": {"arguments": t}}]}, n)
                for t, n in pieces(call.text)]
    return out


def _chunks(req: ChatRequest, state: SimState) -> Streamed:
    answer = compose(req.ask, state)
    deltas = _deltas(answer)
    with_usage_ = req.include_usage and not state.config.omit_usage
    head: Json = {
        "id": f"chatcmpl-{os.urandom(12).hex()}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": req.ask.model,
    }

    def chunk(delta: Json, finish: str | None = None) -> bytes:
        choices = [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
                   for i in range(req.n)]
        return sse({**head, "choices": choices, "usage": None} if with_usage_ else
                   {**head, "choices": choices})

    def frames() -> Iterator[Frame]:
        content = None if answer.text is None else ""
        yield Frame(chunk({"role": "assistant", "content": content, "refusal": None}))
        for delta, tokens in deltas:
            yield Frame(chunk(delta), tokens * req.n, True)
        yield Frame(chunk({}, answer.finish))
        if with_usage_:
            usage = _usage(req.prompt_tokens, answer.tokens * req.n)
            yield Frame(sse({**head, "choices": [], "usage": usage}))
        yield Frame(_DONE)

    return Streamed(frames(), len(deltas), _ERROR)


def parse_chat(body: Json) -> Parsed:
    """POST /v1/chat/completions."""
    req = parse_chat_request(body)
    stream = (lambda state: _chunks(req, state)) if req.stream else None
    quota_tokens = req.prompt_tokens + (req.ask.limit or 0) * req.n
    return Parsed(req.ask.model, req.prompt_tokens, lambda s: _completion(req, s), stream,
                  quota_tokens)
