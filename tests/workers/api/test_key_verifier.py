"""KeyVerifier's memories against real Postgres: a wrong key repeated costs no second
query, for a while and within bounds; a revoked key is still refused once its good
answer lapses. Queries are counted on an engine of the test's own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event

from schemas import sqlalchemy_url
from workers.api.keys import KeyVerifier, create_key, revoke_key


class Counted:
    """An engine that counts the statements it runs."""

    def __init__(self, database_url: str) -> None:
        self.engine: Engine = create_engine(sqlalchemy_url(database_url))
        self.queries = 0
        event.listen(self.engine, "before_cursor_execute", self._count)

    def _count(self, *args: Any) -> None:
        self.queries += 1

    def verifier(self, **options: Any) -> KeyVerifier:
        return KeyVerifier(self.engine, **options)


@pytest.fixture()
def counted(database_url: str) -> Iterator[Counted]:
    made = Counted(database_url)
    yield made
    made.engine.dispose()


@pytest.fixture()
def good_key(engine: Engine) -> tuple[str, str]:
    """(key_id, key) of a fresh live key."""
    return create_key(engine, "verifier-tester", None)


def wrong_secret(key: str) -> str:
    """The same key id with another secret."""
    prefix, _, secret = key.rpartition("_")
    return f"{prefix}_{'A' if secret[0] != 'A' else 'B'}{secret[1:]}"


UNKNOWN = "lfk_0123456789ab_" + "x" * 43


@pytest.mark.parametrize("kind", ["unknown id", "known id, wrong secret"])
def test_a_wrong_key_repeated_costs_no_second_query(counted: Counted, good_key: tuple[str, str],
                                                     kind: str) -> None:
    # Given a verifier and a wrong key
    verifier = counted.verifier()
    wrong = UNKNOWN if kind == "unknown id" else wrong_secret(good_key[1])
    # When it is presented three times
    answers = [verifier.verify(wrong) for _ in range(3)]
    # Then it is refused every time, at the cost of one query
    assert answers == [None, None, None]
    assert counted.queries == 1
    # And the good key of that id is not refused for it
    assert verifier.verify(good_key[1]) is not None


def test_a_wrong_key_is_looked_up_again_once_its_time_has_passed(counted: Counted) -> None:
    # Given a verifier remembering wrong keys for 0.3 s, which has refused one
    verifier = counted.verifier(wrong_ttl_s=0.3)
    assert verifier.verify(UNKNOWN) is None
    # When the key comes again after that time
    time.sleep(0.4)
    assert verifier.verify(UNKNOWN) is None
    # Then it was looked up again
    assert counted.queries == 2


def test_the_wrong_keys_remembered_are_bounded(counted: Counted) -> None:
    # Given a verifier remembering at most two wrong keys
    verifier = counted.verifier(max_wrong=2)
    first, second, third = (f"lfk_0123456789a{n}_" + "y" * 43 for n in "cde")
    # When three wrong keys come, then the first and the last again
    for key in (first, second, third):
        verifier.verify(key)
    assert counted.queries == 3
    verifier.verify(first)
    verifier.verify(third)
    # Then the oldest was forgotten (a query) and the newest was not
    assert counted.queries == 4


def test_a_revoked_key_is_refused_once_its_good_answer_lapses(
        counted: Counted, engine: Engine, good_key: tuple[str, str]) -> None:
    # Given a verifier remembering good answers for 0.3 s, which has just accepted a key
    verifier = counted.verifier(ttl_s=0.3)
    key_id, key = good_key
    assert verifier.verify(key) is not None
    # When the key is revoked
    assert revoke_key(engine, key_id)
    # Then it is refused once the good answer lapses, and from then on at no cost
    time.sleep(0.4)
    assert verifier.verify(key) is None
    queries = counted.queries
    assert verifier.verify(key) is None
    assert counted.queries == queries
