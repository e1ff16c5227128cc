"""Which rates and places a job falls under: the fleet's ``[[limits]]`` whose scope it
matches (and its fleet key's own, which the HTTP API puts on the job), and the quotas of
the model that answers it and of that model's provider."""

from __future__ import annotations

from collections.abc import Iterable

from schemas import FleetConfig, LimitConfig
from schemas.keys import LIMIT_INFLIGHT, LIMIT_RATE, QUOTA_RATE
from workers.admission.limiter import Place, Rate
from workers.pipeline.steps import JobContext

__all__ = ["job_tokens", "limits_of", "quota_rates", "scope_matches"]

#: The fleet's own limits allow a whole minute's worth at once.
_LIMIT_TAU_MS = 60_000.0


def job_tokens(ctx: JobContext) -> int:
    """What a job may spend at most: its prompt and its output bound."""
    return ctx.prompt_tokens + ctx.max_tokens


def scope_matches(scope: str, ctx: JobContext) -> bool:
    kind, _, target = scope.partition(":")
    job = ctx.job
    if kind == "global":
        return True
    value = {"agent": job.agent, "user": job.user, "key": job.key_id, "tier": ctx.tier,
             "model": ctx.primary_model}.get(kind)
    return value is not None and value == target


def limits_of(ctx: JobContext) -> tuple[list[Rate], list[Place]]:
    """The rates and places of every limit whose scope the job matches."""
    rates: list[Rate] = []
    places: list[Place] = []
    tokens = job_tokens(ctx)
    for limit in _applicable(ctx.fleet.limits, ctx.job.key_limits, ctx):
        if limit.rpm is not None:
            rates.append(Rate(limit.name, "rpm", LIMIT_RATE.format(name=limit.name, kind="rpm"),
                              limit.rpm, 1, _LIMIT_TAU_MS, limit.mode))
        if limit.tpm is not None:
            rates.append(Rate(limit.name, "tpm", LIMIT_RATE.format(name=limit.name, kind="tpm"),
                              limit.tpm, tokens, _LIMIT_TAU_MS, limit.mode))
        if limit.concurrency is not None:
            places.append(Place(limit.name, LIMIT_INFLIGHT.format(name=limit.name),
                                limit.concurrency, limit.mode))
    return rates, places


def _applicable(fleet_limits: Iterable[LimitConfig], own: Iterable[LimitConfig],
                ctx: JobContext) -> list[LimitConfig]:
    return [limit for limit in (*fleet_limits, *own) if scope_matches(limit.scope, ctx)]


def quota_rates(fleet: FleetConfig, model: str, tokens: int) -> list[Rate]:
    """The provider quotas a call of ``model`` spends: the model's and its provider's,
    less ``[admission] quota_headroom``, one request after another (or with
    ``quota_burst_s`` of them at once): no sliding window of the provider's, a minute or
    a second long, ever holds more than its quota."""
    admission = fleet.admission
    burst_ms, keep = admission.quota_burst_s * 1000, 1 - admission.quota_headroom
    config = fleet.models[model]
    owners = [(f"model:{model}", config.rpm, config.tpm)]
    provider = fleet.providers[config.provider]
    owners.append((f"provider:{config.provider}", provider.rpm, provider.tpm))
    rates: list[Rate] = []
    for owner, rpm, tpm in owners:
        if rpm is not None:
            limit = max(1, int(rpm * keep))
            rates.append(Rate(owner, "rpm", QUOTA_RATE.format(owner=owner, kind="rpm"), limit,
                              1, max(burst_ms, 60_000 / limit), "queue"))
        if tpm is not None:
            limit = max(1, int(tpm * keep))
            per = 60_000 / limit
            rates.append(Rate(owner, "tpm", QUOTA_RATE.format(owner=owner, kind="tpm"), limit,
                              tokens, max(burst_ms, tokens * per, per), "queue"))
    return rates
