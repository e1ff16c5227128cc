"""uvicorn's HTTP/1.1 protocol with TCP_NODELAY on every connection.

asyncio turns Nagle's algorithm off only on sockets whose ``proto`` is IPPROTO_TCP. The
listening socket uvicorn binds itself to share between several processes
(``--workers`` > 1) has ``proto`` 0, and so has every connection it accepts: a reply
written in two segments then waits for the client's delayed ACK, about 40 ms on each
request of a kept-alive connection (measured with bench/api.py: +48 ms at p50 one
request at a time, against +2 ms with a fresh connection per request). The OpenAI SDKs
keep connections alive, so every agent would pay it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["NoDelayH11Protocol", "set_nodelay"]


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle's algorithm off on the transport's TCP socket (others are left)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class NoDelayH11Protocol(H11Protocol):
    """``--http`` for uvicorn: h11, with TCP_NODELAY set as each connection opens."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        set_nodelay(transport)
        super().connection_made(transport)
