"""Failed authentications over HTTP, per client address: /v1 fleet keys, the admin API's
Bearer key and the dashboard login, against the package's API (default limits) and an
``llmfleet api`` of this module's own with small ones (3 failures, a 2 s window).

Each test speaks for addresses of its own through X-Forwarded-For, which uvicorn believes
from 127.0.0.1 (as from a proxy there): so no test blocks another, and the counters are
deleted afterwards all the same."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest
import redis

from schemas.keys import AUTH_FAILURES
from tests.conftest import stop_process, wait_until
from tests.workers.api.conftest import ADMIN_KEY, free_port

WRONG_FLEET_KEY = "lfk_0123456789ab_" + "w" * 43
_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def strict_url(api_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[str]:
    """An ``llmfleet api`` allowing 3 failed authentications per 2 s window."""
    env = {**api_env, "LLMFLEET_AUTH_FAILURE_LIMIT": "3",
           "LLMFLEET_AUTH_FAILURE_WINDOW_S": "2"}
    port = free_port()
    log = (tmp_path_factory.mktemp("strict-api-logs") / "api.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-c", "from workers.cli.api import api_command; api_command()",
         "--port", str(port), "--workers", "1"], env=env, stdout=log,
        stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert process.poll() is None, "the API process died at start"
        try:
            return httpx.get(f"{url}/api/admin/ml-ops/health", timeout=2).status_code > 0
        except httpx.TransportError:
            return False

    try:
        wait_until(answers, timeout=60)
        yield url
    finally:
        stop_process(process)
        log.close()


@pytest.fixture()
def address(redis_url: str) -> Iterator[Callable[[], str]]:
    """Makes client addresses no other test uses (TEST-NET-2); their counters are deleted
    afterwards, so a test that trips the limit blocks nobody else."""
    made: list[str] = []

    def new() -> str:
        made.append(f"198.51.100.{next(_numbers) % 250 + 1}")
        client.delete(AUTH_FAILURES.format(address=made[-1]))
        return made[-1]

    client = redis.Redis.from_url(redis_url)
    yield new
    if made:
        client.delete(*(AUTH_FAILURES.format(address=a) for a in made))
    client.close()


def fleet(url: str, client_ip: str, right_key: str, right: bool) -> httpx.Response:
    key = right_key if right else WRONG_FLEET_KEY
    return httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {key}",
                                                  "x-forwarded-for": client_ip})


def admin(url: str, client_ip: str, right_key: str, right: bool) -> httpx.Response:
    key = ADMIN_KEY if right else "not-the-admin-key"
    return httpx.get(f"{url}/api/admin/ml-ops/fleet",
                     headers={"authorization": f"Bearer {key}", "x-forwarded-for": client_ip})


def dashboard(url: str, client_ip: str, right_key: str, right: bool) -> httpx.Response:
    key = ADMIN_KEY if right else "not-the-admin-key"
    return httpx.post(f"{url}/dashboard/login", json={"key": key},
                      headers={"x-forwarded-for": client_ip})


SURFACES: dict[str, Callable[..., httpx.Response]] = {
    "fleet key on /v1": fleet, "admin key on the admin API": admin,
    "admin key at the dashboard login": dashboard}


def assert_blocked(response: httpx.Response, window_s: float) -> int:
    """The 429 of a blocked address; its Retry-After."""
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "too_many_failed_authentications"
    assert "even with a good key" in error["message"]
    assert response.headers["x-should-retry"] == "false"
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= window_s
    return retry_after


def test_twenty_wrong_fleet_keys_then_even_the_right_one_is_429(
        api_url: str, key: str, address: Callable[[], str]) -> None:
    # Given an address that has presented 20 wrong fleet keys within a minute
    attacker, neighbour = address(), address()
    for _ in range(20):
        assert fleet(api_url, attacker, key, right=False).status_code == 401
    # When it presents the right key
    # Then it is refused with 429, for at most the rest of the minute
    assert_blocked(fleet(api_url, attacker, key, right=True), 60)
    # And the SDK raises RateLimitError at once, without its retries
    sdk = openai.OpenAI(base_url=f"{api_url}/v1", api_key=key, max_retries=2,
                        default_headers={"x-forwarded-for": attacker})
    started = time.monotonic()
    with sdk, pytest.raises(openai.RateLimitError) as raised:
        sdk.models.list()
    assert raised.value.code == "too_many_failed_authentications"
    assert time.monotonic() - started < 5
    # And another address is served as ever
    assert fleet(api_url, neighbour, key, right=True).status_code == 200


@pytest.mark.parametrize("surface", SURFACES)
def test_after_three_failures_each_surface_answers_429_until_the_window_passes(
        strict_url: str, key: str, address: Callable[[], str], surface: str) -> None:
    attempt, client_ip = SURFACES[surface], address()
    # Given an address that has failed 3 times (the limit) on this surface
    for _ in range(3):
        assert attempt(strict_url, client_ip, key, False).status_code == 401
    # When it comes with the right key
    retry_after = assert_blocked(attempt(strict_url, client_ip, key, True), 2)
    # Then, once Retry-After has passed, the right key is let in
    time.sleep(retry_after + 0.05)
    assert attempt(strict_url, client_ip, key, True).status_code == 200


def test_failures_on_every_surface_count_together(
        strict_url: str, key: str, address: Callable[[], str]) -> None:
    # Given an address that failed once on each surface
    client_ip = address()
    for attempt in SURFACES.values():
        assert attempt(strict_url, client_ip, key, False).status_code == 401
    # Then every surface refuses it, a right key too
    for attempt in SURFACES.values():
        assert_blocked(attempt(strict_url, client_ip, key, True), 2)


def test_requests_with_no_key_and_good_keys_do_not_count(
        strict_url: str, key: str, address: Callable[[], str]) -> None:
    # Given an address that sends requests with no key, and good keys, many times
    client_ip = address()
    for _ in range(5):
        assert httpx.get(f"{strict_url}/v1/models",
                         headers={"x-forwarded-for": client_ip}).status_code == 401
        assert httpx.get(f"{strict_url}/api/admin/ml-ops/fleet",
                         headers={"x-forwarded-for": client_ip}).status_code == 401
        assert fleet(strict_url, client_ip, key, True).status_code == 200
    # When it then fails twice (one short of the limit)
    for _ in range(2):
        assert fleet(strict_url, client_ip, key, False).status_code == 401
    # Then it is still let in
    assert fleet(strict_url, client_ip, key, True).status_code == 200

