"""``/api/admin/ml-ops``: the fleet's figures for operators, behind
``Authorization: Bearer $LLMFLEET_ADMIN_KEY``; ``/health`` is public. With no admin key
set the admin routes answer 503 saying so (never open by default). Figures come from
the ledger through ``workers.accounting.reports``, equal to ``llmfleet costs`` and ``stats``.

``/audit`` reads the audit log; a route here that changes state (any method but GET,
HEAD and OPTIONS) is written to it by its route class, ``AuditedRoute``, as
``admin.<route name>``: its caller (``admin-key`` or ``dashboard:<session id>``), path,
outcome and address."""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException

from schemas import parse_since
from schemas.keys import BEAT_LAST_RUN, BREAKER_OPEN, DASHBOARD_LOGGED_OUT
from tasks._redis import as_text
from workers.accounting import reports
from workers.accounting.dead_letters import dead_letter_count
from workers.accounting.spool import spool_length
from workers.admission.report import limits_snapshot, parked_jobs
from workers.api import breakdowns, queries, sessions
from workers.api.auth_guard import auth_guard, client_address
from workers.api.errors import ApiError, ErrorResponse
from workers.api.keys import key_limits
from workers.api.state import ApiState, state_of
from workers.store import audit
from workers.store import experiments as experiments_store

__all__ = ["AuditedRoute", "admin_session", "audit_actor", "audit_address", "health_report",
           "limits_report", "public_router", "require_admin", "router"]

PREFIX = "/api/admin/ml-ops"
TimeRange = Literal["1h", "24h", "7d", "30d"]


def _logged_out(state: ApiState, nonce: str) -> bool:
    return bool(state.redis.exists(DASHBOARD_LOGGED_OUT.format(nonce=nonce)))


async def admin_session(request: Request) -> sessions.Session | None:
    """The request's dashboard session: a cookie whose token verifies against the
    admin key, unexpired and not logged out; None otherwise."""
    state = state_of(request)
    token = request.cookies.get(sessions.COOKIE)
    if not token or state.admin_key is None:
        return None
    session = sessions.verify(token, state.admin_key)
    if session is None:
        return None
    try:
        gone = await asyncio.to_thread(_logged_out, state, session.nonce)
    except (RedisError, OSError):  # fail closed: a logout we cannot see may have happened
        raise ApiError(503, "cannot check the dashboard session: Redis is unreachable",
                       "fleet_unavailable", code="fleet_unavailable") from None
    return None if gone else session


async def require_admin(request: Request,
                        authorization: Annotated[str | None, Header()] = None) -> None:
    """The admin key as a Bearer token, compared in constant time, or a dashboard
    session (``workers.api.sessions``); 503 when the admin API is off, 429 while the
    caller's address has made too many failed attempts."""
    expected = state_of(request).admin_key
    if expected is None:
        raise ApiError(503, "the admin API is off: set LLMFLEET_ADMIN_KEY to turn it on",
                       "admin_api_disabled", code="admin_api_disabled")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        # A wrong key counts against the caller's address; over its limit, 429 whatever
        # the key (workers.api.auth_guard). Sessions are not counted: none can be guessed.
        right = hmac.compare_digest(token.strip().encode(), expected.encode())
        await asyncio.to_thread(auth_guard(request).admit, client_address(request),
                                failed=not right)
        if right:
            request.state.audit_actor = "admin-key"
            return
    session = await admin_session(request)
    if session is None:
        raise ApiError(401, "admin key required: Authorization: Bearer $LLMFLEET_ADMIN_KEY "
                       "(or log in at /dashboard)", "invalid_request_error",
                       code="invalid_admin_key")
    request.state.audit_actor = session.actor


def audit_actor(request: Request) -> str | None:
    """Who the audit log names for an admitted request (``require_admin`` sets it):
    ``admin-key`` or ``dashboard:<session id>``; None before admission."""
    actor = getattr(request.state, "audit_actor", None)
    return actor if isinstance(actor, str) else None


def audit_address(request: Request) -> str | None:
    """The client's address as the audit log keeps it: the host uvicorn resolved (the
    client's, from X-Forwarded-For, behind a trusted proxy), whole (the failure guard
    counts an IPv6 address by its /64; the log keeps the address itself)."""
    return request.client.host[:100] if request.client else None


_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class AuditedRoute(APIRoute):
    """A route whose every admitted call that may change state (a method other than
    GET, HEAD, OPTIONS) is one audit row ``admin.<route name>``: outcome ok for 2xx and
    3xx, refused for 4xx, error for 5xx or an exception. Calls refused before admission
    (no or a wrong key) are not rows: no admin acted, and the failure guard limits them."""

    def get_route_handler(self) -> _Handler:
        handler: _Handler = super().get_route_handler()
        if not (self.methods or set()) - _READS:
            return handler
        action = f"admin.{self.name}"

        async def audited(request: Request) -> Response:
            try:
                response = await handler(request)
            except Exception as exc:
                await _audit(request, action, _status_of(exc))
                raise
            await _audit(request, action, response.status_code)
            return response

        return audited


def _status_of(exc: Exception) -> int:
    """The status an exception out of a route answers with (``install_handlers``)."""
    if isinstance(exc, ApiError):
        return exc.status
    if isinstance(exc, HTTPException):
        return exc.status_code
    return 400 if isinstance(exc, RequestValidationError) else 500


async def _audit(request: Request, action: str, status: int) -> None:
    actor = audit_actor(request)
    if actor is None:
        return
    outcome: audit.Outcome = "ok" if status < 400 else "refused" if status < 500 else "error"
    await asyncio.to_thread(
        audit.record, state_of(request).engine, actor, action, request.url.path,
        after={"method": request.method, "status": status}, outcome=outcome,
        address=audit_address(request))


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 429, 503)}
router = APIRouter(prefix=PREFIX, dependencies=[Depends(require_admin)], responses=_ERRORS,
                   tags=["admin"], route_class=AuditedRoute)
public_router = APIRouter(prefix=PREFIX, tags=["admin"])


def _since(value: str) -> dt.datetime:
    try:
        return parse_since(value)
    except ValueError as exc:
        raise ApiError(400, str(exc), param="since") from None


def _overview(state: ApiState) -> dict[str, Any]:
    now = reports.utc_now()
    today = reports.stats(state.engine, queries.start_of_day(now))
    live, per_queue = queries.workers_per_queue(state.control, state.fleet)
    keys = ("jobs", "errors", "error_rate", "cache_hits", "cache_hit_rate", "cost_usd",
            "cost_saved_usd", "prompt_tokens", "completion_tokens", "latency_p50_ms",
            "latency_p95_ms", "latency_p99_ms")
    return {"generated_at": now.isoformat(), "today": {k: today[k] for k in keys},
            "per_tier": today["per_tier"],
            "budgets": reports.budgets_state(state.engine, state.redis, state.fleet, now),
            "queue_depths": queries.queue_depths(state.redis, state.fleet),
            "workers": {"up": len(live), "names": live, "per_queue": per_queue}}


@router.get("/overview")
async def overview(request: Request) -> dict[str, Any]:
    """Today (UTC): jobs, cost, error and cache hit rates, latency percentiles; budgets;
    queue depths; workers up."""
    return await asyncio.to_thread(_overview, state_of(request))


@router.get("/metrics")
async def metrics(request: Request,
                  time_range: TimeRange = "24h",
                  model: Annotated[str | None, Query(max_length=200)] = None,
                  agent: Annotated[str | None, Query(max_length=200)] = None
                  ) -> dict[str, Any]:
    """Totals and a time series over ``time_range``, optionally for one model or agent."""
    state = state_of(request)
    return await asyncio.to_thread(queries.metrics_page, state.engine, time_range,
                                   model=model, agent=agent)


@router.get("/costs")
async def costs(request: Request, since: str = "30d") -> dict[str, Any]:
    """Spend by day, agent, model, tier and user; top spenders; month-end projection."""
    state = state_of(request)
    return await asyncio.to_thread(queries.costs_page, state.engine, _since(since),
                                   retention_days=state.settings.metrics_retention_days)


@router.get("/stats")
async def stats(request: Request, since: str = "24h") -> dict[str, Any]:
    """``llmfleet stats``: jobs, errors, cache hits, tokens, cost, p50/p95/p99, per tier."""
    return await asyncio.to_thread(reports.stats, state_of(request).engine, _since(since))


@router.get("/spend")
async def spend(request: Request, time_range: TimeRange = "24h",
                model: Annotated[str | None, Query(max_length=200)] = None,
                agent: Annotated[str | None, Query(max_length=200)] = None,
                top: Annotated[int, Query(ge=1, le=50)] = 8) -> dict[str, Any]:
    """Spend per time bucket and model, and the top agents and users by spend (with
    what the rest add up to), over ``time_range``, optionally for one model or agent."""
    state = state_of(request)
    return await asyncio.to_thread(breakdowns.spend_page, state.engine, time_range,
                                   model=model, agent=agent, top=top)


@router.get("/alerts")
async def alerts(request: Request,
                 limit: Annotated[int, Query(ge=1, le=200)] = 20) -> dict[str, Any]:
    """The newest budget alerts, each with its delivery per channel; and under
    ``operational`` the operational alerts (error rate, latency, cost per request of a
    tier, model or agent): how many fire now, and the newest, those firing first."""
    engine = state_of(request).engine
    rows = await asyncio.to_thread(breakdowns.recent_alerts, engine, limit)
    operational = await asyncio.to_thread(queries.operational_alerts_page, engine, limit)
    return {"alerts": rows, "operational": operational}


@router.get("/fleet")
async def fleet(request: Request) -> dict[str, Any]:
    """What the filters offer: agents seen in the last 30 days, models, each
    provider's models, each tier's chain."""
    state = state_of(request)
    return await asyncio.to_thread(breakdowns.filter_options, state.engine, state.fleet)


def _experiments(state: ApiState) -> dict[str, Any]:
    return {"experiments": [experiments_store.report(state.engine, name)
                            for name in experiments_store.names(state.engine)]}


@router.get("/experiments")
async def experiments(request: Request) -> dict[str, Any]:
    """The newest experiments, each with ``llmfleet experiments report``'s figures:
    per variant jobs, outcomes, success rate and interval, latency, cost; p-value and
    winner."""
    return await asyncio.to_thread(_experiments, state_of(request))


@router.get("/audit")
async def audit_log(request: Request, since: str = "7d", until: str | None = None,
                    actor: Annotated[str | None, Query(max_length=300)] = None,
                    action: Annotated[str | None, Query(max_length=100)] = None,
                    resource: Annotated[str | None, Query(max_length=500)] = None,
                    limit: Annotated[int, Query(ge=1, le=audit.MAX_LIMIT)] = 100,
                    offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
    """The audit log, newest first: every administrative action (who, what, on which
    resource, outcome, client address, before and after) from ``since`` ("24h", "7d",
    an ISO time) until ``until``; ``actor``, ``action`` and ``resource`` match exactly,
    or a prefix with a trailing ``*`` (``action=key.*``). ``llmfleet audit`` answers
    the same."""
    start = _since(since)
    try:
        end = None if until is None else parse_since(until)
    except ValueError as exc:
        raise ApiError(400, str(exc), param="until") from None
    rows = await asyncio.to_thread(
        audit.query, state_of(request).engine, since=start, until=end, actor=actor,
        action=action, resource=resource, limit=limit, offset=offset)
    return {"entries": rows, "limit": limit, "offset": offset}


def limits_report(state: ApiState) -> dict[str, Any]:
    """Every limit and quota with what it holds now (``workers.admission.report``), the
    fleet keys' own included, and the jobs parked waiting for one."""
    rows = limits_snapshot(state.redis, state.fleet, key_limits(state.engine))
    return {"generated_at": reports.utc_now().isoformat(), "limits": rows,
            "parked_jobs": parked_jobs(state.redis)}


@router.get("/limits")
async def limits(request: Request) -> dict[str, Any]:
    """The fleet's rate limits (``[[limits]]``, the fleet keys' own ``key-<id>``) and
    the providers' quotas: per rate or place its size, what it holds now (requests or
    tokens not yet freed, jobs in flight), mode, and the jobs it rejected and
    delayed; and the jobs parked waiting. ``llmfleet limits --json`` answers the same."""
    return await asyncio.to_thread(limits_report, state_of(request))


def _breakers(state: ApiState) -> list[dict[str, Any]]:
    pattern = BREAKER_OPEN.format(route="*")
    prefix = BREAKER_OPEN.format(route="")
    out = []
    for raw in state.redis.scan_iter(match=pattern, count=500):
        key = as_text(raw)
        ttl = state.redis.pttl(key)
        out.append({"route": key.removeprefix(prefix),
                    "cooldown_left_s": round(ttl / 1000, 1) if ttl > 0 else None})
    return out


def _beat(state: ApiState) -> dict[str, Any]:
    raw = state.redis.get(BEAT_LAST_RUN)
    if raw is None:
        return {"last_run": None, "age_s": None, "ok": False}
    last = float(raw)
    age = time.time() - last
    return {"last_run": dt.datetime.fromtimestamp(last, dt.UTC).isoformat(),
            "age_s": round(age, 1), "ok": age <= 3 * state.fleet.beat.heartbeat_s}


def health_report(state: ApiState) -> tuple[bool, dict[str, Any]]:
    """(healthy, report). Degraded: Redis or Postgres down, or a tier's queue with no
    worker. A stale beat, a provider in cool-down or ledger rows set aside as dead
    letters are reported, not degrading."""
    report: dict[str, Any] = {}
    try:
        state.redis.ping()
        report["redis"] = {"ok": True}
    except (RedisError, OSError) as exc:
        report["redis"] = {"ok": False, "error": type(exc).__name__}
    try:
        with state.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        report["postgres"] = {"ok": True}
    except (SQLAlchemyError, OSError) as exc:
        report["postgres"] = {"ok": False, "error": type(exc).__name__}
    idle: list[str] = []
    if report["redis"]["ok"]:
        live, per_queue = queries.workers_per_queue(state.control, state.fleet)
        idle = [q for q, n in per_queue.items() if n == 0]
        report["workers"] = {"up": len(live), "per_queue": per_queue, "queues_without": idle}
        report["beat"] = _beat(state)
        report["providers_in_cooldown"] = _breakers(state)
        report["ledger"] = {"spooled": spool_length(state.redis),
                            "dead_letters": dead_letter_count(state.redis)}
    healthy = report["redis"]["ok"] and report["postgres"]["ok"] and not idle
    report["status"] = "ok" if healthy else "degraded"
    return healthy, report


@public_router.get("/health", responses={503: {"description": "degraded"}})
async def health(request: Request) -> JSONResponse:
    """Redis, Postgres, workers per queue, beat's last run, providers in cool-down;
    503 when degraded."""
    healthy, report = await asyncio.to_thread(health_report, state_of(request))
    return JSONResponse(report, status_code=200 if healthy else 503)
