"""Job messages written by the fleet's own senders: Celery's task message (protocol
version 2) in kombu's Redis envelope, pushed onto the queue's list with one command.

Why not ``Celery.send_task``: for one job it costs an agent more than the rest of its
submit (a repr of the whole payload for the headers, a producer, a redis-py client
object and a declare check per message), and it cannot share a round trip with
anything. A job message needs none of that: its queue is a Redis list the workers
BRPOP (the default exchange routes by queue name, and every queue here has priority 0:
priorities are queues of their own, ``tasks.names.queue_for``), its task stores no
Celery result (``TASK_OPTIONS``), and it has no ETA, expiry, chain or group. What the
worker reads is exactly what Celery would have sent: ``tests/tasks/test_wire.py``
compares the two field by field, and every test of the fleet runs jobs sent this way.

``send_unless_cached`` is the single-job path: the cache lookup and the push in one
script, so a miss costs the agent one round trip and a hit no message at all.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

import redis

from tasks.names import args_summary

__all__ = ["JobWire", "job_message"]

#: Celery's header naming where a message comes from (``gen<pid>@<host>``).
_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"
#: The embedded-options part of a protocol 2 body: no callbacks, chain or chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}

#: KEYS[1]: the job's cache entry, KEYS[2]: its queue; ARGV[1]: its message. The cached
#: answer when there is one (and nothing sent), else the message pushed and nil.
_SEND_UNLESS_CACHED = """
local hit = redis.call('GET', KEYS[1])
if hit then return hit end
redis.call('LPUSH', KEYS[2], ARGV[1])
return false
"""


def job_message(task: str, args: list[Any], task_id: str, queue: str, argsrepr: str) -> str:
    """The message Celery's ``send_task(task, args=args, queue=queue, task_id=task_id,
    argsrepr=argsrepr, kwargsrepr="{}")`` pushes onto ``queue``, as JSON text (less
    ``reply_to``, where Celery would send a result: these tasks store none)."""
    body = json.dumps([args, {}, _EMBED]).encode()
    headers: dict[str, Any] = {
        "lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None,
        "expires": None, "group": None, "group_index": None, "retries": 0,
        "timelimit": [None, None], "root_id": task_id, "parent_id": None,
        "argsrepr": argsrepr, "kwargsrepr": "{}", "origin": _ORIGIN, "ignore_result": None,
        "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
    }
    properties = {
        "correlation_id": task_id, "argsrepr": argsrepr, "kwargsrepr": "{}", "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
        "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
    }
    return json.dumps({
        "body": base64.b64encode(body).decode(), "content-encoding": "utf-8",
        "content-type": "application/json", "headers": headers, "properties": properties,
    })


class JobWire:
    """Sends job messages over a redis-py client (the fleet's Redis, or its master
    behind sentinels). Raises redis-py's errors: the caller says what they mean."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._unless_cached = client.register_script(_SEND_UNLESS_CACHED)

    def send(self, task: str, args: list[Any], queue: str, task_id: str) -> None:
        self._redis.lpush(queue, job_message(task, args, task_id, queue, args_summary(args)))

    def send_unless_cached(self, cache_key: str, task: str, args: list[Any], queue: str,
                           task_id: str) -> bytes | None:
        """The raw cache entry at ``cache_key`` if there is one (nothing is sent); else
        the message is on ``queue`` and None."""
        message = job_message(task, args, task_id, queue, args_summary(args))
        found = self._unless_cached(keys=[cache_key, queue], args=[message])
        return found if isinstance(found, bytes) else None

    def cached(self, keys: list[str]) -> list[bytes | None]:
        """The raw cache entries at ``keys`` (None where there is none)."""
        return [raw if isinstance(raw, bytes) else None for raw in self._redis.mget(keys)]

    def close(self) -> None:
        self._redis.close()
