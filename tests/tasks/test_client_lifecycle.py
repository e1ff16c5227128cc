"""The client's lifecycle: closing ends waits instead of hanging them, a script that
forgets to close exits quietly, and the asyncio path never blocks its loop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from schemas import ClientClosedError, FleetConfig, TemplateNotFoundError
from tasks import FleetClient

_SCRIPT = """
from schemas import JobTimeoutError
from tasks import FleetClient

client = FleetClient()
handle = client.submit([{"role": "user", "content": "nobody answers"}], tier="medium",
                       max_tokens=8)
try:
    handle.get(timeout=0.3)
except JobTimeoutError:
    print("timed out as expected")
"""


def test_a_script_that_never_closes_its_client_exits_quietly(redis_url: str) -> None:
    # Given a script that waits on a job through a client it never closes
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                          env={"REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"}, timeout=60)
    # Then it exits at once, saying nothing on stderr
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "timed out as expected"
    assert done.stderr == ""


@pytest.mark.timeout(30)
def test_close_ends_a_blocking_wait_with_a_typed_error(redis_url: str,
                                                       fleet: FleetConfig) -> None:
    # Given a thread blocked on a job nobody will answer
    client = FleetClient(redis_url=redis_url, fleet=fleet)
    handle = client.submit([{"role": "user", "content": "never answered"}], tier="medium")
    raised: list[BaseException] = []

    def wait() -> None:
        try:
            handle.get(timeout=60)
        except BaseException as exc:
            raised.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.3)
    # When the client is closed
    started = time.monotonic()
    client.close()
    waiter.join(timeout=10)
    # Then the wait ends at once with ClientClosedError, and later use says the same
    assert not waiter.is_alive()
    assert time.monotonic() - started < 6
    assert len(raised) == 1 and isinstance(raised[0], ClientClosedError)
    with pytest.raises(ClientClosedError):
        handle.get(timeout=1)
    client.close()  # twice is harmless


@pytest.mark.timeout(30)
def test_close_ends_an_awaited_wait_with_a_typed_error(redis_url: str,
                                                       fleet: FleetConfig) -> None:
    client = FleetClient(redis_url=redis_url, fleet=fleet)
    handle = client.submit([{"role": "user", "content": "never answered either"}],
                           tier="medium")

    async def scenario() -> BaseException | None:
        task = asyncio.ensure_future(handle.wait(timeout=60))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(client.close)
        try:
            await asyncio.wait_for(task, 10)
        except BaseException as exc:
            return exc
        return None

    assert isinstance(asyncio.run(scenario()), ClientClosedError)


def test_acomplete_fetches_a_template_without_blocking_the_loop(
        redis_url: str, fleet: FleetConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a template store that takes half a second to answer (and knows nothing)
    client = FleetClient(redis_url=redis_url, fleet=fleet)

    def slow_expand(messages: Any, options: Any) -> Any:
        time.sleep(0.5)
        raise TemplateNotFoundError("no such template", template="slow")

    monkeypatch.setattr(client.templates, "expand", slow_expand)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def scenario() -> None:
        clock = asyncio.ensure_future(ticker())
        try:
            with pytest.raises(TemplateNotFoundError):
                await client.acomplete(template="slow", variables={}, tier="simple")
        finally:
            clock.cancel()

    try:
        # When an asyncio agent completes from that template
        asyncio.run(scenario())
    finally:
        client.close()
    # Then its loop kept running meanwhile (about 50 ticks of 10 ms in 0.5 s)
    assert ticks >= 20
