"""Handles of submitted jobs: wait for one result, or a batch's in order.

A handle turns the job's JSON envelope back into its result, or raises its error from
``schemas.errors``; a job that asked for a pydantic ``response_model`` gets its ``parsed``
answer as an instance of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from schemas import (
    CompletionResult,
    FleetError,
    OutputValidationError,
    decode_outcome,
)
from tasks._streams import ChunkStream, replayed

if TYPE_CHECKING:
    from tasks.client import FleetClient

__all__ = ["BatchHandle", "JobHandle"]


class JobHandle:
    """A submitted job. ``get`` blocks for the result; ``wait`` is its coroutine twin.
    A job answered from the cache at submit carries its ``result`` already."""

    def __init__(self, client: FleetClient, job_id: str,
                 result: CompletionResult | None = None,
                 response_model: type[BaseModel] | None = None) -> None:
        self._client = client
        self.job_id = job_id
        self._result = result
        self._model = response_model

    def get(self, timeout: float | None = 60) -> Any:
        """The job's result; raises the job's error from ``schemas.errors``."""
        if self._result is not None:
            return as_model(self._result, self._model)
        return as_model(decode_outcome(self._client._waiter.wait(self.job_id, timeout)),
                        self._model)

    async def wait(self, timeout: float | None = 60) -> Any:
        if self._result is not None:
            return as_model(self._result, self._model)
        return as_model(decode_outcome(await self._client._waiter.await_(self.job_id, timeout)),
                        self._model)

    def stream(self, timeout: float | None = 60, after: int = -1) -> ChunkStream:
        """A streamed job's chunks as they are written (a sync and an async iterator),
        from position ``after``; ``.result`` once it ended. Closing it early cancels the
        job. ``timeout``: the longest wait for a chunk."""
        if self._result is not None:  # answered from the cache at submit: replayed
            result = self._result
            return ChunkStream(self.job_id, lambda: replayed(result),
                               self._client._waiter.loop, lambda: None)
        return ChunkStream(self.job_id,
                           lambda: self._client._waiter.chunks(self.job_id, timeout, after),
                           self._client._waiter.loop, self.cancel)

    def cancel(self) -> None:
        """Cancel the job: refused if it has not started, stopped (within a second) if
        it has; its waiters get JobCancelledError. A job that finished stays finished."""
        self._client._cancel(self.job_id)

    def __repr__(self) -> str:
        return f"<JobHandle {self.job_id}>"


class BatchHandle:
    """Jobs submitted together; ``get`` returns their results in submission order."""

    def __init__(self, client: FleetClient, job_ids: list[str],
                 hits: dict[int, CompletionResult] | None = None):
        self._client = client
        self.job_ids = job_ids
        self._hits = hits or {}  # answered by the cache at submit, by position

    @property
    def answered(self) -> dict[int, CompletionResult]:
        """The jobs the cache answered at submit (never sent to a worker), by position."""
        return dict(self._hits)

    def get(self, timeout: float | None = 60, *, return_exceptions: bool = False) -> list[Any]:
        """Results in order. The first failed job raises its error, unless
        ``return_exceptions``, which puts each error in its job's place. Each job's
        outcome comes on its own (a job that waited for a limit comes later)."""
        results: list[Any] = [None] * len(self.job_ids)
        for position, job_id in enumerate(self.job_ids):
            if position in self._hits:
                results[position] = self._hits[position]
                continue
            try:
                results[position] = decode_outcome(self._client._waiter.wait(job_id, timeout))
            except FleetError as exc:
                if not return_exceptions:
                    raise
                results[position] = exc
        return results


def as_model(result: Any, model: type[BaseModel] | None) -> Any:
    """``result`` with its parsed answer as an instance of ``model`` (when one was asked
    for): the worker checked the JSON against the model's schema already, so this only
    builds the object; a model whose own validators refuse it raises
    OutputValidationError."""
    if model is None or not isinstance(result, CompletionResult) or result.parsed is None:
        return result
    try:
        return result.model_copy(update={"parsed": model.model_validate(result.parsed)})
    except ValidationError as exc:
        raise OutputValidationError(
            f"the answer is not a valid {model.__name__}: {exc.errors()[0]['msg']}",
            model=result.model, provider=result.provider, detail=str(exc)[:500]) from None
