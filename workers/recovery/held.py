"""The delivery tags of the messages this worker process holds, from Celery's own
record of its requests: those running and those waiting for a thread."""

from __future__ import annotations

from celery.worker import state

__all__ = ["held_tags"]


_last: list[str] = []


def held_tags() -> list[str]:
    """Read from the event loop's thread while Celery's consumer adds and removes
    requests: a set changing mid-copy is copied again; failing that, the last tags
    read are told again (holding nothing would give this worker's messages away)."""
    global _last
    for _ in range(20):
        try:
            requests = [*state.active_requests, *state.reserved_requests]
            break
        except RuntimeError:  # "set changed size during iteration"
            continue
    else:
        return _last
    tags: set[str] = set()
    for request in requests:
        tag = getattr(getattr(request, "message", None), "delivery_tag", None)
        if tag is not None:
            tags.add(str(tag))
    _last = sorted(tags)
    return _last
