"""OpenAI's Files and Batch endpoints (``/v1/files``, ``/v1/batches``), so that the
official SDKs' batch helpers work against the fleet. A batch's every line is one fleet
job, sent with the completion window as its deadline: it goes through the fleet's own
batcher and is priced as a batch (``docs/batches.md``). Files and batches live in
Postgres (``workers.api.batch_store``) and belong to the fleet key that made them."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import RowMapping

from schemas import JobValidationError, new_job_id
from tasks import JobHandle
from workers.api import batch_store, idempotency
from workers.api.batch_input import InputLine, LineError, read_lines
from workers.api.batch_outcomes import read_outcomes, tally
from workers.api.errors import ApiError
from workers.api.openai_routes import (
    ERROR_RESPONSES,
    Caller,
    admission_fields,
    job_options,
    resolve_model,
)
from workers.api.state import ApiState, state_of

__all__ = ["router"]

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)

#: OpenAI's one completion window, and what it is as a job's deadline.
WINDOWS = {"24h": 24 * 3600.0}
#: A cancelled batch is written up once its jobs ended, or this long after the cancel
#: (a job in flight stops within a second; one waiting for a provider batch is refused
#: when its answer comes).
CANCEL_GRACE_S = 5.0
_OPEN = ("in_progress", "cancelling")


def _ts(moment: dt.datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def _file(row: RowMapping | dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "file", "bytes": row["bytes"],
            "created_at": _ts(row["created_at"]), "filename": row["filename"],
            "purpose": row["purpose"], "status": "processed", "expires_at": None,
            "status_details": None}


def _not_found(kind: str, name: str, param: str | None = None) -> ApiError:
    return ApiError(404, f"no {kind} {name!r} for this key", "invalid_request_error", param,
                    "not_found")


@router.post("/files")
async def upload_file(request: Request, caller: Caller, file: Annotated[UploadFile, File()],
                      purpose: Annotated[str, Form()]) -> dict[str, Any]:
    """Upload a batch's input (JSONL; the API's body limit, 8 MB, applies)."""
    if purpose != "batch":
        raise ApiError(400, f"purpose: only 'batch' is supported (got {purpose[:40]!r})",
                       param="purpose", code="invalid_value")
    content = await file.read()
    state = state_of(request)
    row = await asyncio.to_thread(batch_store.add_file, state.engine, caller.key_id,
                                  purpose, file.filename or "upload.jsonl", content)
    return _file(row)


@router.get("/files/{file_id}")
async def get_file(file_id: str, request: Request, caller: Caller) -> dict[str, Any]:
    row = await asyncio.to_thread(batch_store.get_file, state_of(request).engine,
                                  caller.key_id, file_id)
    if row is None:
        raise _not_found("file", file_id)
    return _file(row)


@router.get("/files/{file_id}/content")
async def file_content(file_id: str, request: Request, caller: Caller) -> Response:
    row = await asyncio.to_thread(batch_store.get_file, state_of(request).engine,
                                  caller.key_id, file_id, content=True)
    if row is None:
        raise _not_found("file", file_id)
    return Response(bytes(row["content"]), media_type="application/jsonl")


@router.delete("/files/{file_id}")
async def delete_file(file_id: str, request: Request, caller: Caller) -> dict[str, Any]:
    if not await asyncio.to_thread(batch_store.delete_file, state_of(request).engine,
                                   caller.key_id, file_id):
        raise _not_found("file", file_id)
    return {"id": file_id, "object": "file", "deleted": True}


class BatchRequest(BaseModel):
    """``POST /v1/batches``."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=40)
    endpoint: Literal["/v1/chat/completions", "/v1/embeddings"]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = Field(default=None, max_length=16)


def _batch(row: RowMapping | dict[str, Any]) -> dict[str, Any]:
    """OpenAI's batch object."""
    errors = row["errors"]
    completed, failed = row["completed"], row["failed"]
    return {
        "id": row["id"], "object": "batch", "endpoint": row["endpoint"],
        "errors": None if not errors else {"object": "list", "data": errors},
        "input_file_id": row["input_file_id"], "completion_window": row["completion_window"],
        "status": row["status"], "output_file_id": row["output_file_id"],
        "error_file_id": row["error_file_id"], "metadata": row["metadata"],
        "request_counts": {"total": row["total"], "completed": completed, "failed": failed},
        "expired_at": None,
        **{f"{moment}_at": _ts(row[f"{moment}_at"]) for moment in (
            "created", "in_progress", "expires", "finalizing", "completed", "failed",
            "cancelling", "cancelled")}}


@router.post("/batches")
async def create_batch(body: BatchRequest, request: Request, caller: Caller
                       ) -> dict[str, Any]:
    """One fleet job per line of the input file, its deadline the completion window. A
    file with bad lines makes a ``failed`` batch naming them (``errors``), as OpenAI's."""
    state = state_of(request)
    source = await asyncio.to_thread(batch_store.get_file, state.engine, caller.key_id,
                                     body.input_file_id, content=True)
    if source is None or source["purpose"] != "batch":
        raise _not_found("batch input file", body.input_file_id, "input_file_id")
    lines, errors = await asyncio.to_thread(read_lines, bytes(source["content"]),
                                            body.endpoint, state.fleet)
    now = dt.datetime.now(dt.UTC)
    window = WINDOWS[body.completion_window]
    batch_id = batch_store.new_id("batch_")
    batch: dict[str, Any] = {"id": batch_id, "key_id": caller.key_id,
             "endpoint": body.endpoint, "input_file_id": body.input_file_id,
             "completion_window": body.completion_window, "metadata": body.metadata,
             "created_at": now, "expires_at": now + dt.timedelta(seconds=window),
             "total": len(lines)}
    if errors:
        return await _refused(state, batch, errors, now)
    jobs = [{"batch_id": batch_id, "line": line.number, "custom_id": line.custom_id,
             "job_id": new_job_id(), "body": line.request.model_dump(mode="json",
                                                                     exclude_none=True)}
            for line in lines]
    await asyncio.to_thread(batch_store.create_batch, state.engine,
                            {**batch, "status": "validating"}, jobs)
    try:
        await asyncio.to_thread(_submit, state, caller, batch_id, body.endpoint, lines,
                                [j["job_id"] for j in jobs], window)
    except JobValidationError as exc:
        number = _line_of(exc, lines)
        await asyncio.to_thread(
            batch_store.set_batch, state.engine, batch_id, ("validating",),
            status="failed", failed_at=now,
            errors=[LineError(number, exc.message.split(".", 1)[-1], "invalid_value",
                              f"body.{(exc.field or '').split('.', 1)[-1]}").as_openai()])
        return await _current(state, caller, batch_id)
    await asyncio.to_thread(batch_store.set_batch, state.engine, batch_id, ("validating",),
                            status="in_progress", in_progress_at=dt.datetime.now(dt.UTC))
    return await _current(state, caller, batch_id)


async def _refused(state: ApiState, batch: dict[str, Any], errors: list[LineError],
                   now: dt.datetime) -> dict[str, Any]:
    row = {**batch, "status": "failed", "failed_at": now,
           "errors": [e.as_openai() for e in errors]}
    await asyncio.to_thread(batch_store.create_batch, state.engine, row, [])
    found = await asyncio.to_thread(batch_store.get_batch, state.engine, batch["key_id"],
                                    batch["id"])
    assert found is not None
    return _batch(found)


def _line_of(exc: JobValidationError, lines: list[InputLine]) -> int:
    """The input line of ``jobs[i].field`` (submit_many's naming)."""
    head = (exc.field or "").split(".", 1)[0]
    try:
        return lines[int(head.removeprefix("jobs[").removesuffix("]"))].number
    except (ValueError, IndexError):
        return lines[0].number


def _submit(state: ApiState, caller: Any, batch_id: str, endpoint: str,
            lines: list[InputLine], job_ids: list[str], window: float) -> None:
    """Send each line's job (all validated before any is sent, for chat); answers the
    cache gave at submit are left where the outcomes are read."""
    admission = admission_fields(caller, None)
    common = {"agent": caller.agent, "user": caller.user, "deadline": window, **admission}
    if endpoint == "/v1/embeddings":
        for line, job_id in zip(lines, job_ids, strict=True):
            body = line.request
            state.client.embed(body.input, dimensions=body.dimensions, job_id=job_id,
                               metadata={"batch_id": batch_id},
                               **resolve_model(state.fleet, body.model, embedding=True),
                               **common)
        return
    specs = []
    for line, job_id in zip(lines, job_ids, strict=True):
        body = line.request
        options = job_options(body)
        options["metadata"] = {**options.get("metadata", {}), "batch_id": batch_id}
        specs.append({"messages": [m.model_dump(mode="json", exclude_none=True)
                                   for m in body.messages], "job_id": job_id,
                      **resolve_model(state.fleet, body.model, embedding=False),
                      **options, **common})
    handle = state.client.submit_many(specs)
    for result in handle.answered.values():
        idempotency.publish_answer(state.redis, result)


async def _current(state: ApiState, caller: Any, batch_id: str) -> dict[str, Any]:
    """The batch as it stands: an open one's counts from its jobs' outcomes, written up
    (output and error files) once every job ended."""
    row = await asyncio.to_thread(batch_store.get_batch, state.engine, caller.key_id,
                                  batch_id)
    if row is None:
        raise _not_found("batch", batch_id)
    if row["status"] not in _OPEN:
        return _batch(row)
    return await asyncio.to_thread(_refresh, state, row)


def _refresh(state: ApiState, row: RowMapping) -> dict[str, Any]:
    jobs = batch_store.batch_jobs(state.engine, row["id"])
    outcomes = read_outcomes(state.redis, [j["job_id"] for j in jobs])
    now = dt.datetime.now(dt.UTC)
    cancelling = row["status"] == "cancelling"
    give_up = cancelling and row["cancelling_at"] is not None and (
        now - row["cancelling_at"]).total_seconds() >= CANCEL_GRACE_S
    counts = tally(jobs, outcomes, cancelled=give_up)
    if counts.pending:
        return _batch({**dict(row), "completed": counts.completed, "failed": counts.failed})
    files, values = [], {"completed": counts.completed, "failed": counts.failed,
                         "finalizing_at": now}
    for column, lines in (("output_file_id", counts.output), ("error_file_id", counts.errors)):
        if lines:
            file_id = batch_store.new_id("file-")
            files.append((file_id, f"{row['id']}_{column.split('_')[0]}.jsonl",
                          ("\n".join(lines) + "\n").encode()))
            values[column] = file_id
    status = "cancelled" if cancelling else "completed"
    batch_store.set_batch(state.engine, row["id"], (row["status"],), files,
                          status=status, **{f"{status}_at": now}, **values)
    found = batch_store.get_batch(state.engine, row["key_id"], row["id"])
    assert found is not None
    return _batch(found)


@router.get("/batches/{batch_id}")
async def get_batch(batch_id: str, request: Request, caller: Caller) -> dict[str, Any]:
    return await _current(state_of(request), caller, batch_id)


@router.get("/batches")
async def list_batches(request: Request, caller: Caller, after: str | None = None,
                       limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict[str, Any]:
    """The key's batches, newest first; ``after`` a batch id, for the next page."""
    state = state_of(request)
    rows = await asyncio.to_thread(batch_store.list_batches, state.engine, caller.key_id,
                                   after, limit + 1)
    data = [await _current(state, caller, row["id"]) if row["status"] in _OPEN
            else _batch(row) for row in rows[:limit]]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(rows) > limit}


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, request: Request, caller: Caller) -> dict[str, Any]:
    """Cancel the batch's jobs that have not ended (``JobHandle.cancel``); it is
    ``cancelling`` until they have (a few seconds at most), then ``cancelled``."""
    state = state_of(request)
    row = await asyncio.to_thread(batch_store.get_batch, state.engine, caller.key_id,
                                  batch_id)
    if row is None:
        raise _not_found("batch", batch_id)
    if row["status"] in ("cancelling", "cancelled"):
        return _batch(row)
    if row["status"] != "in_progress":
        raise ApiError(409, f"batch {batch_id} is {row['status']}: only a batch in "
                       "progress can be cancelled", code="batch_not_cancellable")
    await asyncio.to_thread(_cancel, state, row)
    return await _current(state, caller, batch_id)


def _cancel(state: ApiState, row: RowMapping) -> None:
    if not batch_store.set_batch(state.engine, row["id"], ("in_progress",),
                                 status="cancelling", cancelling_at=dt.datetime.now(dt.UTC)):
        return
    jobs = batch_store.batch_jobs(state.engine, row["id"])
    ended = read_outcomes(state.redis, [j["job_id"] for j in jobs])
    for job in jobs:
        if job["job_id"] not in ended:
            JobHandle(state.client, job["job_id"]).cancel()
