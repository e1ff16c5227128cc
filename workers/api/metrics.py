"""``GET /metrics``: Prometheus text, computed at scrape time by a custom Collector.

Why at scrape time and not counters kept in each process: a fleet runs many workers on
many machines, and per-process counters would each see a slice, reset on restart, and
need a push gateway or a multiprocess directory to add up. The ledger already holds
every job exactly once, fleet-wide, and Redis holds the queues; reading them when
scraped makes any API process answer the same, right figures, and needs nothing of the
workers. (Scrape one API process, not all of them: each answers for the whole fleet.)

Counters are totals that must not fall when beat purges old ledger rows. So each counter
is: ledger rows since a horizon (midnight UTC after ``now - METRICS_RETENTION_DAYS``,
as ``reports.costs`` uses) plus the daily roll-ups before it. When the horizon moves a
day, that day leaves the ledger part and enters the roll-up part with the same figures.
Roll-ups know jobs and errors but not why a job failed, so their errors count under
``status="failed"``. The latency histogram has no roll-up (roll-ups keep percentiles,
not buckets): it covers the ledger since the horizon, and so drops once a day at
midnight UTC, which Prometheus reads as a counter reset.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from sqlalchemy import Connection, func, select
from sqlalchemy.exc import SQLAlchemyError

from schemas.tables import job_ledger, metrics_rollup
from workers.accounting import reports
from workers.accounting.dead_letters import dead_letter_count
from workers.accounting.spool import spool_length
from workers.api import queries
from workers.api.state import ApiState, state_of

__all__ = ["LATENCY_BUCKETS_S", "FleetCollector", "horizon", "metrics_router"]

log = logging.getLogger(__name__)

#: Upper bounds of the latency histogram, seconds.
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_LABELS = ["agent", "model", "tier"]
_Key = tuple[str, str, str]


def horizon(now: dt.datetime, retention_days: int) -> dt.datetime:
    """Where the ledger part of a counter starts; before it, daily roll-ups."""
    if retention_days <= 0:
        return dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    oldest = queries.start_of_day(now - dt.timedelta(days=retention_days))
    return oldest + dt.timedelta(days=1)


def _ledger_totals(connection: Connection, since: dt.datetime) -> list[Any]:
    c = job_ledger.c
    keys = [c.agent, func.coalesce(c.model, ""), func.coalesce(c.tier, ""), c.status]
    return list(connection.execute(
        select(*keys, func.count(), func.count().filter(c.cache_hit),
               func.coalesce(func.sum(c.prompt_tokens), 0),
               func.coalesce(func.sum(c.completion_tokens), 0),
               func.coalesce(func.sum(c.cost_usd), 0))
        .where(c.created_at >= since).group_by(*keys)))


def _rollup_totals(connection: Connection, before: dt.datetime) -> list[Any]:
    r = metrics_rollup.c
    keys = [r.agent, r.model, r.tier]
    return list(connection.execute(
        select(*keys, func.sum(r.jobs), func.sum(r.errors), func.sum(r.cache_hits),
               func.sum(r.prompt_tokens), func.sum(r.completion_tokens), func.sum(r.cost_usd))
        .where(r.granularity == "day", r.bucket_start < before).group_by(*keys)))


def _latency(connection: Connection, since: dt.datetime) -> list[Any]:
    c = job_ledger.c
    tier = func.coalesce(c.tier, "")
    buckets = [func.count().filter(c.latency_ms <= b * 1000) for b in LATENCY_BUCKETS_S]
    return list(connection.execute(
        select(tier, *buckets, func.count(), func.coalesce(func.sum(c.latency_ms), 0))
        .where(c.created_at >= since, c.status != "rejected").group_by(tier)))


class FleetCollector(Collector):
    """Reads the ledger and Redis on each scrape (see the module's docstring)."""

    def __init__(self, state: ApiState) -> None:
        self._state = state

    def describe(self) -> list[Metric]:
        return []  # no query at registration time

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("llmfleet_up", "Whether a source answered this scrape.",
                               labels=["source"])
        try:
            yield from self._ledger()
            up.add_metric(["postgres"], 1)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("metrics: the ledger is unreachable (%s)", type(exc).__name__)
            up.add_metric(["postgres"], 0)
        try:
            yield from self._redis()
            up.add_metric(["redis"], 1)
        except (RedisError, OSError, SQLAlchemyError) as exc:
            log.warning("metrics: Redis is unreachable (%s)", type(exc).__name__)
            up.add_metric(["redis"], 0)
        yield up

    def _ledger(self) -> Iterator[Metric]:
        since = horizon(reports.utc_now(), self._state.settings.metrics_retention_days)
        with self._state.engine.connect() as connection:
            ledger = _ledger_totals(connection, since)
            rolled = _rollup_totals(connection, since)
            latency = _latency(connection, since)
        jobs: dict[tuple[str, ...], float] = defaultdict(float)
        sums: dict[str, dict[_Key, float]] = defaultdict(lambda: defaultdict(float))
        for agent, model, tier, status, n, hits, prompt, completion, cost in ledger:
            key = (agent, model, tier)
            jobs[(*key, status)] += n
            for name, value in (("hits", hits), ("prompt", prompt),
                                ("completion", completion), ("cost", cost)):
                sums[name][key] += float(value)
        for agent, model, tier, n, errors, hits, prompt, completion, cost in rolled:
            key = (agent, model, tier)
            jobs[(*key, "succeeded")] += float(n) - float(errors)
            jobs[(*key, "failed")] += float(errors)
            for name, value in (("hits", hits), ("prompt", prompt),
                                ("completion", completion), ("cost", cost)):
                sums[name][key] += float(value)
        yield from self._families(jobs, sums)
        yield self._histogram(latency)

    def _families(self, jobs: dict[tuple[str, ...], float],
                  sums: dict[str, dict[_Key, float]]) -> Iterator[Metric]:
        family = CounterMetricFamily("llmfleet_jobs", "Jobs finished, fleet-wide.",
                                     labels=[*_LABELS, "status"])
        for labels, value in sorted(jobs.items()):
            family.add_metric(list(labels), value)
        yield family
        tokens = CounterMetricFamily("llmfleet_tokens", "Tokens, by kind.",
                                     labels=[*_LABELS, "kind"])
        for kind in ("prompt", "completion"):
            for key, value in sorted(sums[kind].items()):
                tokens.add_metric([*key, kind], value)
        yield tokens
        for name, source, doc in (("llmfleet_cost_usd", "cost", "Spend in USD."),
                                  ("llmfleet_cache_hits", "hits", "Jobs answered by the cache.")):
            counter = CounterMetricFamily(name, doc, labels=_LABELS)
            for key, value in sorted(sums[source].items()):
                counter.add_metric(list(key), value)
            yield counter

    @staticmethod
    def _histogram(rows: list[Any]) -> Metric:
        family = HistogramMetricFamily(
            "llmfleet_job_latency_seconds", "Submit-to-result latency of jobs that reached "
            "a provider or the cache (ledger since the horizon).", labels=["tier"])
        for row in rows:
            tier, counts, total, total_ms = row[0], row[1:-2], row[-2], row[-1]
            buckets = [(str(b), float(n)) for b, n in zip(LATENCY_BUCKETS_S, counts,
                                                           strict=True)]
            buckets.append(("+Inf", float(total)))
            family.add_metric([tier], buckets, sum_value=float(total_ms) / 1000)
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
        spend = GaugeMetricFamily("llmfleet_budget_spend_usd", "Spend in the budget's "
                                  "current period.", labels=["budget", "period", "scope"])
        limit = GaugeMetricFamily("llmfleet_budget_limit_usd", "The budget's limit.",
                                  labels=["budget", "period", "scope"])
        for budget in reports.budgets_state(state.engine, state.redis, state.fleet):
            labels = [budget["name"], budget["period"], budget["scope"]]
            spend.add_metric(labels, budget["spent_usd"])
            limit.add_metric(labels, budget["limit_usd"])
        yield spend
        yield limit


metrics_router = APIRouter(tags=["metrics"])


def _registry(state: ApiState) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(state))
    return registry


@metrics_router.get("/metrics", response_class=Response,
                    responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    """The fleet's metrics in Prometheus text, read from the ledger and Redis now."""
    registry = _registry(state_of(request))
    body = await asyncio.to_thread(generate_latest, registry)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
