"""The HTTP API's application: ``create_app()`` builds one per process (uvicorn calls it
as a factory in each of its worker processes), holding one FleetClient, one ledger
engine and one Redis client for every request of that process."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from celery import Celery
from fastapi import FastAPI

from schemas import Settings, load_config
from tasks import FleetClient
from tasks._redis import sync_client
from tasks.celery_config import celery_settings
from workers.api.admin_routes import public_router
from workers.api.admin_routes import router as admin_router
from workers.api.auth_guard import AuthGuard
from workers.api.batch_routes import router as batch_router
from workers.api.dashboard import DashboardHeaders
from workers.api.dashboard import router as dashboard_router
from workers.api.errors import install_handlers
from workers.api.keys import KeyVerifier
from workers.api.metrics import metrics_router
from workers.api.openai_routes import router as openai_router
from workers.api.state import ApiState
from workers.observability.traces import RequestScope, setup_tracing
from workers.store.engines import sync_engine

__all__ = ["MAX_BODY_BYTES", "BodyLimit", "RequestContext", "create_app"]

log = logging.getLogger(__name__)

#: Largest request body accepted: room for an image at its 5 MB limit as base64, so that
#: its own check (naming the field) answers rather than this one.
MAX_BODY_BYTES = 8 * 1024 * 1024

_Scope = dict[str, Any]


class BodyLimit:
    """Answers 413 for a body over ``limit`` bytes, by Content-Length or as it streams,
    before the body is parsed: a huge upload never reaches JSON decoding."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: _Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._refuse(send)
            return
        if length is None:  # chunked: read it whole (bounded), then replay it
            body = await self._read(receive)
            if body is None:
                await self._refuse(send)
                return
            replayed = False

            async def replay() -> Any:
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)

    async def _read(self, receive: Any) -> bytes | None:
        """The whole body, or None once it passes the limit."""
        parts: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return None
            parts.append(chunk)
            more = message.get("more_body", False)
        return b"".join(parts)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"error": {
            "message": f"the request body is over {self.limit} bytes", "type":
            "invalid_request_error", "param": None, "code": "request_too_large"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class RequestContext:
    """Each request's trace id on the log lines it causes (its ``traceparent``
    header's, else a new one) and on the jobs it submits; when the process traces
    (OTEL_EXPORTER_OTLP_ENDPOINT), its server span, the parent of those jobs' spans."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: _Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with RequestScope(scope) as request:
            if request.span is None:
                await self.app(scope, receive, send)
                return

            async def send_noting_status(message: Any) -> None:
                if message["type"] == "http.response.start":
                    request.status(int(message["status"]))
                await send(message)

            await self.app(scope, receive, send_noting_status)


def _state(settings: Settings | None) -> ApiState:
    settings, fleet = load_config(settings)
    from workers.devstack.services import resolve_services

    services = resolve_services(settings)
    assert services.database_url is not None
    engine = sync_engine(services.database_url)
    control = Celery("llmfleet-api-control", set_as_current=False)
    control.conf.update(celery_settings(services.redis_url, services.redis_url, fleet))
    admin_key = os.environ.get("LLMFLEET_ADMIN_KEY") or None
    metrics_token = os.environ.get("LLMFLEET_METRICS_TOKEN") or admin_key
    redis = sync_client(services.redis_url, socket_timeout=5)
    return ApiState(
        settings=settings, fleet=fleet, engine=engine, control=control, admin_key=admin_key,
        metrics_token=metrics_token,
        client=FleetClient(redis_url=services.redis_url, fleet=fleet, settings=settings,
                           agent="api"),
        redis=redis, verifier=KeyVerifier(engine),
        # A bad LLMFLEET_AUTH_FAILURE_* value stops the process here, not each request.
        auth_guard=AuthGuard.from_env(redis))


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API, configured from the environment (REDIS_URL, DATABASE_URL,
    LLMFLEET_CONFIG, LLMFLEET_ADMIN_KEY, LLMFLEET_METRICS_TOKEN) unless ``settings``
    say otherwise."""
    state = _state(settings)
    setup_tracing(state.settings, "llmfleet-api")
    if state.admin_key is None:
        log.warning("LLMFLEET_ADMIN_KEY is not set: the admin API (/api/admin/ml-ops) is off")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            state.client.close()
            state.redis.close()
            state.control.close()

    app = FastAPI(title="llmfleet", version="0.1.0", lifespan=lifespan,
                  description="The fleet in the OpenAI wire format, its admin API, "
                              "Prometheus metrics and the /dashboard page.")
    app.state.fleet = state
    install_handlers(app)
    app.include_router(openai_router)
    app.include_router(batch_router)
    app.include_router(admin_router)
    app.include_router(public_router)
    app.include_router(metrics_router)
    app.include_router(dashboard_router)
    app.add_middleware(BodyLimit)
    app.add_middleware(DashboardHeaders)
    # Outermost: the trace id is bound before anything else logs.
    app.add_middleware(RequestContext)
    return app
