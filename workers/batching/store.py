"""The batcher's state in Postgres (``provider_batches``, ``provider_batch_jobs``): each
waiting job with its payload and deadline, each batch with its provider's id, so that a
batcher restarted at any moment finds every batch in flight and every job's place."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import provider_batch_jobs as jobs_table
from schemas.tables import provider_batches as batches_table

__all__ = ["BatchRow", "BatchStore", "Group", "WaitingJob"]


@dataclass(frozen=True, slots=True)
class WaitingJob:
    job_id: str
    payload: dict[str, Any]
    tier: str
    model: str


@dataclass(frozen=True, slots=True)
class Group:
    """The jobs waiting for one model of one provider."""

    provider: str
    model: str
    count: int
    oldest: dt.datetime


@dataclass(frozen=True, slots=True)
class BatchRow:
    id: str
    provider: str
    model: str
    wire_model: str
    status: str
    provider_batch_id: str | None


class BatchStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def add_waiting(self, job: WaitingJob, provider: str, deadline_at: dt.datetime
                          ) -> None:
        """Record a job as waiting; a second delivery of it changes nothing."""
        row = {"job_id": job.job_id, "provider": provider, "model": job.model,
               "tier": job.tier, "payload": job.payload, "state": "waiting",
               "deadline_at": deadline_at, "created_at": dt.datetime.now(dt.UTC)}
        async with self.engine.begin() as connection:
            await connection.execute(insert(jobs_table).values(row)
                                     .on_conflict_do_nothing(index_elements=["job_id"]))

    async def overdue(self, by: dt.datetime) -> list[WaitingJob]:
        """Unanswered jobs whose deadline less the margin (``by``) has come."""
        query = select(jobs_table.c.job_id, jobs_table.c.payload, jobs_table.c.tier,
                       jobs_table.c.model).where(
            jobs_table.c.state.in_(("waiting", "submitted")), jobs_table.c.deadline_at <= by)
        return await self._jobs(query)

    async def groups(self) -> list[Group]:
        query = (select(jobs_table.c.provider, jobs_table.c.model, func.count(),
                        func.min(jobs_table.c.created_at))
                 .where(jobs_table.c.state == "waiting")
                 .group_by(jobs_table.c.provider, jobs_table.c.model))
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [Group(r[0], r[1], int(r[2]), r[3]) for r in rows]

    async def open_batch(self, group: Group, wire_model: str, max_items: int) -> str | None:
        """A new batch row (``submitting``) holding up to ``max_items`` of the group's
        waiting jobs, in one transaction; None when none waits any more."""
        batch_id = uuid.uuid4().hex
        async with self.engine.begin() as connection:
            chosen = (select(jobs_table.c.job_id)
                      .where(jobs_table.c.state == "waiting",
                             jobs_table.c.provider == group.provider,
                             jobs_table.c.model == group.model)
                      .order_by(jobs_table.c.deadline_at).limit(max_items)
                      .with_for_update(skip_locked=True))
            ids = [r[0] for r in (await connection.execute(chosen)).all()]
            if not ids:
                return None
            await connection.execute(batches_table.insert().values(
                id=batch_id, provider=group.provider, model=group.model, wire_model=wire_model,
                status="submitting", items=len(ids), created_at=dt.datetime.now(dt.UTC)))
            await connection.execute(update(jobs_table).where(jobs_table.c.job_id.in_(ids))
                                     .values(batch_id=batch_id, state="submitted"))
        return batch_id

    async def batches(self, status: str) -> list[BatchRow]:
        query = (select(batches_table.c.id, batches_table.c.provider, batches_table.c.model,
                        batches_table.c.wire_model, batches_table.c.status,
                        batches_table.c.provider_batch_id)
                 .where(batches_table.c.status == status)
                 .order_by(batches_table.c.created_at))
        async with self.engine.connect() as connection:
            return [BatchRow(*r) for r in (await connection.execute(query)).all()]

    async def jobs_of(self, batch_id: str) -> list[WaitingJob]:
        """The batch's jobs still waiting for its answer."""
        return await self._jobs(
            select(jobs_table.c.job_id, jobs_table.c.payload, jobs_table.c.tier,
                   jobs_table.c.model)
            .where(jobs_table.c.batch_id == batch_id, jobs_table.c.state == "submitted"))

    async def set_batch(self, batch_id: str, **values: Any) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(update(batches_table)
                                     .where(batches_table.c.id == batch_id).values(**values))

    async def mark(self, job_ids: list[str], state: str, reason: str | None = None) -> None:
        """Jobs answered (``done``) or sent live; never a job already ended either way."""
        if not job_ids:
            return
        async with self.engine.begin() as connection:
            await connection.execute(
                update(jobs_table).where(and_(jobs_table.c.job_id.in_(job_ids),
                                              jobs_table.c.state.in_(("waiting", "submitted"))))
                .values(state=state, reason=reason))

    async def _jobs(self, query: Any) -> list[WaitingJob]:
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [WaitingJob(r[0], r[1], r[2], r[3]) for r in rows]
