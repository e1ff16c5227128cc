"""Every Redis key the fleet writes, with its expiry, in one place (as arq's constants).

Here, in ``schemas``, because both sides write some: the client's cache short-circuit
leaves its ledger row in the spool like a worker does.
"""

from __future__ import annotations

__all__ = [
    "AUTH_FAILURES",
    "BATCH_LOCK",
    "BATCH_WAITING",
    "BEAT_LAST_RUN",
    "BREAKER_CALLS",
    "BREAKER_FAILURES",
    "BREAKER_OPEN",
    "BUDGET",
    "BUDGET_SETTLED",
    "CACHE_EMBEDDING",
    "CACHE_ENTRY",
    "CACHE_LOCK",
    "CACHE_LRU",
    "CACHE_SEMANTIC",
    "CANCEL",
    "DASHBOARD_LOGGED_OUT",
    "IDEMPOTENCY",
    "JOB_STATE",
    "JOB_WAKE",
    "LEDGER_DEAD_LETTERS",
    "LEDGER_FLUSH_LOCK",
    "LEDGER_SPOOL",
    "LIMIT_INFLIGHT",
    "LIMIT_RATE",
    "LIMIT_STATS",
    "PARKED",
    "PARKED_JOBS",
    "PREFIX",
    "QUOTA_HOLD",
    "QUOTA_RATE",
    "REPLY",
    "REQUEST_ATTEMPT",
    "RUN_LEASE",
    "STREAM",
    "SWEEP_LOCK",
    "WORKERS",
]

#: Every key of ours starts here, apart from Celery's own (``celery-task-meta-*``).
PREFIX = "llmfleet:"

#: Transient failures of a route (``provider:model``) in one window (``bucket`` is the
#: window's number since the epoch), across workers; expires after two windows.
BREAKER_FAILURES = PREFIX + "breaker:failures:{route}:{bucket}"
#: All calls of a route in one window; expires after two windows.
BREAKER_CALLS = PREFIX + "breaker:calls:{route}:{bucket}"
#: Present while a route is in cool-down; expires after ``cooldown_s``.
BREAKER_OPEN = PREFIX + "breaker:open:{route}"

#: Epoch seconds of beat's last heartbeat; no expiry.
BEAT_LAST_RUN = PREFIX + "beat:last_run"

#: Ledger rows (LedgerRow JSON) waiting for Postgres; a list, drained in order by one
#: flusher at a time. No expiry: Redis' append-only file keeps it across restarts.
LEDGER_SPOOL = PREFIX + "ledger:spool"
#: Held by the worker draining the spool; expires after 10 s if that worker dies.
LEDGER_FLUSH_LOCK = PREFIX + "ledger:flush-lock"
#: Rows Postgres refused (a value it cannot store), each as {"row", "reason", "at"} JSON,
#: kept apart so that every other row lands; no expiry: an operator lists them with
#: `llmfleet ledger dead-letters` and moves them back with `llmfleet ledger replay`.
LEDGER_DEAD_LETTERS = PREFIX + "ledger:dead-letters"
#: A job's state: ``run:<token>`` while a delivery runs it (a lease its worker renews,
#: expiring 15 s after that worker stops renewing it, so a second delivery waits for
#: the first's outcome and takes over only from a dead worker); ``batch:waiting``
#: (BATCH_WAITING) while it waits for a provider batch, until its deadline and a day (a
#: redelivered message does not defer it twice; the batch's answer and the live run
#: each swap it for their lease, and one of them wins); ``cancelled`` when an
#: agent cancelled it before it started (an hour); then its outcome envelope (JSON, a
#: day), which answers waiters, redeliveries and identical jobs that followed it.
JOB_STATE = PREFIX + "job:{job_id}"
#: The value of a job's JOB_STATE while it waits for a provider batch.
BATCH_WAITING = "batch:waiting"
#: How a job's JOB_STATE begins while a delivery holds its lease (``run:<token>``).
RUN_LEASE = "run:"
#: Held by the one batcher at work fleet-wide (``workers.batching``), renewed while it
#: works; expires a few seconds after its holder died.
BATCH_LOCK = PREFIX + "batch:lock"
#: Pub/sub channel (not a key) published when a job's outcome is stored: wakes a
#: second delivery, the jobs that followed it, and agents waiting for a job they did not
#: send.
JOB_WAKE = PREFIX + "job-wake:{job_id}"
#: Pub/sub channel (not a key) of one client: every job it sends names it, and the
#: worker publishes the job's outcome there (``<len(job id)>:<job id><outcome JSON>``),
#: so one subscription answers all of a client's waits.
REPLY = PREFIX + "reply:{client}"
#: The request body's hash first sent with an Idempotency-Key (``key`` is the key's
#: sha256) by a fleet key (``key_id``); its job's id derives from both. Expires after
#: 24 h, with the job's result (``workers.api.idempotency``).
IDEMPOTENCY = PREFIX + "idempotency:{key_id}:{key}"
#: The job an SDK's first attempt at a request started (``body`` is the body's sha256),
#: so that its automatic retries attach to it; expires with the job's lifetime.
REQUEST_ATTEMPT = PREFIX + "request:{key_id}:{body}"
#: A streamed job's chunks (``schemas.streaming.StreamChunk`` JSON under field ``c``), a
#: Redis Stream bounded in length; expires 10 minutes after its last chunk.
STREAM = PREFIX + "stream:{job_id}"
#: Set by an agent that cancels a job; the job's worker refuses it before it starts, or
#: stops it in flight within a second. Expires after an hour.
CANCEL = PREFIX + "cancel:{job_id}"

#: A budget's fast counter for one period (``period`` is its start, ISO): a hash with
#: ``spent`` (nano-USD) and one ``r:<job_id>`` field per live reservation
#: ("<nano-USD>:<expiry epoch>"); expires a day after the period ends.
BUDGET = PREFIX + "budget:{name}:{period}"
#: Marks a job's spend as added to its budgets, so a redelivery never adds it twice;
#: expires after 2 days.
BUDGET_SETTLED = PREFIX + "budget:settled:{job_id}"

#: One cached answer (CachedAnswer JSON) under the sha256 of its request
#: (``schemas.cache_key``); expires CACHE_TTL_SECONDS after it was written.
CACHE_ENTRY = PREFIX + "cache:entry:{key}"
#: The cache's LRU index: a sorted set of CACHE_ENTRY keys scored by last use (ms, Redis
#: clock); beyond CACHE_MAX_SIZE members the least recently used entries are deleted.
#: Expires CACHE_TTL_SECONDS after the last write (every entry has expired by then).
CACHE_LRU = PREFIX + "cache:lru"
#: Held (its job's id) by the one job calling a provider for a cache key while identical
#: jobs follow it (reading its JOB_STATE, woken on its JOB_WAKE); expires 5 s after its
#: holder last refreshed it, so a dead holder's followers take over, and until then a
#: job just like a finished holder takes that holder's answer.
CACHE_LOCK = PREFIX + "cache:lock:{key}"
#: The semantic cache of one scope (model, sampling, max_tokens and the conversation
#: before its last user message): a hash of CACHE_ENTRY key -> embedding (float32
#: bytes); expires CACHE_TTL_SECONDS after its last write.
CACHE_SEMANTIC = PREFIX + "cache:semantic:{scope}"
#: One text's embedding (little-endian float32 bytes) under the sha256 of (model,
#: dimensions, text) (``workers.caching.embeddings``); expires CACHE_TTL_SECONDS after it was
#: written, so that re-embedding a known text costs no provider call meanwhile.
CACHE_EMBEDDING = PREFIX + "cache:embedding:{key}"

#: A dashboard session ended by logout (``nonce`` is its token's), refused from then on;
#: expires when the token itself would have (``workers.api.sessions``).
DASHBOARD_LOGGED_OUT = PREFIX + "dashboard:logged-out:{nonce}"

#: Failed authentications (a wrong fleet key, admin key or dashboard login) from one
#: client address in the current window, across API processes; while it holds the
#: limit, that address's attempts answer 429 (``workers.api.auth_guard``). Expires a
#: window after its first failure.
AUTH_FAILURES = PREFIX + "auth:failures:{address}"

#: A rate's theoretical arrival time (GCRA, ms on Redis' clock) for one limit (``name``:
#: a ``[[limits]]`` name, or ``key-<id>`` for a fleet key's own) and ``kind`` (rpm or
#: tpm); expires once the rate is back to idle.
LIMIT_RATE = PREFIX + "limit:{name}:{kind}"
#: The jobs in flight under a limit's ``concurrency``: a sorted set of job ids scored
#: by their lease's end (ms), so a job whose end never came frees its place then.
LIMIT_INFLIGHT = PREFIX + "limit:{name}:inflight"
#: A provider quota's rate, as LIMIT_RATE, per ``owner`` (``model:<name>`` or
#: ``provider:<name>``) and ``kind`` (rpm or tpm).
QUOTA_RATE = PREFIX + "quota:{owner}:{kind}"
#: Present while a provider's 429 holds a quota's ``owner`` off (its Retry-After):
#: calls already admitted wait for it too.
QUOTA_HOLD = PREFIX + "quota:{owner}:hold"
#: Held by the one worker sweeping the messages of dead workers back to their queues
#: (``workers.recovery``); expires after one sweep's interval.
SWEEP_LOCK = PREFIX + "recovery:sweep-lock"
#: Worker heartbeats: a hash of worker process name -> JSON {"at": epoch seconds,
#: "tags": delivery tags of the messages it holds}, written every sweep interval.
WORKERS = PREFIX + "recovery:workers"
#: Counters per limit and quota, "<name>:admitted|delayed|rejected"; no expiry.
LIMIT_STATS = PREFIX + "limit:stats"
#: Jobs held until a limit or a quota lets them go: a sorted set of job ids scored by
#: when they are due (ms); a mover in every worker sends the due ones to their queue,
#: holding each under a lease (its score pushed ahead) until sent. No expiry.
PARKED = PREFIX + "parked"
#: The held jobs' messages (job id -> {"task", "queue", "args"} JSON); no expiry.
PARKED_JOBS = PREFIX + "parked:jobs"
