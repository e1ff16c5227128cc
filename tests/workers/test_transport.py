"""The workers' broker transport: kombu's Redis channel keeping one synchronous client
instead of building one per command, yet following its pool when it is replaced."""

from __future__ import annotations

import uuid

from celery import Celery

from schemas import FleetConfig
from workers.app import (
    FleetRedisTransport,
    FleetSentinelTransport,
    create_app,
    use_fleet_transport,
)


def _app(redis_url: str, fleet: FleetConfig) -> Celery:
    app = create_app(redis_url, fleet)
    use_fleet_transport(app, redis_url)
    return app


def test_a_channel_keeps_one_client_and_follows_its_pool(redis_url: str,
                                                         fleet: FleetConfig) -> None:
    app = _app(redis_url, fleet)
    with app.connection_for_read() as connection:
        assert isinstance(connection.transport, FleetRedisTransport)
        channel = connection.channel()
        try:
            first = channel._create_client()
            assert channel._create_client() is first
            # It works: a message put and taken through the channel's own commands
            queue = f"llm.transport-{uuid.uuid4().hex[:8]}"
            channel._put(queue, {"body": "x", "properties": {"delivery_tag": "t"}})
            assert channel._size(queue) == 1
            channel._purge(queue)
            # A replaced pool (kombu drops it when a connection fails): a new client
            channel._pool = None
            second = channel._create_client()
            assert second is not first and second.connection_pool is channel.pool
            assert channel._create_client(asynchronous=True) is not second
        finally:
            channel.close()
    app.close()


def test_sentinel_urls_get_the_sentinel_transport(fleet: FleetConfig) -> None:
    app = _app("sentinel://127.0.0.1:26399/0", fleet)
    assert app.conf.broker_transport.endswith(":FleetSentinelTransport")
    assert app.connection_for_read().transport_cls == (
        f"{FleetSentinelTransport.__module__}:{FleetSentinelTransport.__name__}")
    app.close()
