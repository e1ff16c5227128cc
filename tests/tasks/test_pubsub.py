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


def test_a_watcher_after_an_idle_spell_is_woken_at_once(redis_url: str) -> None:
    async def scenario() -> list[float]:
        client = aioredis.from_url(redis_url)
        channels = Channels(client)
        delays: list[float] = []
        try:
            for _ in range(5):  # each time after nobody watched for a while
                await asyncio.sleep(1.2)  # past the reader's one-second read timeout
                channel = f"llmfleet:test:{uuid.uuid4().hex}"
                async with channels.watch(channel) as event:
                    sent = asyncio.get_running_loop().time()
                    await client.publish(channel, "done")
                    await asyncio.wait_for(event.wait(), 5)
                    delays.append(asyncio.get_running_loop().time() - sent)
        finally:
            await channels.close()
            await client.aclose()
        return delays

    # Then the message arrives in milliseconds, not after a polling interval
    delays = sorted(asyncio.run(scenario()))
    assert delays[len(delays) // 2] < 0.015, delays
