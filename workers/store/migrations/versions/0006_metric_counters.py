"""Prometheus' counters kept as ledger rows land (``metric_counters``, ``metric_latency``),
backfilled from the ledger and, for days it no longer holds whole, the daily roll-ups.

Upgrade with the workers stopped: a worker of the previous version still flushing
after this runs would add ledger rows that no counter sees.

Revision ID: 0006_metric_counters
Revises: 0005_rollup_watermark
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_metric_counters"
down_revision = "0005_rollup_watermark"
branch_labels = None
depends_on = None

MONEY = sa.Numeric(20, 9)
#: ``workers.accounting.counters.LATENCY_BUCKETS_S`` as of this revision (a migration
#: keeps its own copy: changing the buckets later takes a migration of its own).
BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# A day is purged (in whole or in part) when its daily roll-up counted more jobs than the
# ledger still holds of it: that day comes from the roll-up, every other from the ledger.
# Roll-ups know jobs and errors, not why a job failed: their errors count as "failed",
# their tokens, cost and cache hits go with "succeeded" (the metrics sum those over status).
_COUNTERS = """
WITH purged AS (
    SELECT r.bucket_start AS day FROM metrics_rollup r
    WHERE r.granularity = 'day'
    GROUP BY r.bucket_start
    HAVING sum(r.jobs) > (SELECT count(*) FROM job_ledger l
                          WHERE l.created_at >= r.bucket_start
                            AND l.created_at < r.bucket_start + interval '1 day')
), rolled AS (
    SELECT agent, model, tier, sum(jobs) AS jobs, sum(errors) AS errors,
           sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
           sum(cache_hits) AS cache_hits, sum(cost_usd) AS cost_usd,
           sum(cost_saved_usd) AS cost_saved_usd
    FROM metrics_rollup
    WHERE granularity = 'day' AND bucket_start IN (SELECT day FROM purged)
    GROUP BY agent, model, tier
)
INSERT INTO metric_counters (agent, model, tier, status, jobs, prompt_tokens,
                             completion_tokens, cached_tokens, cache_hits, cost_usd,
                             cost_saved_usd)
SELECT agent, model, tier, status, sum(jobs), sum(prompt_tokens), sum(completion_tokens),
       sum(cached_tokens), sum(cache_hits), sum(cost_usd), sum(cost_saved_usd)
FROM (
    SELECT agent, coalesce(model, '') AS model, coalesce(tier, '') AS tier, status,
           count(*) AS jobs, sum(prompt_tokens) AS prompt_tokens,
           sum(completion_tokens) AS completion_tokens, sum(cached_tokens) AS cached_tokens,
           count(*) FILTER (WHERE cache_hit) AS cache_hits, sum(cost_usd) AS cost_usd,
           sum(cost_saved_usd) AS cost_saved_usd
    FROM job_ledger
    WHERE timezone('UTC', date_trunc('day', timezone('UTC', created_at)))
          NOT IN (SELECT day FROM purged)
    GROUP BY 1, 2, 3, 4
    UNION ALL
    SELECT agent, model, tier, 'succeeded', jobs - errors, prompt_tokens, completion_tokens,
           0, cache_hits, cost_usd, cost_saved_usd FROM rolled
    UNION ALL
    SELECT agent, model, tier, 'failed', errors, 0, 0, 0, 0, 0, 0 FROM rolled
    WHERE errors > 0
) parts
GROUP BY agent, model, tier, status
"""


def _latency_sql() -> str:
    """Each non-rejected ledger row in its bucket's own range (``workers.accounting.
    counters`` puts a landing row in the same one: ``latency_ms <= le * 1000``)."""
    cases = " ".join(f"WHEN latency_ms <= {b * 1000!r}::float8 THEN {b!r}::float8"
                     for b in BUCKETS_S)
    return f"""
INSERT INTO metric_latency (tier, le, jobs, sum_ms)
SELECT coalesce(tier, ''), CASE {cases} ELSE 'Infinity'::float8 END,
       count(*), sum(latency_ms)
FROM job_ledger WHERE status <> 'rejected'
GROUP BY 1, 2
"""


def upgrade() -> None:
    op.create_table(
        "metric_counters",
        sa.Column("agent", sa.String(200), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("tier", sa.String(40), primary_key=True),
        sa.Column("status", sa.String(16), primary_key=True),
        sa.Column("jobs", sa.BigInteger, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
        sa.Column("cached_tokens", sa.BigInteger, nullable=False),
        sa.Column("cache_hits", sa.BigInteger, nullable=False),
        sa.Column("cost_usd", MONEY, nullable=False),
        sa.Column("cost_saved_usd", MONEY, nullable=False),
    )
    op.create_table(
        "metric_latency",
        sa.Column("tier", sa.String(40), primary_key=True),
        sa.Column("le", sa.Float, primary_key=True),
        sa.Column("jobs", sa.BigInteger, nullable=False),
        sa.Column("sum_ms", sa.Float, nullable=False),
    )
    op.execute(_COUNTERS)
    op.execute(_latency_sql())


def downgrade() -> None:
    op.drop_table("metric_latency")
    op.drop_table("metric_counters")
