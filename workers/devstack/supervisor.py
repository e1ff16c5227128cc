"""Child processes of ``llmfleet demo`` and ``llmfleet up``: workers, beat, Flower.

Each child is a fresh ``python -m workers.cli ...`` with the parent's environment plus
the stack's URLs, so it takes the production code path. Stopped with SIGTERM (Celery's
warm shutdown), then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from celery import Celery

__all__ = ["Supervisor"]


@dataclass
class Supervisor:
    env: Mapping[str, str]
    log_dir: Path
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def start(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start ``llmfleet ARGS`` as a child; its output goes to ``log_dir/NAME.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        self._logs.append(log)
        process = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", *args], env=dict(self.env),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.children[name] = process
        return process

    def start_exec(self, name: str, argv: Sequence[str],
                   extra_env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start any command as a child (Flower); secrets go in ``extra_env``, never argv."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        self._logs.append(log)
        process = subprocess.Popen(list(argv), env={**self.env, **(extra_env or {})}, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.children[name] = process
        return process

    def wait_for_workers(self, app: Celery, count: int, timeout: float = 60) -> int:
        """Block until ``count`` workers answer a ping; the number that did."""
        deadline = time.monotonic() + timeout
        replies: list[object] = []
        while time.monotonic() < deadline:
            self.check_alive()
            replies = app.control.ping(timeout=0.5) or []
            if len(replies) >= count:
                return len(replies)
            time.sleep(0.2)
        raise TimeoutError(f"{len(replies)} of {count} workers answered within {timeout:.0f}s; "
                           f"see the logs in {self.log_dir}")

    def check_alive(self) -> None:
        for name, process in self.children.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {process.returncode}; "
                                   f"see {self.log_dir / (name + '.log')}")

    def stop(self, grace: float = 15) -> None:
        for process in self.children.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.children.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        self.children.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
