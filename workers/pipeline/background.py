"""One long-running task of a worker's event loop (the parked jobs' mover, the sweeper):
started once, cancelled at close with a bounded wait."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["Background"]


class Background:
    def __init__(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._run = run
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """On the running loop; a second call does nothing."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, wait_s: float = 2.0) -> None:
        """Cancel it and wait for it, at most ``wait_s`` (work it handed to a thread
        may outlast the cancel: not waited for long)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, wait_s)
            self._task = None
