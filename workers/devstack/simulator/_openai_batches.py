"""OpenAI's Batch API: create, retrieve, list and cancel batches of an uploaded file.

A batch goes validating -> in_progress -> finalizing -> completed, or ends failed
(its file's lines refused at validation: `errors.data` names each line's problem
with OpenAI's codes), expired or, after a cancel, cancelling -> cancelled (_batches.py
has the clock). When it ends it writes its output file (lines of the requests that
succeeded) and its error file (requests answered with an HTTP error, as `response`
with their status; requests never run, as `error` with batch_expired or
batch_cancelled); either is null when it would be empty. Lines come in the order the
requests finished, not the file's.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from aiohttp import web

from ._batch_run import bring_up, draw_expiry, draw_failures, int_query
from ._batches import Batch, Item
from ._config import SimState
from ._openai_files import find_file, store_file
from ._protocol import Json, Reject, read_body

MAX_REQUESTS = 50_000
ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
_FIELDS = frozenset({"input_file_id", "endpoint", "completion_window", "metadata",
                     "output_expires_after"})
_LINE_FIELDS = ("custom_id", "method", "url", "body")
_STATUSES = {"completed": "completed", "cancelled": "cancelled", "expired": "expired",
             "failed": "failed"}
_NOT_RUN = {
    "expired": ("batch_expired",
                "This request could not be executed before the completion window expired."),
    "canceled": ("batch_cancelled",
                 "This request was not executed because the batch was cancelled."),
}


def _problem(code: str, message: str, line: int | None, param: str | None = None) -> Json:
    return {"code": code, "message": message, "param": param, "line": line}


def _check_line(number: int, text: str, endpoint: str, seen: set[str]) -> Json | Item:
    """One line of the input file: its Item, or the problem validation reports."""
    try:
        line = json.loads(text)
    except ValueError:
        line = None
    if not isinstance(line, dict):
        return _problem("invalid_json_line", "This line is not parseable as valid JSON.", number)
    for name in _LINE_FIELDS:
        if name not in line:
            return _problem("missing_required_parameter",
                            f"Missing required parameter: '{name}'.", number, name)
    custom_id, body = line["custom_id"], line["body"]
    if not isinstance(custom_id, str) or not custom_id:
        return _problem("invalid_request", "custom_id must be a non-empty string.", number,
                        "custom_id")
    if line["method"] != "POST":
        return _problem("invalid_method", "The method for this request must be 'POST'.",
                        number, "method")
    if line["url"] != endpoint:
        return _problem("url_mismatch", "The URL provided for this request does not match "
                        "the batch endpoint.", number, "url")
    if not isinstance(body, dict):
        return _problem("invalid_request", "body must be a JSON object.", number, "body")
    if custom_id in seen:
        return _problem("duplicate_custom_id", "The custom_id for this request is a duplicate "
                        "of another request. The custom_id parameter must be unique for each "
                        "request in a batch.", number, "custom_id")
    seen.add(custom_id)
    return Item(custom_id, body)


def _read_file(data: bytes, endpoint: str) -> tuple[list[Item], list[Json], str | None]:
    """The file's requests, the problems validation finds in it, and its model."""
    lines = [(n, text) for n, text in enumerate(data.decode("utf-8", "replace").splitlines(), 1)
             if text.strip()]
    if not lines:
        return [], [_problem("empty_file", "The batch input file is empty.", None)], None
    if len(lines) > MAX_REQUESTS:
        return [], [_problem("too_many_tasks", f"The batch input file contains {len(lines)} "
                             f"requests, more than the {MAX_REQUESTS} allowed.", None)], None
    items: list[Item] = []
    problems: list[Json] = []
    seen: set[str] = set()
    model: str | None = None
    for number, text in lines:
        checked = _check_line(number, text, endpoint, seen)
        if isinstance(checked, dict):
            problems.append(checked)
            continue
        named = checked.body.get("model")
        if isinstance(named, str):
            if model is not None and named != model:
                problems.append(_problem("model_mismatch", "The model of this request does not "
                                         "match the other requests' in this batch: a batch "
                                         "uses one model.", number, "body.model"))
                continue
            model = named
        items.append(checked)
    return items, problems, model


def _metadata_of(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if (not isinstance(value, dict) or len(value) > 16 or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
            for k, v in value.items())):
        raise Reject(400, "metadata: at most 16 pairs of strings, keys up to 64 characters "
                          "and values up to 512.", param="metadata", code="invalid_value")
    return dict(value)


def _check_create(body: Json) -> tuple[str, str, dict[str, str] | None]:
    for name in body:
        if name not in _FIELDS:
            raise Reject(400, f"Unrecognized request argument supplied: {name}", param=name)
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(name), str):
            raise Reject(400, f"Missing required parameter: '{name}'.", param=name,
                         code="missing_required_parameter")
    endpoint, window = body["endpoint"], body["completion_window"]
    if endpoint not in ENDPOINTS:
        values = " and ".join(f"'{e}'" for e in ENDPOINTS)
        raise Reject(400, f"Invalid value: '{endpoint}'. Supported values are: {values}.",
                     param="endpoint", code="invalid_value")
    if window != "24h":
        raise Reject(400, f"Invalid value: '{window}'. Supported values are: '24h'.",
                     param="completion_window", code="invalid_value")
    return body["input_file_id"], endpoint, _metadata_of(body.get("metadata"))


async def create(request: web.Request, state: SimState) -> web.Response:
    """POST /v1/batches."""
    file_id, endpoint, metadata = _check_create(await read_body(request))
    stored = find_file(state, file_id, param="input_file_id")
    if stored.info["purpose"] != "batch":
        raise Reject(400, f"The input file {file_id} must have purpose 'batch', not "
                          f"'{stored.info['purpose']}'.", param="input_file_id")
    items, problems, model = _read_file(stored.data, endpoint)
    if problems:
        items = []
    for item, fail in zip(items, draw_failures(state, len(items)), strict=True):
        item.fail = fail
    wire = {"fmt": "openai", "endpoint": endpoint, "input_file_id": file_id, "model": model,
            "metadata": metadata,
            "errors": {"object": "list", "data": problems} if problems else None}
    config = state.config
    batch = state.batches.create(f"batch_{os.urandom(16).hex()}", items, wire,
                                 duration_s=config.batch_completion_s,
                                 expire=not problems and draw_expiry(state),
                                 draws=state.batch_draws())
    if problems:
        batch.ending = "failed"
    return web.json_response(_render(state, batch))


def _find(state: SimState, request: web.Request) -> Batch:
    batch_id = request.match_info["batch_id"]
    batch = state.batches.get(batch_id, "openai")
    if batch is None:
        raise Reject(404, f"No batch found with id '{batch_id}'.", param="batch_id")
    return batch


async def retrieve(request: web.Request, state: SimState) -> web.Response:
    """GET /v1/batches/{batch_id}."""
    return web.json_response(_render(state, _find(state, request)))


async def listing(request: web.Request, state: SimState) -> web.Response:
    """GET /v1/batches?after=&limit=: newest first."""
    limit = int_query(request, "limit", 20, 100)
    page = state.batches.page("openai", limit, after=request.query.get("after"))
    if page is None:
        raise Reject(404, f"No batch found with id '{request.query['after']}'.", param="after")
    batches, more = page
    data = [_render(state, b) for b in batches]
    return web.json_response({"object": "list", "data": data,
                              "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None, "has_more": more})


async def cancel(request: web.Request, state: SimState) -> web.Response:
    """POST /v1/batches/{batch_id}/cancel: cancelling, then cancelled."""
    batch = bring_up(state, _find(state, request), "openai")
    if batch.ending is not None:
        status = _status(batch, time.time())
        raise Reject(409, f"Cannot cancel a batch with status '{status}'.")
    if batch.cancel_at is None:
        batch.cancel_at = time.time()
    return web.json_response(_render(state, batch))


def _status(batch: Batch, now: float) -> str:
    if batch.ending is not None:
        return _STATUSES[batch.ending] if batch.ended_at is not None else "validating"
    if batch.cancel_at is not None:
        return "cancelling"
    if now < batch.start:
        return "validating"
    return "finalizing" if batch.done == len(batch.items) else "in_progress"


def _output_line(item: Item) -> Json:
    line: Json = {"id": f"batch_req_{os.urandom(16).hex()}", "custom_id": item.custom_id}
    if item.outcome in _NOT_RUN:
        code, message = _NOT_RUN[item.outcome]
        return {**line, "response": None, "error": {"code": code, "message": message}}
    response = {"status_code": item.status, "request_id": item.request_id, "body": item.response}
    return {**line, "response": response, "error": None}


def _write_outputs(state: SimState, batch: Batch) -> None:
    """The output and error files of an ended batch, once."""
    if batch.ending == "failed" or "output_file_id" in batch.wire:
        return
    lines: dict[bool, list[bytes]] = {True: [], False: []}
    for item in batch.finished():
        text = json.dumps(_output_line(item), ensure_ascii=False, separators=(",", ":"))
        lines[item.outcome == "succeeded"].append(text.encode() + b"\n")
    for ok, key, name in ((True, "output_file_id", "output"), (False, "error_file_id", "error")):
        data = b"".join(lines[ok])
        stored = store_file(state, f"{batch.id}_{name}.jsonl", "batch_output", data) if data \
            else None
        batch.wire[key] = None if stored is None else stored.info["id"]


def _usage(batch: Batch) -> Json:
    inputs = outputs = 0
    for item in batch.items:
        usage: Any = (item.response or {}).get("usage") if item.outcome == "succeeded" else None
        if isinstance(usage, dict):
            inputs += usage.get("prompt_tokens", 0)
            outputs += usage.get("completion_tokens", 0)
    return {"input_tokens": inputs, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": outputs, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": inputs + outputs}


def _render(state: SimState, batch: Batch) -> Json:
    """The Batch object as it stands now."""
    bring_up(state, batch, "openai")
    if batch.ended_at is not None:
        _write_outputs(state, batch)
    now, wire, ending, ended = time.time(), batch.wire, batch.ending, batch.ended_at
    counts = batch.counts()

    def at(when: float | None, shown: bool = True) -> int | None:
        return int(when) if when is not None and shown and when <= now else None

    running = ending != "failed"
    return {
        "id": batch.id, "object": "batch", "endpoint": wire["endpoint"], "model": wire["model"],
        "errors": wire["errors"], "input_file_id": wire["input_file_id"],
        "completion_window": "24h", "status": _status(batch, now),
        "output_file_id": wire.get("output_file_id"), "error_file_id": wire.get("error_file_id"),
        "created_at": int(batch.created), "in_progress_at": at(batch.start, running),
        "expires_at": int(batch.expires),
        "finalizing_at": at(batch.finish, running and ending in (None, "completed")
                            and batch.cancel_at is None and batch.done == len(batch.items)),
        "completed_at": at(ended, ending == "completed"),
        "failed_at": at(ended, ending == "failed"),
        "expired_at": at(ended, ending == "expired"),
        "cancelling_at": at(batch.cancel_at), "cancelled_at": at(ended, ending == "cancelled"),
        "request_counts": {"total": len(batch.items), "completed": counts["succeeded"],
                           "failed": counts["errored"]},
        "usage": _usage(batch), "metadata": wire["metadata"],
    }
