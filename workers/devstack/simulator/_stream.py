"""Server-sent event streams: pacing, mid-stream failures, and a client that hangs up.

A route renders its answer as a lazy sequence of frames (one SSE event each); `send`
writes them with first_token_ms before the first content delta and token_ms between
deltas. Frames are made only when they are due, so a client that closes its stream
stops the work at once: aiohttp raises on a write to a closed transport, and the
pauses look at the transport every few milliseconds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any, NamedTuple

from aiohttp import web

from ._config import SimState

_POLL_S = 0.02  # how often a pause looks for a client that has gone
_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


class Frame(NamedTuple):
    data: bytes
    tokens: int = 0
    delta: bool = False  # carries generated content: paced, counted, where failures fall


class Streamed(NamedTuple):
    """A stream to send: its frames, how many are deltas, the frame a failure sends."""

    frames: Iterable[Frame]
    deltas: int
    error: bytes


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event: `data: <json>` (after `event: <name>` when named)."""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {body}\n\n".encode()


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _pause(request: web.Request, seconds: float) -> None:
    """Sleep, but raise as soon as the client has hung up."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while True:
        if _gone(request):
            raise ConnectionResetError("the client closed the stream")
        left = end - loop.time()
        if left <= 0:
            return
        await asyncio.sleep(min(left, _POLL_S))


async def send(request: web.Request, state: SimState, stream: Streamed) -> web.StreamResponse:
    """Write the stream's frames, paced; a failure injected by stream_failure_rate sends
    its error frame after some deltas and ends the stream."""
    stats, config = state.streams, state.config
    fail_after = state.stream_failure(stream.deltas)
    response = web.StreamResponse(headers=_HEADERS)
    stats.started += 1
    sent = 0
    try:
        await response.prepare(request)
        for frame in stream.frames:
            if frame.delta:
                if sent == fail_after:
                    await response.write(stream.error)
                    await response.write_eof()
                    stats.failed += 1
                    return response
                await _pause(request, (config.token_ms if sent else config.first_token_ms) / 1e3)
            await response.write(frame.data)
            if frame.delta:
                sent += 1
                stats.deltas += 1
                stats.tokens += frame.tokens
        await response.write_eof()
        stats.completed += 1
    except (ConnectionError, asyncio.CancelledError) as exc:
        stats.cancelled += 1
        if isinstance(exc, asyncio.CancelledError):
            raise
    return response
