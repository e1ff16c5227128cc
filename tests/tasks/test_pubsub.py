"""Channels: one pub/sub connection fans messages out to many watchers."""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as aioredis

from tasks._pubsub import Channels


def test_many_watchers_share_one_pubsub_connection(redis_url: str) -> None:
    async def scenario() -> None:
        client = aioredis.from_url(redis_url)
        channels = Channels(client)

        async def watch(channel: str) -> None:
            async with channels.watch(channel):
                await asyncio.sleep(0.05)

        try:
            # When 30 watchers of 30 channels start at the same moment
            await asyncio.gather(*(watch(f"llmfleet:test:{uuid.uuid4().hex}")
                                   for _ in range(30)))
            # Then they took one connection, not one each (redis-py's PubSub takes its
            # connection without a lock)
            assert len(client.connection_pool._in_use_connections) <= 1
        finally:
            await channels.close()
            await client.aclose()

    asyncio.run(scenario())


def test_a_message_wakes_every_watcher_of_its_channel(redis_url: str) -> None:
    async def scenario() -> None:
        client = aioredis.from_url(redis_url)
        channels = Channels(client)
        channel = f"llmfleet:test:{uuid.uuid4().hex}"
        try:
            async with channels.watch(channel) as first, channels.watch(channel) as second:
                await asyncio.sleep(0.1)  # subscribed
                await client.publish(channel, "done")
                await asyncio.wait_for(asyncio.gather(first.wait(), second.wait()), 5)
        finally:
            await channels.close()
            await client.aclose()

    asyncio.run(scenario())
