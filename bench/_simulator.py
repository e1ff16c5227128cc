"""The provider simulator as the benchmarks run it: a real ``llmfleet simulator``
process on a free port, and its control endpoints (``/_sim/...``)."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from typing import Any

from workers.devstack.supervisor import Supervisor

__all__ = ["free_port", "sim_request", "start_simulator"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sim_request(base: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """GET (or POST ``body`` to) one of the simulator's control endpoints."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def start_simulator(sup: Supervisor, latency_ms: float, limit_s: float = 30) -> str:
    """Start it under ``sup``; its base URL once it answers."""
    port = free_port()
    sup.start("simulator", ["simulator", "--host", "127.0.0.1", "--port", str(port),
                            "--latency-ms", str(latency_ms)])
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + limit_s
    while True:
        sup.check_alive()
        try:
            sim_request(base, "/_sim/config")
            return base
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the simulator did not answer on {base}") from None
            time.sleep(0.1)
