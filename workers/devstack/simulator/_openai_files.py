"""OpenAI's Files API, as far as batches need it: upload (multipart), retrieve,
content, delete; and the output and error files a batch writes when it ends.

An upload with purpose "batch" must be named *.jsonl, as OpenAI requires; its lines
are checked when a batch is created from it, not here (OpenAI accepts a file with
broken lines and fails the batch at validation).
"""

from __future__ import annotations

import time

from aiohttp import web

from ._batches import StoredFile
from ._config import SimState
from ._protocol import Json, Reject
from ._tools import new_id

_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
_BATCH_FILE_TTL_S = 30 * 24 * 3600  # files with purpose "batch" expire after 30 days


def store_file(state: SimState, filename: str, purpose: str, data: bytes) -> StoredFile:
    now = int(time.time())
    expires = now + _BATCH_FILE_TTL_S if purpose in ("batch", "batch_output") else None
    info: Json = {
        "id": new_id("file-", 22), "object": "file", "bytes": len(data), "created_at": now,
        "expires_at": expires, "filename": filename, "purpose": purpose,
        "status": "processed", "status_details": None,
    }
    stored = StoredFile(info, data)
    state.batches.files[info["id"]] = stored
    return stored


def find_file(state: SimState, file_id: str, param: str = "id") -> StoredFile:
    stored = state.batches.files.get(file_id)
    if stored is None:
        raise Reject(404, f"No such File object: {file_id}", param=param)
    return stored


async def upload(request: web.Request, state: SimState) -> web.Response:
    """POST /v1/files: multipart form with `file` and `purpose`."""
    if not request.content_type.startswith("multipart/form-data"):
        raise Reject(400, "Invalid Content-Type header (application/json), expected "
                          "multipart/form-data.")
    form = await request.post()
    purpose, upload = form.get("purpose"), form.get("file")
    if not isinstance(upload, web.FileField):
        raise Reject(400, "Missing required parameter: 'file'.", param="file",
                     code="missing_required_parameter")
    if not isinstance(purpose, str):
        raise Reject(400, "Missing required parameter: 'purpose'.", param="purpose",
                     code="missing_required_parameter")
    if purpose not in _PURPOSES:
        values = ", ".join(f"'{v}'" for v in _PURPOSES)
        raise Reject(400, f"Invalid value: '{purpose}'. Supported values are: {values}.",
                     param="purpose", code="invalid_value")
    filename = upload.filename or "upload"
    if purpose == "batch" and not filename.endswith(".jsonl"):
        raise Reject(400, "Invalid file format for Batch API. Must be .jsonl")
    return web.json_response(store_file(state, filename, purpose, upload.file.read()).info)


async def retrieve(request: web.Request, state: SimState) -> web.Response:
    """GET /v1/files/{file_id}."""
    return web.json_response(find_file(state, request.match_info["file_id"]).info)


async def content(request: web.Request, state: SimState) -> web.Response:
    """GET /v1/files/{file_id}/content: the bytes as uploaded or written."""
    stored = find_file(state, request.match_info["file_id"])
    return web.Response(body=stored.data, content_type="application/octet-stream")


async def delete(request: web.Request, state: SimState) -> web.Response:
    """DELETE /v1/files/{file_id}."""
    file_id = request.match_info["file_id"]
    find_file(state, file_id)
    del state.batches.files[file_id]
    return web.json_response({"id": file_id, "object": "file", "deleted": True})
