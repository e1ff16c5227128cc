"""The client's own job messages: what a worker reads is what Celery would have sent,
and the single-job send looks the cache up in the same round trip."""

from __future__ import annotations

import base64
import json
import uuid

import redis
from celery import Celery

from schemas import FleetConfig
from tasks._wire import JobWire, job_message
from tasks.celery_config import celery_settings
from tasks.names import COMPLETE, COMPLETE_BATCH, args_summary


def _celery_message(redis_url: str, fleet: FleetConfig, task: str, args: list[object],
                    task_id: str, queue: str) -> dict[str, object]:
    app = Celery("wire-test", set_as_current=False)
    app.conf.update(celery_settings(redis_url, redis_url, fleet))
    app.conf.result_backend = None
    try:
        app.send_task(task, args=args, queue=queue, task_id=task_id,
                      argsrepr=args_summary(args), kwargsrepr="{}")
    finally:
        app.close()
    raw = redis.Redis.from_url(redis_url).rpop(queue)
    assert isinstance(raw, bytes)
    decoded: dict[str, object] = json.loads(raw)
    return decoded


def test_a_job_message_is_the_message_celery_sends(redis_url: str, fleet: FleetConfig
                                                    ) -> None:
    queue = f"llm.wire-{uuid.uuid4().hex[:8]}"
    for task, args in ((COMPLETE, [{"job_id": "j-0001", "agent": "coder", "x": "é\u2028"}]),
                       (COMPLETE_BATCH, [[{"job_id": "j-0002"}, {"job_id": "j-0003"}]])):
        task_id = uuid.uuid4().hex
        theirs = _celery_message(redis_url, fleet, task, args, task_id, queue)
        ours = json.loads(job_message(task, args, task_id, queue, args_summary(args)))
        # Every field but the two that are random per message, or a result's address
        for message in (theirs, ours):
            properties = message["properties"]
            assert isinstance(properties, dict)
            properties.pop("delivery_tag")
            properties.pop("reply_to", None)
        their_body = json.loads(base64.b64decode(str(theirs.pop("body"))))
        our_body = json.loads(base64.b64decode(ours.pop("body")))
        assert our_body == their_body
        assert ours == theirs


def test_send_unless_cached_answers_from_the_cache_or_sends(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    wire = JobWire(redis.Redis.from_url(redis_url))
    queue, key = f"llm.wire-{uuid.uuid4().hex[:8]}", f"test:cache:{uuid.uuid4().hex}"
    try:
        # A miss: the message is on the queue, nothing comes back
        assert wire.send_unless_cached(key, COMPLETE, [{"job_id": "j-1"}], queue, "j-1") is None
        assert client.llen(queue) == 1
        # A hit: the entry comes back and nothing more is queued
        client.set(key, b'{"cached": true}')
        found = wire.send_unless_cached(key, COMPLETE, [{"job_id": "j-2"}], queue, "j-2")
        assert found == b'{"cached": true}'
        assert client.llen(queue) == 1
        assert wire.cached([key, key + ":none"]) == [b'{"cached": true}', None]
    finally:
        client.delete(queue, key)
        wire.close()
        client.close()
