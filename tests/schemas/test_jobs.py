"""Job payloads are refused with an error naming the field, before they reach a queue."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas import (
    MAX_REQUEST_CHARS,
    CompletionJob,
    EmbeddingJob,
    JobValidationError,
    validation_error,
)

USER = {"role": "user", "content": "hi"}


def _refusal(**payload: object) -> JobValidationError:
    with pytest.raises(ValidationError) as info:
        CompletionJob.model_validate(payload)
    return validation_error(info.value)


def test_a_valid_job_keeps_its_fields_and_gets_an_id() -> None:
    job = CompletionJob.model_validate({"messages": [USER], "tier": "simple", "max_tokens": 5})
    assert job.tier == "simple" and job.max_tokens == 5
    assert len(job.job_id) == 32
    assert job.messages[0].text == "hi"


@pytest.mark.parametrize(("payload", "field"), [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages"),
    ({"messages": [USER], "max_tokens": 0}, "max_tokens"),
    ({"messages": [USER], "temperature": 3}, "temperature"),
    ({"messages": [USER], "colour": "blue"}, "colour"),
    ({"messages": [USER], "tier": "no spaces allowed"}, "tier"),
    ({"messages": [USER], "timeout": -1}, "timeout"),
])
def test_each_bad_field_is_named(payload: dict[str, object], field: str) -> None:
    error = _refusal(**payload)
    assert error.field == field
    assert str(error).startswith(field)


def test_an_oversized_request_is_refused_naming_messages() -> None:
    error = _refusal(messages=[{"role": "user", "content": "x" * (MAX_REQUEST_CHARS + 1)}])
    assert error.field == "messages"
    assert "limit" in str(error)


def test_content_blocks_are_joined_as_text() -> None:
    job = CompletionJob.model_validate({"messages": [
        {"role": "user", "content": [{"type": "text", "text": "a"},
                                     {"type": "text", "text": "b"}]}]})
    assert job.messages[0].text == "ab"


def test_sampling_holds_only_the_options_set() -> None:
    job = CompletionJob.model_validate({"messages": [USER], "temperature": 0.2, "stop": ["x"]})
    assert job.sampling() == {"temperature": 0.2, "stop": ["x"]}


def test_an_embedding_job_refuses_empty_texts() -> None:
    with pytest.raises(ValidationError) as info:
        EmbeddingJob.model_validate({"texts": ["ok", ""]})
    assert validation_error(info.value).field == "texts"


def test_a_job_survives_its_json_round_trip() -> None:
    job = CompletionJob.model_validate({"messages": [USER], "metadata": {"k": 1}})
    assert CompletionJob.model_validate_json(job.model_dump_json()) == job


def test_ledger_rows_know_the_widths_of_their_columns() -> None:
    from sqlalchemy import String

    from schemas.ledger import COLUMN_WIDTHS
    from schemas.tables import job_ledger

    widths = {c.name: c.type.length for c in job_ledger.c
              if isinstance(c.type, String) and c.type.length}
    assert widths == COLUMN_WIDTHS


def test_a_ledger_row_is_storable_whoever_builds_it() -> None:
    import datetime as dt

    from schemas import LedgerRow

    now = dt.datetime.now(dt.UTC)
    # Given values Postgres would refuse: NULs, a tier past its 40 characters
    row = LedgerRow(job_id="job-00000001", kind="completion", agent="a\x00gent",
                    tier="t" * 300, status="rejected", error_message="e\x00" * 900,
                    metadata={"k\x00": ["v\x00", {"n\x00": "x\x00"}]},
                    created_at=now, finished_at=now)
    # Then the row holds none of them
    assert row.agent == "agent" and row.tier == "t" * 40
    assert row.error_message == "e" * 500
    assert row.metadata == {"k": ["v", {"n": "x"}]}


@pytest.mark.parametrize("submitted_at", [1e20, -5, 0])
def test_a_submission_time_no_date_can_hold_is_refused(submitted_at: float) -> None:
    from schemas import validation_error

    with pytest.raises(ValidationError) as info:
        CompletionJob.model_validate({"messages": [{"role": "user", "content": "x"}],
                                      "submitted_at": submitted_at})
    assert validation_error(info.value).field == "submitted_at"  # type: ignore[attr-defined]


def test_a_deadline_is_seconds_or_a_duration() -> None:
    from schemas import CompletionJob

    messages = [{"role": "user", "content": "later"}]
    assert CompletionJob(messages=messages, deadline="24h").deadline == 86400
    assert CompletionJob(messages=messages, deadline=90).deadline == 90
    assert CompletionJob(messages=messages, deadline="90").deadline == 90


@pytest.mark.parametrize("value", ["tomorrow", -5, 0, True, "0h", 10**9])
def test_a_deadline_that_is_no_positive_duration_is_refused(value: object) -> None:
    from pydantic import ValidationError

    from schemas import CompletionJob

    with pytest.raises(ValidationError, match="deadline"):
        CompletionJob(messages=[{"role": "user", "content": "x"}], deadline=value)


def test_a_batch_tier_lends_its_deadline_and_a_timeout_bounds_it() -> None:
    from schemas import load_fleet_config, parse_fleet_config

    base = load_fleet_config().model_dump()
    base["tiers"]["simple"] = {**base["tiers"]["simple"], "batch": True, "deadline": "2h"}
    fleet = parse_fleet_config(base)
    assert fleet.wait_s("simple", None, None) == 7200
    assert fleet.wait_s("simple", 60, None) == 60
    assert fleet.wait_s("simple", None, 1800) == 1800
    assert fleet.wait_s("medium", None, None) is None
