"""Ways to run the provider simulator: blocking, or in a background thread.

Tests and benchmarks need a real socket without a separate process, so
`SimulatorThread` runs the app on its own event loop in a daemon thread and
marshals every control call onto that loop, where the handlers read the same
config and counters without locks.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TypeVar

from aiohttp import web

from ._app import create_app
from ._config import STATE, SimulatorConfig

_T = TypeVar("_T")
_START_TIMEOUT_S = 30.0
_CALL_TIMEOUT_S = 10.0
_SHUTDOWN_TIMEOUT_S = 1.0


def run_simulator(
    host: str = "127.0.0.1", port: int = 8765, config: SimulatorConfig | None = None
) -> None:
    """Serve the simulator until interrupted; no access log, to stay fast."""
    app = create_app(config or SimulatorConfig())
    web.run_app(app, host=host, port=port, access_log=None)


class SimulatorThread:
    """The simulator on a free port in a background thread; a context manager."""

    def __init__(
        self, config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config or SimulatorConfig()
        self.host = host
        self.port = port
        self.base_url = ""
        self.openai_base_url = ""
        self._app = create_app(self.config)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> Self:
        """Bind the port and serve; returns once requests are accepted."""
        if self._thread is not None:
            raise RuntimeError("SimulatorThread already started")
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.base_url = f"http://{host}:{self.port}"
        self.openai_base_url = f"{self.base_url}/v1"
        if self._app.frozen:  # restarted: an app serves one loop only; keep the counters
            state, self._app = self._app[STATE], create_app(self.config)
            self._app[STATE] = state
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(sock),), name="llm-simulator", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_S):
            raise RuntimeError("simulator did not start in time")
        if self._error is not None:
            self._thread.join()
            raise RuntimeError("simulator failed to start") from self._error
        return self

    async def _serve(self, sock: socket.socket) -> None:
        runner = web.AppRunner(
            self._app, access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_TIMEOUT_S
        )
        try:
            await runner.setup()
            await web.SockSite(runner, sock).start()
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            await runner.cleanup()
            sock.close()
            return  # start() re-raises it in the caller's thread
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
            sock.close()

    def stop(self) -> None:
        """Close the server and join its thread; safe to call twice."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None and thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
        thread.join()
        self._thread = self._loop = self._stop = None
        self._ready.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _call(self, fn: Callable[[], _T]) -> _T:
        """Run `fn` on the server's loop (or here, if not running); return its result."""
        loop = self._loop
        if loop is None:
            return fn()

        async def call() -> _T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(_CALL_TIMEOUT_S)

    def stats(self) -> dict[str, Any]:
        """Request counters, as GET /_sim/stats returns them."""
        return self._call(self._app[STATE].stats.snapshot)

    def stream_stats(self) -> dict[str, int]:
        """What streams sent, as GET /_sim/stats/streams returns it."""
        return self._call(self._app[STATE].streams.snapshot)

    def reset_stats(self) -> None:
        """Zero the request and the stream counters; empty the quotas' windows."""
        self._call(self._app[STATE].reset_stats)

    def configure(self, **fields: Any) -> None:
        """Change config fields on the running server; unknown names raise ValueError."""
        self._call(lambda: self.config.update(**fields))
