"""Errors cross the result backend as JSON and come back as the same class."""

from __future__ import annotations

import json

import pytest

import schemas
from schemas import (
    AllModelsFailedError,
    FleetError,
    ProviderError,
    RateLimitError,
    UnknownTierError,
    WorkerError,
)


def _leaves() -> list[type[FleetError]]:
    return [getattr(schemas, n) for n in schemas.errors.__all__]


@pytest.mark.parametrize("cls", _leaves())
def test_every_error_is_a_fleet_error(cls: type[FleetError]) -> None:
    assert issubclass(cls, FleetError)


def test_a_round_trip_keeps_class_message_and_fields() -> None:
    error = RateLimitError("slow down", provider="p", model="m", status_code=429, retry_after=2.5)
    back = FleetError.from_payload(json.loads(json.dumps(error.to_payload())))
    assert type(back) is RateLimitError
    assert (back.message, back.provider, back.retry_after) == ("slow down", "p", 2.5)
    assert isinstance(back, ProviderError) and back.retryable


def test_fields_of_parent_classes_travel_too() -> None:
    error = UnknownTierError("no such tier", field="tier")
    assert FleetError.from_payload(error.to_payload()).field == "tier"  # type: ignore[attr-defined]


def test_nested_lists_travel() -> None:
    attempts = [{"model": "m", "provider": "p", "ok": False, "latency_ms": 1.0}]
    error = AllModelsFailedError("all failed", tier="simple", attempts=attempts)
    back = FleetError.from_payload(error.to_payload())
    assert back.attempts == attempts  # type: ignore[attr-defined]


def test_an_unknown_type_becomes_a_worker_error() -> None:
    back = FleetError.from_payload({"type": "Nope", "message": "x"})
    assert isinstance(back, WorkerError)


def test_an_unknown_field_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        RateLimitError("x", colour="red")
