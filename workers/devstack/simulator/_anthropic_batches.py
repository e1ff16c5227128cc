"""Anthropic's Message Batches: create, retrieve, list, cancel, delete, and results.

A batch is `in_progress`, then `ended` (or `canceling` first, after a cancel);
`request_counts` tally processing, succeeded, errored, canceled and expired
requests. The requests' `params` are checked only when each is processed, as
Anthropic does: an invalid one ends `errored` with the Messages API's error body.
Once ended, `results_url` serves JSONL lines `{"custom_id", "result": {...}}` of type
succeeded (the message), errored (the error), canceled or expired, in the order the
requests finished.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime

from aiohttp import web

from ._batch_run import bring_up, draw_expiry, draw_failures, int_query
from ._batches import Batch, Item
from ._config import SimState
from ._protocol import Json, Reject, read_body
from ._tools import new_id

MAX_REQUESTS = 100_000
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _bad(message: str) -> Reject:
    return Reject(400, message)


def _items_of(body: Json) -> list[Item]:
    """The batch's requests, refused as Anthropic refuses them at creation."""
    for name in body:
        if name != "requests":
            raise _bad(f"{name}: Extra inputs are not permitted")
    requests = body.get("requests")
    if not isinstance(requests, list):
        raise _bad("requests: Field required" if requests is None
                   else "requests: Input should be a valid list")
    if not 1 <= len(requests) <= MAX_REQUESTS:
        bound = "at least 1" if not requests else f"at most {MAX_REQUESTS}"
        raise _bad(f"requests: List should have {bound} items after validation, "
                   f"not {len(requests)}")
    items: list[Item] = []
    seen: set[str] = set()
    for index, request in enumerate(requests):
        at = f"requests.{index}"
        if not isinstance(request, dict):
            raise _bad(f"{at}: Input should be a valid dictionary")
        extra = [k for k in request if k not in ("custom_id", "params")]
        if extra:
            raise _bad(f"{at}.{extra[0]}: Extra inputs are not permitted")
        custom_id, params = request.get("custom_id"), request.get("params")
        if not isinstance(custom_id, str) or not _CUSTOM_ID.match(custom_id):
            raise _bad(f"{at}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        if not isinstance(params, dict):
            raise _bad(f"{at}.params: Input should be a valid dictionary")
        if custom_id in seen:
            raise _bad(f"{at}.custom_id: Duplicate custom_id '{custom_id}': each request in a "
                       "batch must have a unique custom_id.")
        seen.add(custom_id)
        items.append(Item(custom_id, params))
    return items


async def create(request: web.Request, state: SimState) -> web.Response:
    """POST /v1/messages/batches."""
    items = _items_of(await read_body(request))
    for item, fail in zip(items, draw_failures(state, len(items)), strict=True):
        item.fail = fail
    batch = state.batches.create(new_id("msgbatch_", 24), items,
                                 {"fmt": "anthropic", "endpoint": "/v1/messages"},
                                 duration_s=state.config.batch_completion_s,
                                 expire=draw_expiry(state), draws=state.batch_draws())
    return web.json_response(_render(state, bring_up(state, batch, "anthropic"), request))


def _find(state: SimState, request: web.Request) -> Batch:
    batch_id = request.match_info["batch_id"]
    batch = state.batches.get(batch_id, "anthropic")
    if batch is None:
        raise Reject(404, f"message_batch {batch_id!r} not found")
    return bring_up(state, batch, "anthropic")


async def retrieve(request: web.Request, state: SimState) -> web.Response:
    """GET /v1/messages/batches/{batch_id}."""
    return web.json_response(_render(state, _find(state, request), request))


async def listing(request: web.Request, state: SimState) -> web.Response:
    """GET /v1/messages/batches?after_id=&before_id=&limit=: newest first."""
    limit = int_query(request, "limit", 20, 1000)
    after, before = request.query.get("after_id"), request.query.get("before_id")
    page = state.batches.page("anthropic", limit, after=after, before=before)
    if page is None:
        raise Reject(404, f"message_batch {after or before!r} not found")
    batches, more = page
    data = [_render(state, bring_up(state, b, "anthropic"), request) for b in batches]
    return web.json_response({"data": data, "has_more": more,
                              "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None})


async def cancel(request: web.Request, state: SimState) -> web.Response:
    """POST /v1/messages/batches/{batch_id}/cancel: canceling, then ended."""
    batch = _find(state, request)
    if batch.ended_at is not None:
        raise _bad(f"Batch {batch.id} has already ended and cannot be canceled.")
    if batch.cancel_at is None:
        batch.cancel_at = time.time()
    return web.json_response(_render(state, batch, request))


async def delete(request: web.Request, state: SimState) -> web.Response:
    """DELETE /v1/messages/batches/{batch_id}: an ended batch only."""
    batch = _find(state, request)
    if batch.ended_at is None:
        raise _bad(f"Batch {batch.id} cannot be deleted while it is processing; "
                   "cancel it first.")
    del state.batches.batches[batch.id]
    return web.json_response({"id": batch.id, "type": "message_batch_deleted"})


def _result(item: Item) -> Json:
    if item.outcome == "succeeded":
        return {"type": "succeeded", "message": item.response}
    if item.outcome == "errored":
        return {"type": "errored", "error": item.response}
    return {"type": item.outcome}


async def results(request: web.Request, state: SimState) -> web.Response:
    """GET /v1/messages/batches/{batch_id}/results: JSONL, once the batch has ended."""
    batch = _find(state, request)
    if batch.ended_at is None:
        raise _bad(f"Batch {batch.id} has not finished processing; its results are not "
                   "available yet.")
    lines = [json.dumps({"custom_id": item.custom_id, "result": _result(item)},
                        ensure_ascii=False, separators=(",", ":"))
             for item in batch.finished()]
    body = "".join(line + "\n" for line in lines).encode()
    return web.Response(body=body, content_type="application/binary")


def _time(when: float | None) -> str | None:
    """RFC 3339, as Anthropic writes it: 2024-08-20T18:37:24.100435Z."""
    if when is None:
        return None
    stamp = datetime.fromtimestamp(when, UTC).isoformat(timespec="microseconds")
    return stamp.replace("+00:00", "Z")


def _render(state: SimState, batch: Batch, request: web.Request) -> Json:
    """The MessageBatch object as it stands now."""
    counts = batch.counts()
    ended = batch.ended_at is not None
    status = "ended" if ended else "canceling" if batch.cancel_at is not None else "in_progress"
    url = f"{request.url.origin()}/v1/messages/batches/{batch.id}/results"
    return {
        "id": batch.id, "type": "message_batch", "processing_status": status,
        "request_counts": {"processing": len(batch.items) - sum(counts.values()), **counts},
        "ended_at": _time(batch.ended_at), "created_at": _time(batch.created),
        "expires_at": _time(batch.expires), "archived_at": None,
        "cancel_initiated_at": _time(batch.cancel_at),
        "results_url": url if ended else None,
    }
