"""What one API process holds: the agent client, the ledger's engine, Redis, the key
verifier. Built once per process by ``create_app``; routes reach it through the request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Request
from redis import Redis
from sqlalchemy import Engine

from schemas import FleetConfig, Settings
from tasks import FleetClient
from workers.api.keys import KeyVerifier

if TYPE_CHECKING:  # the guard reaches the state through requests: no import cycle
    from workers.api.auth_guard import AuthGuard

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
    #: The Bearer token of /metrics: LLMFLEET_METRICS_TOKEN, else the admin key; None
    #: turns /metrics off.
    metrics_token: str | None = None
    #: Failed authentications per client address (``workers.api.auth_guard``).
    auth_guard: AuthGuard | None = None
    #: Seconds a chat or embeddings request waits for its job unless it asks otherwise.
    default_timeout_s: float = 60.0


def state_of(request: Request) -> ApiState:
    state: ApiState = request.app.state.fleet
    return state
