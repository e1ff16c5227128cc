"""AuthGuard on its own against the session's real Redis: failures counted per address
and fleet-wide, the 429 before any key is checked, the window's end, Redis down; and the
address it counts. Every test uses addresses of its own and clears their keys."""

from __future__ import annotations

import functools
import logging
import socket
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from starlette.requests import Request

from schemas.keys import AUTH_FAILURES
from workers.api.auth_guard import DEFAULT_LIMIT, DEFAULT_WINDOW_S, AuthGuard, client_address
from workers.api.errors import ApiError


@pytest.fixture()
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture()
def address(redis_client: redis.Redis) -> Iterator[str]:
    """An address no other test counts against; its counter is gone afterwards."""
    made = f"guard-test-{uuid.uuid4().hex[:12]}"
    yield made
    redis_client.delete(AUTH_FAILURES.format(address=made))


class Check:
    """A key check that answers ``answer`` and remembers how often it ran."""

    def __init__(self, answer: str | None) -> None:
        self.answer, self.calls = answer, 0

    def __call__(self) -> str | None:
        self.calls += 1
        return self.answer


def refused(call: Callable[[], object]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()
    return caught.value


def test_after_the_limit_even_a_good_key_is_refused_until_the_window_passes(
        redis_client: redis.Redis, address: str) -> None:
    # Given a guard allowing 3 failures a second, and 3 wrong keys from one address
    guard = AuthGuard(redis_client, limit=3, window_s=1.0)
    for _ in range(3):
        assert guard.attempt(address, Check(None)) is None
    # When a good key comes from that address
    good = Check("key")
    error = refused(lambda: guard.attempt(address, good))
    # Then it is refused with a 429 saying so, before the key was checked
    assert good.calls == 0
    assert (error.status, error.type, error.code) == (
        429, "rate_limit_exceeded", "too_many_failed_authentications")
    assert "even with a good key" in error.message
    assert error.headers == {"retry-after": "1", "x-should-retry": "false"}
    # And the window's counter expires by itself: then the good key passes
    assert 0 < redis_client.pttl(AUTH_FAILURES.format(address=address)) <= 1000
    time.sleep(1.1)
    assert redis_client.exists(AUTH_FAILURES.format(address=address)) == 0
    assert guard.attempt(address, good) == "key"


def test_good_keys_do_not_count(redis_client: redis.Redis, address: str) -> None:
    # Given a guard allowing 3 failures, and 2 wrong keys from one address
    guard = AuthGuard(redis_client, limit=3, window_s=60)
    for _ in range(2):
        guard.attempt(address, Check(None))
    # When many good keys come from it
    for _ in range(10):
        assert guard.attempt(address, Check("key")) == "key"
    # Then it is blocked only at its third failure
    guard.attempt(address, Check(None))
    assert refused(lambda: guard.admit(address)).status == 429


def test_the_count_is_per_address(redis_client: redis.Redis, address: str) -> None:
    # Given an address at its limit
    guard = AuthGuard(redis_client, limit=2, window_s=60)
    for _ in range(2):
        guard.admit(address, failed=True)
    other = f"{address}-other"
    try:
        # When another address comes with a good key, Then it passes
        assert guard.attempt(other, Check("key")) == "key"
        assert refused(lambda: guard.admit(address)).status == 429
    finally:
        redis_client.delete(AUTH_FAILURES.format(address=other))


def test_every_api_process_sees_the_same_count(redis_url: str, address: str) -> None:
    # Given two guards with Redis clients of their own, as two API processes have
    first, second = redis.Redis.from_url(redis_url), redis.Redis.from_url(redis_url)
    try:
        one, two = AuthGuard(first, limit=4), AuthGuard(second, limit=4)
        # When an address fails twice at each
        for guard in (one, two, one, two):
            guard.admit(address, failed=True)
        # Then both refuse it, saying when it may try again (within the window)
        for guard in (one, two):
            headers = refused(functools.partial(guard.admit, address)).headers or {}
            assert 0 < int(headers["retry-after"]) <= DEFAULT_WINDOW_S
    finally:
        first.close()
        second.close()


def test_a_blocked_attempt_does_not_lengthen_the_window(redis_client: redis.Redis,
                                                        address: str) -> None:
    # Given an address blocked for its 2 s window
    guard = AuthGuard(redis_client, limit=1, window_s=2.0)
    guard.admit(address, failed=True)
    key = AUTH_FAILURES.format(address=address)
    before = redis_client.pttl(key)
    # When it keeps trying, with wrong keys too
    for _ in range(5):
        refused(lambda: guard.admit(address, failed=True))
    # Then its count and expiry are as they were
    assert int(redis_client.get(key) or 0) == 1
    assert redis_client.pttl(key) <= before


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_without_redis_keys_are_still_checked_and_nothing_is_refused(
        caplog: pytest.LogCaptureFixture) -> None:
    # Given a guard whose Redis does not answer
    down = redis.Redis(port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5,
                       retry=Retry(NoBackoff(), 0))
    guard = AuthGuard(down, limit=1, window_s=60)
    caplog.set_level(logging.WARNING, logger="workers.api.auth_guard")
    try:
        # When keys come, wrong ones well past the limit
        wrong, good = Check(None), Check("key")
        answers = [guard.attempt("203.0.113.9", wrong) for _ in range(3)]
        # Then every key is checked and answered as it is
        assert answers == [None] * 3 and wrong.calls == 3
        assert guard.attempt("203.0.113.9", good) == "key"
        # And the outage is logged once, not once per request
        warnings = [r for r in caplog.records if "Redis does not answer" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        down.close()


def test_limits_come_from_the_environment(redis_client: redis.Redis) -> None:
    # Given no variables, Then the defaults
    guard = AuthGuard.from_env(redis_client, {})
    assert (guard.limit, guard.window_s) == (DEFAULT_LIMIT, DEFAULT_WINDOW_S) == (20, 60.0)
    # Given both variables, Then theirs
    guard = AuthGuard.from_env(redis_client, {"LLMFLEET_AUTH_FAILURE_LIMIT": "5",
                                              "LLMFLEET_AUTH_FAILURE_WINDOW_S": "2.5"})
    assert (guard.limit, guard.window_s) == (5, 2.5)
    # Given a value that makes no limit, Then an error naming the variables
    for bad in ({"LLMFLEET_AUTH_FAILURE_LIMIT": "0"},
                {"LLMFLEET_AUTH_FAILURE_WINDOW_S": "soon"}):
        with pytest.raises(ValueError, match="LLMFLEET_AUTH_FAILURE_LIMIT"):
            AuthGuard.from_env(redis_client, bad)


def request_from(host: str | None) -> Request:
    client = None if host is None else (host, 50000)
    return Request({"type": "http", "method": "GET", "path": "/", "headers": [],
                    "query_string": b"", "client": client})


@pytest.mark.parametrize(("host", "counted_as"), [
    ("198.51.100.7", "198.51.100.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),       # one host's /64, whole
    ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
    ("::ffff:198.51.100.7", "198.51.100.7"),             # IPv4 over an IPv6 socket
    ("testclient", "testclient"),
    (None, "unknown"),
])
def test_the_address_counted(host: str | None, counted_as: str) -> None:
    assert client_address(request_from(host)) == counted_as
