"""What one API process holds: the agent client, the ledger's engine, Redis, the key
verifier. Built once per process by ``create_app``; routes reach it through the request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from redis import Redis
from sqlalchemy import Engine

from schemas import FleetConfig, Settings
from tasks import FleetClient
from workers.api.keys import KeyVerifier

__all__ = ["ApiState", "state_of"]


@dataclass(slots=True)
class ApiState:
    settings: Settings
    fleet: FleetConfig
    client: FleetClient
    engine: Engine
    #: Sync Redis, used from worker threads (admin reports, health, /metrics).
    redis: Redis
    verifier: KeyVerifier
    #: Celery app for control.ping / inspect (health, overview).
    control: Any
    #: LLMFLEET_ADMIN_KEY; None turns the admin API off.
    admin_key: str | None
    #: Seconds a chat or embeddings request waits for its job unless it asks otherwise.
    default_timeout_s: float = 60.0


def state_of(request: Request) -> ApiState:
    state: ApiState = request.app.state.fleet
    return state
