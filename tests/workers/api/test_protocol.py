"""TCP_NODELAY on the API's connections, including those accepted on a socket bound the
way uvicorn binds one for several processes (``proto`` 0, which asyncio leaves alone)."""

from __future__ import annotations

import asyncio
import socket

from workers.api.protocol import set_nodelay


def test_a_connection_accepted_on_a_proto_0_socket_gets_nodelay() -> None:
    async def scenario() -> tuple[int, int]:
        # Given a listening socket made as uvicorn makes it for --workers > 1
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        accepted: asyncio.Future[asyncio.BaseTransport] = asyncio.Future()

        class Capture(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                accepted.set_result(transport)

        server = await asyncio.get_running_loop().create_server(Capture, sock=listener)
        port = listener.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        transport = await accepted
        sock = transport.get_extra_info("socket")
        # When asyncio has accepted it, and then the protocol's hook runs
        before = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        set_nodelay(transport)
        after = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        writer.close()
        transport.close()
        server.close()
        await server.wait_closed()
        return before, after

    before, after = asyncio.run(scenario())
    # Then Nagle was on (asyncio skipped the proto-0 socket) and the hook turned it off
    assert before == 0 and after != 0

