"""The one way admin and housekeeping bodies reach Postgres: the worker's engine on
``DATABASE_URL``, and every outcome as an envelope the client turns back into its typed
error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from schemas import FleetError, WorkerError, encode_error
from workers.runtime import WorkerRuntime, get_runtime
from workers.store.engines import sync_engine

__all__ = ["database_envelope", "with_ledger"]


def database_envelope(work: Callable[[Engine], Any], *, missing: FleetError) -> dict[str, Any]:
    """Run ``work`` against the fleet's database; every outcome an envelope (``missing``
    when no DATABASE_URL is set)."""
    url = get_runtime().settings.database_url
    if not url:
        return encode_error(missing)
    try:
        return {"ok": True, "result": work(sync_engine(url))}
    except FleetError as exc:
        return encode_error(exc)
    except SQLAlchemyError as exc:
        return encode_error(WorkerError(f"the database failed: {type(exc).__name__}"))


def with_ledger(work: Callable[[WorkerRuntime, Engine], dict[str, Any]]) -> dict[str, Any]:
    """Run a housekeeping body against the ledger; skipped without a database or with
    cost tracking off (there is no ledger to read)."""
    runtime = get_runtime()
    url = runtime.settings.database_url
    if not url or not runtime.settings.enable_cost_tracking:
        return {"skipped": "cost tracking is off or DATABASE_URL is unset"}
    return work(runtime, sync_engine(url))
