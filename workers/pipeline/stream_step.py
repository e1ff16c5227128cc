"""The stream of a streamed job, around the rest of its pipeline: the chain writes the
provider's deltas as they come; an answer that came whole (a cache hit, an identical job
followed) is written as a few chunks; either way the last chunk carries the job's
outcome, error included, so every reader ends."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from schemas import (
    CompletionJob,
    CompletionResult,
    FleetError,
    ToolCallChunk,
    WorkerError,
    encode_error,
    encode_result,
    split_answer,
)
from workers.pipeline.steps import Handler, JobContext, Result, Step
from workers.pipeline.streams import StreamSink

__all__ = ["StreamStep"]


class StreamStep(Step):
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def __call__(self, ctx: JobContext, call_next: Handler) -> Result:
        job = ctx.job
        if not isinstance(job, CompletionJob) or not job.stream:
            return await call_next(ctx)
        sink = ctx.sink = StreamSink(self._redis, job.job_id)
        try:
            result = await call_next(ctx)
        except FleetError as exc:
            await sink.finish(encode_error(exc), None)
            raise
        except asyncio.CancelledError:
            await sink.close()  # the worker stops: the redelivery writes the stream
            raise
        except Exception:
            await sink.finish(encode_error(WorkerError("the job failed in the worker")), None)
            raise
        assert isinstance(result, CompletionResult)
        if not sink.written:
            _replay(sink, result)
        await sink.finish(encode_result(result.labelled(job.metadata)), result.finish_reason)
        return result


def _replay(sink: StreamSink, result: CompletionResult) -> None:
    """An answer that came whole, as a stream of a few chunks."""
    for piece in split_answer(result.content):
        sink.put(piece)
    for index, call in enumerate(result.tool_calls or ()):
        sink.put(tool_calls=[ToolCallChunk(index=index, id=call.id, name=call.name,
                                           arguments=call.function.arguments)])
