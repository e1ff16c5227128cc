"""The ledger step leaves one row per job whatever fails inside it, mapped or not."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis

from schemas import CompletionJob, ProviderBadRequestError, load_fleet_config
from schemas.keys import LEDGER_SPOOL
from workers.accounting.ledger import LedgerStep
from workers.pipeline.deadline import Deadline
from workers.pipeline.steps import JobContext, Result, compose

FLEET = load_fleet_config()


def _context() -> JobContext:
    job = CompletionJob(messages=[{"role": "user", "content": "hi"}], tier="simple")
    return JobContext(job=job, fleet=FLEET, tier="simple", chain=FLEET.chain("simple"),
                      prompt_tokens=3, max_tokens=8, deadline=Deadline(at=None))


@pytest.mark.parametrize(("raised", "status", "error"), [
    (KeyError("a bug of ours"), "failed", "KeyError"),
    (OverflowError("date value out of range"), "failed", "OverflowError"),
    (ProviderBadRequestError("p: m: HTTP 400: no", provider="p", model="m"), "failed",
     "ProviderBadRequestError"),
])
def test_every_failure_leaves_one_row_named_by_its_class(redis_url: str, raised: Exception,
                                                        status: str, error: str) -> None:
    async def scenario() -> dict[str, object]:
        client = aioredis.from_url(redis_url)
        try:
            async def inner(ctx: JobContext) -> Result:
                raise raised

            ctx = _context()
            # Given a job whose inner layers raise; When it runs through the ledger step
            with pytest.raises(type(raised)):
                await compose([LedgerStep()], inner)(ctx)
            await ctx.outbox.send(client)  # as the job's body sends it, at its end
            # Then its row is at the spool's tail, failed, under the error's class name
            raws = [r for r in await client.lrange(LEDGER_SPOOL, -20, -1)
                    if json.loads(r)["job_id"] == ctx.job.job_id]
            assert len(raws) == 1
            await client.lrem(LEDGER_SPOOL, 1, raws[0])  # the shared spool stays as it was
            row: dict[str, object] = json.loads(raws[0])
            return row
        finally:
            await client.aclose()

    row = asyncio.run(scenario())
    assert (row["status"], row["error"]) == (status, error)
    # a bug's message may quote anything: it is not kept
    assert "a bug of ours" not in str(row["error_message"])
