"""``GET /metrics``: Prometheus text, behind a Bearer token, read by a custom Collector.

Why not counters kept in each process: a fleet runs many workers on many machines, and
per-process counters would each see a slice, reset on restart, and need a push gateway
or a multiprocess directory to add up. The ledger's flusher keeps fleet-wide counters in
Postgres instead (``workers.accounting.counters``: added as rows land, in the insert's
transaction, never decremented, so purging the ledger leaves them); Redis holds the
queues and the budgets' fast counters. A scrape reads those (a few hundred rows and a
few Redis round trips, however long the ledger), so any API process answers the same,
right figures, and needs nothing of the workers. (Scrape one API process, not all of
them: each answers for the whole fleet.)

The token is ``LLMFLEET_METRICS_TOKEN``, else ``LLMFLEET_ADMIN_KEY``: spend per agent
and budget is not for whoever reaches the port. With neither set, /metrics answers 503.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import SQLAlchemyError

from schemas.tables import metric_counters, metric_latency, metric_ttft
from workers.accounting import reports
from workers.accounting.budgets import NANO, budget_key, counter_figures, period_of
from workers.accounting.counters import LATENCY_BUCKETS_S
from workers.accounting.dead_letters import dead_letter_count
from workers.accounting.spool import spool_length
from workers.admission.report import limits_snapshot, parked_jobs
from workers.api import queries
from workers.api.auth_guard import auth_guard, client_address
from workers.api.errors import ApiError, ErrorResponse
from workers.api.keys import key_limits
from workers.api.state import ApiState, state_of

__all__ = ["LATENCY_BUCKETS_S", "FleetCollector", "metrics_router", "require_metrics_token"]

log = logging.getLogger(__name__)

_LABELS = ["agent", "model", "tier"]
_Key = tuple[str, str, str]


class FleetCollector(Collector):
    """Reads the counters tables and Redis on each scrape (see the module's docstring)."""

    def __init__(self, state: ApiState) -> None:
        self._state = state

    def describe(self) -> list[Metric]:
        return []  # no query at registration time

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("llmfleet_up", "Whether a source answered this scrape.",
                               labels=["source"])
        # ENABLE_MONITORING=false: no counters are kept, so no query; Redis's live
        # figures only.
        if self._state.settings.enable_monitoring:
            try:
                families = self._counters()  # read whole before yielding any
                up.add_metric(["postgres"], 1)
                yield from families
            except (SQLAlchemyError, OSError) as exc:
                log.warning("metrics: Postgres is unreachable (%s)", type(exc).__name__)
                up.add_metric(["postgres"], 0)
        try:
            yield from self._redis()
            up.add_metric(["redis"], 1)
        except (RedisError, OSError) as exc:
            log.warning("metrics: Redis is unreachable (%s)", type(exc).__name__)
            up.add_metric(["redis"], 0)
        yield up

    def _counters(self) -> list[Metric]:
        with self._state.engine.connect() as connection:
            counters = connection.execute(select(metric_counters)).mappings().all()
            latency = connection.execute(select(metric_latency)).mappings().all()
            ttft = connection.execute(select(metric_ttft)).mappings().all()
            alerts = queries.alert_states(connection)
        firing = GaugeMetricFamily("llmfleet_alert_firing", "Whether an operational alert "
                                   "fires now (1) or has resolved (0).",
                                   labels=["kind", "scope", "target"])
        for kind, scope, target, on in alerts:
            firing.add_metric([kind, scope, target], 1 if on else 0)
        return [*self._families(counters), firing,
                self._histogram("llmfleet_job_latency_seconds", "Submit-to-result latency "
                                "of jobs that reached a provider or the cache.", latency),
                self._histogram("llmfleet_job_ttft_seconds", "Submit-to-first-chunk time "
                                "of streamed jobs.", ttft)]

    @staticmethod
    def _families(rows: Sequence[RowMapping]) -> Iterator[Metric]:
        jobs = CounterMetricFamily("llmfleet_jobs", "Jobs finished, fleet-wide.",
                                   labels=[*_LABELS, "status"])
        sums: dict[str, dict[_Key, float]] = defaultdict(lambda: defaultdict(float))
        for row in sorted(rows, key=lambda r: (r["agent"], r["model"], r["tier"], r["status"])):
            key = (row["agent"], row["model"], row["tier"])
            jobs.add_metric([*key, row["status"]], float(row["jobs"]))
            for name in ("prompt_tokens", "completion_tokens", "cost_usd", "cache_hits"):
                sums[name][key] += float(row[name])  # the other families sum over status
        yield jobs
        tokens = CounterMetricFamily("llmfleet_tokens", "Tokens, by kind.",
                                     labels=[*_LABELS, "kind"])
        for kind in ("prompt", "completion"):
            for key, value in sums[f"{kind}_tokens"].items():
                tokens.add_metric([*key, kind], value)
        yield tokens
        for name, source, doc in (
                ("llmfleet_cost_usd", "cost_usd", "Spend in USD."),
                ("llmfleet_cache_hits", "cache_hits", "Jobs answered by the cache.")):
            counter = CounterMetricFamily(name, doc, labels=_LABELS)
            for key, value in sums[source].items():
                counter.add_metric(list(key), value)
            yield counter

    @staticmethod
    def _histogram(name: str, doc: str, rows: Sequence[RowMapping]) -> Metric:
        """Each row holds one bucket's own range: cumulative counts are running sums."""
        family = HistogramMetricFamily(name, doc, labels=["tier"])
        tiers: dict[str, list[RowMapping]] = defaultdict(list)
        for row in rows:
            tiers[row["tier"]].append(row)
        for tier, own in sorted(tiers.items()):
            buckets = [(str(b), float(sum(r["jobs"] for r in own if r["le"] <= b)))
                       for b in LATENCY_BUCKETS_S]
            buckets.append(("+Inf", float(sum(r["jobs"] for r in own))))
            family.add_metric([tier], buckets,
                              sum_value=sum(float(r["sum_ms"]) for r in own) / 1000)
        return family

    def _redis(self) -> Iterator[Metric]:
        state = self._state
        depth = GaugeMetricFamily("llmfleet_queue_depth", "Jobs waiting in a tier's queue.",
                                  labels=["queue"])
        for queue, n in queries.queue_depths(state.redis, state.fleet).items():
            depth.add_metric([queue], n)
        yield depth
        yield GaugeMetricFamily("llmfleet_ledger_spool_rows",
                                "Ledger rows waiting in Redis for Postgres.",
                                value=spool_length(state.redis))
        yield GaugeMetricFamily("llmfleet_ledger_dead_letters",
                                "Ledger rows Postgres refused, set aside for an operator.",
                                value=dead_letter_count(state.redis))
        yield from self._budgets()
        yield from self._limits()

    def _budgets(self) -> Iterator[Metric]:
        """Settled spend from the budgets' fast counters in Redis (beat repairs them from
        the ledger), in one round trip: no ledger aggregate at scrape time."""
        state, now = self._state, reports.utc_now()
        periods = [(b, period_of(b, now, state.fleet.budget_timezone))
                   for b in state.fleet.budgets]
        pipe = state.redis.pipeline(transaction=False)
        for budget, period in periods:
            pipe.hgetall(budget_key(budget, period))
        hashes: list[Any] = pipe.execute() if periods else []
        spend = GaugeMetricFamily("llmfleet_budget_spend_usd", "Spend in the budget's "
                                  "current period.", labels=["budget", "period", "scope"])
        limit = GaugeMetricFamily("llmfleet_budget_limit_usd", "The budget's limit.",
                                  labels=["budget", "period", "scope"])
        for (budget, _), values in zip(periods, hashes, strict=True):
            labels = [budget.name, budget.period, budget.scope]
            spent, _held = counter_figures(values, now.timestamp())
            spend.add_metric(labels, spent / NANO)
            limit.add_metric(labels, budget.limit_usd)
        yield spend
        yield limit


    def _limits(self) -> Iterator[Metric]:
        """Every limit and quota (the fleet keys' own included) as ``llmfleet limits``
        has them: size and use per kind, rejected and delayed jobs per limit; and the
        jobs parked. With Postgres down, the keys' own limits are left out."""
        state = self._state
        try:
            keys = key_limits(state.engine)
        except (SQLAlchemyError, OSError):
            keys = []
        rows = limits_snapshot(state.redis, state.fleet, keys)
        size = GaugeMetricFamily("llmfleet_limit", "A limit's or a provider quota's size: "
                                 "per minute (rpm, tpm) or jobs in flight (concurrency).",
                                 labels=["limit", "kind"])
        used = GaugeMetricFamily("llmfleet_limit_used", "What a limit holds now: requests "
                                 "or tokens not yet freed (a limit frees them at its "
                                 "rate), or jobs in flight.",
                                 labels=["limit", "kind"])
        rejected = CounterMetricFamily("llmfleet_limit_rejected", "Jobs a limit refused.",
                                       labels=["limit"])
        delayed = CounterMetricFamily("llmfleet_limit_delayed", "Jobs a limit held back "
                                      "(parked until they fit).", labels=["limit"])
        counted: set[str] = set()
        for row in rows:
            size.add_metric([row["name"], row["kind"]], row["limit"])
            used.add_metric([row["name"], row["kind"]], row["used"])
            if row["name"] not in counted:  # the counters are per limit, not per kind
                counted.add(row["name"])
                rejected.add_metric([row["name"]], row["rejected"])
                delayed.add_metric([row["name"]], row["delayed"])
        yield from (size, used, rejected, delayed)
        yield GaugeMetricFamily("llmfleet_parked_jobs", "Jobs parked in Redis until a limit "
                                "or a quota lets them go.", value=parked_jobs(state.redis))


async def require_metrics_token(request: Request,
                                authorization: Annotated[str | None, Header()] = None
                                ) -> None:
    """``Authorization: Bearer <token>``, compared in constant time; 503 when no token
    is configured (never open by default)."""
    expected = state_of(request).metrics_token
    if expected is None:
        raise ApiError(503, "/metrics is off: set LLMFLEET_METRICS_TOKEN (or "
                       "LLMFLEET_ADMIN_KEY) and scrape with Authorization: Bearer <token>",
                       "metrics_disabled", code="metrics_disabled")
    scheme, _, token = (authorization or "").partition(" ")
    right = scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                               expected.encode())
    if token.strip():  # a wrong token counts against the address, as a wrong key does
        await asyncio.to_thread(auth_guard(request).admit, client_address(request),
                                failed=not right)
    if not right:
        raise ApiError(401, "metrics token required: Authorization: Bearer "
                       "$LLMFLEET_METRICS_TOKEN (else $LLMFLEET_ADMIN_KEY)",
                       "invalid_request_error", code="invalid_metrics_token",
                       headers={"www-authenticate": "Bearer"})


metrics_router = APIRouter(tags=["metrics"])


def _registry(state: ApiState) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(state))
    return registry


@metrics_router.get("/metrics", response_class=Response,
                    dependencies=[Depends(require_metrics_token)],
                    responses={200: {"content": {"text/plain": {}}},
                               401: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
async def metrics(request: Request) -> Response:
    """The fleet's metrics in Prometheus text, from the counters tables and Redis."""
    registry = _registry(state_of(request))
    body = await asyncio.to_thread(generate_latest, registry)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
