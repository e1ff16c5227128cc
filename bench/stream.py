"""Streaming through the fleet, beside streaming straight from the provider: one run.

    python bench/stream.py [--samples 200] [--streams 256] [--first-token-ms 20]
                           [--token-ms 5] [--cancels 5] [--json]

Everything listens on loopback only: an embedded Redis and Postgres in a temp directory
(or REDIS_URL with a dedicated db, ``--redis-db``, flushed before and after; or
DATABASE_URL, already migrated), the provider simulator as its own process, pacing its
streams with ``--first-token-ms`` before the first content delta and ``--token-ms``
between deltas (a delta carries 3 tokens), one real worker process for the tier
(``llmfleet worker --concurrency`` at least ``--streams``) and ``llmfleet api`` with a
fleet key; fleet defaults otherwise (cache and accounting on). Every prompt is unique,
so no cache or coalescing answers for a provider. Phases, in this order:

1. Time to first token, one stream at a time, ``--samples`` per path, the paths
   interleaved (so background load falls on all of them alike): httpx straight at the
   simulator's /v1; the openai SDK straight at it; ``client.stream`` (from submit to the
   first chunk with content); the openai SDK (``stream=True``) at the HTTP API. Each
   stream is read to its end. Goals: fleet p50 at most 3 ms over the direct (httpx)
   p50; the API's p50 at most 1.5x the client's.
2. ``--streams`` streams at once (``client.astream`` from one asyncio loop) on the one
   worker process: every stream's chunk positions 0..n-1 with no gap and in order, its
   text equal to the non-streamed answer of the same prompt (the same jobs again, not
   streamed, ``cache="skip"``; the simulator is deterministic). Goal: 0 lost, 0
   reordered, 0 different.
3. The worker's CPU per delta: its CPU seconds over phase 2 (from /proc) divided by the
   deltas the simulator sent (``GET /_sim/stats/streams``). Goal: at most 0.2 ms. Beside
   it, the marginal figure: minus the CPU the same jobs took not streamed.
4. Cancellation, ``--cancels`` times: a stream of a ``--long-tokens`` answer, closed
   after ``--chunks-before-cancel`` chunks and a pause (0, 1/n, 2/n ... of the half
   second at which a running job looks for its cancel key, so that the samples cover
   that cycle); the time from ``close()`` until the simulator counts that stream
   cancelled (the worker hung up on it). Goal: within 1 s.

Then the ledger: one row per fleet job, the cancelled ones with status "cancelled".
Beside each phase: the CPU of every process in % of one core (2 cores = 200%; "other"
is the rest of the machine: above 25%, figures are low bounds) and the warnings and
errors the worker logged.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the project and bench importable
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import openai  # noqa: E402
import redis  # noqa: E402

from bench._measure import Phase, interruptible, log  # noqa: E402
from bench._rig import GROUPS, LedgerRows, Rig, ledger_rows, percentile, rig  # noqa: E402
from tasks import FleetClient  # noqa: E402
from workers.pipeline.cancel import POLL_S as CANCEL_POLL  # noqa: E402

GOAL_ADDED_TTFT_MS = 3.0
GOAL_API_RATIO = 1.5
GOAL_CPU_PER_DELTA_MS = 0.2
GOAL_CANCEL_S = 1.0
BUSY_OTHER_PCT = 25.0
CANCEL_POLL_S = CANCEL_POLL  # how often a running job looks for its cancel key
PATHS = ("direct_httpx", "direct_sdk", "fleet_client", "api_sdk")
LABELS = {"direct_httpx": "direct to the simulator (httpx)",
          "direct_sdk": "direct to the simulator (openai SDK)",
          "fleet_client": "fleet client.stream",
          "api_sdk": "HTTP API (openai SDK, stream=True)"}
_POOL = ("the", "worker", "writes", "each", "delta", "of", "its", "answer", "to", "a",
         "stream", "and", "agent", "reads", "them", "in", "order", "as", "they", "come")
_TOPICS = ("release notes", "login timeouts", "billing export", "search ranking",
           "cache warm-up", "nightly backups", "audit trail", "webhook retries")


@dataclass
class Options:
    samples: int
    streams: int
    concurrency: int
    first_token_ms: float
    token_ms: float
    max_tokens: int
    words: int
    cancels: int
    long_tokens: int
    chunks_before_cancel: int
    tier: str
    api_processes: int
    redis_db: int
    phase_limit_s: float
    as_json: bool


# -- prompts --------------------------------------------------------------------------------


class Prompts:
    """Unique prompts: short ones for time to first token, longer ones (``words``
    words, answered with about as many tokens) for the concurrent streams, and very
    long words for a long answer (the simulator echoes a prompt's words)."""

    def __init__(self, words: int) -> None:
        self.run = uuid.uuid4().hex[:8]
        self._serial = itertools.count()
        self._words = words

    def short(self, kind: str) -> list[dict[str, str]]:
        n = next(self._serial)
        text = (f"Stream {self.run}-{kind}{n}: summarise the {_TOPICS[n % len(_TOPICS)]} "
                f"of component {n} for the changelog.")
        return [{"role": "user", "content": text}]

    def long(self, kind: str) -> list[dict[str, str]]:
        n = next(self._serial)
        pool = _POOL
        body = " ".join(pool[(n + k) % len(pool)] for k in range(self._words - 2))
        return [{"role": "user", "content": f"Stream {self.run}-{kind}{n}: {body}"}]

    def endless(self) -> list[dict[str, str]]:
        """64 words of 80 hex digits: an answer of about 2,000 tokens."""
        words = " ".join(secrets.token_hex(40) for _ in range(64))
        return [{"role": "user", "content": f"Stream {self.run}-x{next(self._serial)} {words}"}]


# -- phase 1: time to first token ---------------------------------------------------------


@dataclass
class Ttft:
    samples_ms: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PATHS})
    errors: dict[str, Counter[str]] = field(
        default_factory=lambda: {p: Counter() for p in PATHS})
    fleet_jobs: list[str] = field(default_factory=list)  # the samples' jobs
    warm_fleet_jobs: list[str] = field(default_factory=list)
    api_jobs: int = 0  # warm-up included
    cut: bool = False

    def row(self, path: str) -> dict[str, Any]:
        values = self.samples_ms[path]
        return {"samples": len(values), "errors": sum(self.errors[path].values()),
                "error_kinds": dict(self.errors[path]), "p50_ms": _r(percentile(values, 50)),
                "p95_ms": _r(percentile(values, 95)), "max_ms": _r(max(values, default=None))}


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _direct_httpx(http: httpx.Client, url: str, model: str, messages: list[dict[str, str]],
                  max_tokens: int) -> float:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": True}
    started, first = time.perf_counter(), None
    with http.stream("POST", url, json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"error event: {event['error']}")
            if first is None and any(c.get("delta", {}).get("content")
                                     for c in event.get("choices", ())):
                first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("no content")
    return first * 1000


def _sdk(sdk: openai.OpenAI, model: str, messages: Any, max_tokens: int) -> float:
    started, first = time.perf_counter(), None
    stream = sdk.chat.completions.create(model=model, messages=messages,
                                         max_tokens=max_tokens, stream=True)
    with stream:
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("no content")
    return first * 1000


def _fleet(client: FleetClient, tier: str, messages: list[dict[str, str]], max_tokens: int,
           jobs: list[str]) -> float:
    started, first = time.perf_counter(), None
    with client.stream(messages, tier=tier, max_tokens=max_tokens) as stream:
        jobs.append(stream.job_id)
        for chunk in stream:
            if first is None and chunk.content:
                first = time.perf_counter() - started
        stream.result  # noqa: B018  (raises the job's error, if any)
    if first is None:
        raise RuntimeError("no content")
    return first * 1000


def run_ttft(r: Rig, opts: Options, prompts: Prompts, client: FleetClient) -> Ttft:
    assert r.api is not None and r.key is not None
    out, warm = Ttft(), Ttft()
    warm_jobs: list[str] = []
    into = [warm_jobs]  # where the fleet path's job ids go now
    url, model = f"{r.sim}/v1/chat/completions", r.wire_model(opts.tier)
    http = httpx.Client(timeout=30)
    direct_sdk = openai.OpenAI(base_url=f"{r.sim}/v1", api_key="simulated", max_retries=0)
    api_sdk = openai.OpenAI(base_url=f"{r.api}/v1", api_key=r.key, max_retries=0)
    calls = {
        "direct_httpx": lambda: _direct_httpx(http, url, model, prompts.short("d"),
                                              opts.max_tokens),
        "direct_sdk": lambda: _sdk(direct_sdk, model, prompts.short("o"), opts.max_tokens),
        "fleet_client": lambda: _fleet(client, opts.tier, prompts.short("f"),
                                       opts.max_tokens, into[0]),
        "api_sdk": lambda: _sdk(api_sdk, opts.tier, prompts.short("a"), opts.max_tokens),
    }
    end = time.monotonic() + opts.phase_limit_s
    try:
        for round_, target in itertools.chain(((n, warm) for n in range(10)),
                                              ((n, out) for n in range(opts.samples))):
            into[0] = warm_jobs if target is warm else out.fleet_jobs
            for path in PATHS:
                try:
                    target.samples_ms[path].append(calls[path]())
                except Exception as exc:  # counted and shown; the phase goes on
                    target.errors[path][type(exc).__name__] += 1
                target.api_jobs += path == "api_sdk"
            if target is out and time.monotonic() > end:
                out.cut = True
                break
            if round_ % 50 == 49:
                r.check_alive()
    finally:
        http.close()
        direct_sdk.close()
        api_sdk.close()
    out.warm_fleet_jobs = warm_jobs
    out.api_jobs += warm.api_jobs
    return out


# -- phases 2 and 3: many streams at once ----------------------------------------------------


@dataclass
class Streamed:
    job_id: str | None = None
    positions: list[int] = field(default_factory=list)
    text: str = ""
    result: str | None = None  # the job's result's content (after the last chunk)
    ttft_ms: float | None = None
    total_ms: float | None = None
    error: str | None = None


async def _stream_one(client: FleetClient, opts: Options, messages: list[dict[str, str]],
                      jobs: list[str]) -> Streamed:
    out, parts = Streamed(), []
    started = time.perf_counter()
    try:
        stream = await client.astream(messages, tier=opts.tier, max_tokens=4 * opts.words + 64)
        out.job_id = stream.job_id
        jobs.append(stream.job_id)
        async for chunk in stream:
            out.positions.append(chunk.i)
            if chunk.content:
                parts.append(chunk.content)
                if out.ttft_ms is None:
                    out.ttft_ms = (time.perf_counter() - started) * 1000
        out.result = stream.result.content
    except Exception as exc:  # counted per stream
        out.error = type(exc).__name__
    out.text = "".join(parts)
    out.total_ms = (time.perf_counter() - started) * 1000
    return out


async def _answer_one(client: FleetClient, opts: Options,
                      messages: list[dict[str, str]]) -> str | None:
    try:
        result = await client.acomplete(messages, tier=opts.tier,
                                        max_tokens=4 * opts.words + 64, cache="skip")
    except Exception:  # counted as a missing reference
        return None
    return result.content


@dataclass
class Concurrent:
    streams: int
    errors: dict[str, int]
    chunks: int  # content chunks read
    lost_streams: int  # a gap, or no last chunk
    missing_positions: int
    reordered: int
    different: int  # text != the non-streamed answer
    not_result: int  # text != the job's own result
    no_reference: int
    sim: dict[str, int]  # stream counts of the simulator over the phase
    provider_calls: int
    ttft_ms: dict[str, float | None]
    total_ms: dict[str, float | None]
    seconds: float
    worker_cpu_s: float
    reference_worker_cpu_s: float
    reference_seconds: float

    @property
    def cpu_per_delta_ms(self) -> float:
        return 1000 * self.worker_cpu_s / max(self.sim.get("deltas", 0), 1)

    @property
    def marginal_per_delta_ms(self) -> float:
        spent = self.worker_cpu_s - self.reference_worker_cpu_s
        return 1000 * spent / max(self.sim.get("deltas", 0), 1)


def _diff(after: dict[str, Any], before: dict[str, Any]) -> dict[str, int]:
    return {k: int(after[k]) - int(before.get(k, 0)) for k in after
            if isinstance(after[k], int)}


def _wait_spool(r: Rig, limit_s: float = 10) -> None:
    """Let the flusher write the phase's ledger rows before the next phase is measured."""
    from schemas.keys import LEDGER_SPOOL

    client = redis.Redis.from_url(r.found.redis_url)
    deadline = time.monotonic() + limit_s
    try:
        while client.llen(LEDGER_SPOOL) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        client.close()


def run_concurrent(r: Rig, opts: Options, prompts: Prompts, client: FleetClient,
                   phases: dict[str, Phase], jobs: list[str]) -> Concurrent:
    asks = [prompts.long("c") for _ in range(opts.streams)]

    async def streams() -> list[Streamed]:
        return list(await asyncio.gather(*(_stream_one(client, opts, m, jobs) for m in asks)))

    async def answers() -> list[str | None]:
        return list(await asyncio.gather(*(_answer_one(client, opts, m) for m in asks)))

    async def warm_up() -> None:  # a few streams first: connections and pools warm
        await asyncio.gather(*(_stream_one(client, opts, prompts.long("w"), jobs)
                               for _ in range(8)))

    asyncio.run(warm_up())
    _wait_spool(r)
    before, calls = r.stream_stats(), r.sim_stats()["requests"]
    phase = phases["concurrent"] = Phase(f"{opts.streams} streams at once")
    log(f"concurrent: {opts.streams} streams at once")
    with r.observer.measure(phase):
        got = asyncio.run(streams())
    sim = _diff(r.stream_stats(), before)
    provider_calls = r.sim_stats()["requests"] - calls
    _wait_spool(r)
    reference = phases["reference"] = Phase(f"the same {opts.streams} jobs, not streamed")
    log(f"concurrent: the same {opts.streams} jobs, not streamed (cache='skip')")
    with r.observer.measure(reference):
        expected = asyncio.run(answers())
    jobs.extend(["reference"] * opts.streams)  # counted for the ledger (ids unknown)
    _wait_spool(r)

    lost = missing = reordered = different = not_result = no_reference = 0
    errors: Counter[str] = Counter()
    for one, answer in zip(got, expected, strict=True):
        if one.error:
            errors[one.error] += 1
        seen = set(one.positions)
        top = max(seen, default=-1)
        gaps = top + 1 - len(seen)
        missing += gaps
        lost += bool(gaps or one.result is None)
        reordered += one.positions != sorted(one.positions) or len(seen) != len(one.positions)
        if answer is None:
            no_reference += 1
        else:
            different += one.text != answer
        not_result += one.result is not None and one.text != one.result
    ttfts = [s.ttft_ms for s in got if s.ttft_ms is not None]
    totals = [s.total_ms for s in got if s.total_ms is not None and not s.error]
    cpu = r.observer.cpu_s
    return Concurrent(
        streams=len(got), errors=dict(errors),
        chunks=sum(len(s.positions) - (s.result is not None) for s in got),
        lost_streams=lost, missing_positions=missing, reordered=reordered,
        different=different, not_result=not_result, no_reference=no_reference, sim=sim,
        provider_calls=provider_calls,
        ttft_ms={"p50": _r(percentile(ttfts, 50)), "p95": _r(percentile(ttfts, 95))},
        total_ms={"p50": _r(percentile(totals, 50)), "p95": _r(percentile(totals, 95))},
        seconds=phase.seconds, worker_cpu_s=cpu[phase.name]["workers"],
        reference_worker_cpu_s=cpu[reference.name]["workers"],
        reference_seconds=reference.seconds)


# -- phase 4: cancellation ----------------------------------------------------------------


@dataclass
class Cancel:
    job_id: str
    chunks_read: int
    paused_s: float  # between the last chunk read and close()
    seconds_to_cancelled: float | None  # None: the simulator never counted it
    completed_instead: bool


def run_cancels(r: Rig, opts: Options, prompts: Prompts, client: FleetClient,
                phases: dict[str, Phase]) -> list[Cancel]:
    out: list[Cancel] = []
    phase = phases["cancel"] = Phase(f"cancellation x{opts.cancels}")
    log(f"cancellation: {opts.cancels} streams of {opts.long_tokens} tokens, closed after "
        f"{opts.chunks_before_cancel} chunks")
    with r.observer.measure(phase):
        for k in range(opts.cancels):
            before = r.stream_stats()
            stream = client.stream(prompts.endless(), tier=opts.tier,
                                   max_tokens=opts.long_tokens)
            read = 0
            for chunk in stream:
                read += bool(chunk.content)
                if read >= opts.chunks_before_cancel or chunk.last:
                    break
            # the worker looks for a cancel every half second: spread the closes over it
            time.sleep(k * CANCEL_POLL_S / opts.cancels)
            closed = time.perf_counter()
            stream.close()
            seconds: float | None = None
            completed = False
            while time.perf_counter() - closed < 10:
                now = r.stream_stats()
                if now["cancelled"] > before["cancelled"]:
                    seconds = time.perf_counter() - closed
                    break
                if now["completed"] > before["completed"]:
                    completed = True
                    break
                time.sleep(0.005)
            out.append(Cancel(stream.job_id, read, round(k * CANCEL_POLL_S / opts.cancels, 3),
                              seconds, completed))
            time.sleep(0.2)
    return out


# -- the report ----------------------------------------------------------------------------


def verdicts(ttft: Ttft, conc: Concurrent, cancels: list[Cancel]) -> dict[str, Any]:
    direct = percentile(ttft.samples_ms["direct_httpx"], 50)
    fleet = percentile(ttft.samples_ms["fleet_client"], 50)
    api = percentile(ttft.samples_ms["api_sdk"], 50)
    added = None if direct is None or fleet is None else fleet - direct
    ratio = None if api is None or not fleet else api / fleet
    waits = [c.seconds_to_cancelled for c in cancels]
    worst = None if not waits or None in waits else max(w for w in waits if w is not None)
    return {
        "added_ttft_p50_ms": {"value": _r(added), "goal": f"<= {GOAL_ADDED_TTFT_MS:g}",
                              "met": added is not None and added <= GOAL_ADDED_TTFT_MS},
        "lost_or_reordered": {"value": conc.lost_streams + conc.reordered + conc.different,
                              "goal": "0",
                              "met": conc.lost_streams + conc.reordered + conc.different == 0
                              and not conc.errors and not conc.no_reference},
        "worker_cpu_per_delta_ms": {"value": _r(conc.cpu_per_delta_ms, 4),
                                    "goal": f"<= {GOAL_CPU_PER_DELTA_MS:g}",
                                    "met": conc.cpu_per_delta_ms <= GOAL_CPU_PER_DELTA_MS},
        "api_over_client_ttft_p50": {"value": _r(ratio, 3), "goal": f"<= {GOAL_API_RATIO:g}",
                                     "met": ratio is not None and ratio <= GOAL_API_RATIO},
        "cancel_seconds_max": {"value": _r(worst, 3), "goal": f"<= {GOAL_CANCEL_S:g}",
                               "met": worst is not None and worst <= GOAL_CANCEL_S},
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(opts: Options, ttft: Ttft, conc: Concurrent, cancels: list[Cancel],
           phases: dict[str, Phase], goals: dict[str, Any], ledger: LedgerRows,
           ledger_ttft: dict[str, float | None]) -> str:
    lines = [f"llmfleet streaming: simulator {opts.first_token_ms:g} ms to the first token, "
             f"{opts.token_ms:g} ms per delta (3 tokens), 1 worker process x "
             f"{opts.concurrency} threads, API {opts.api_processes} process(es), "
             f"{os.cpu_count()} CPUs, loopback", "",
             f"1. time to first token, one stream at a time, paths interleaved, "
             f"max_tokens {opts.max_tokens}" + (" (cut by --phase-limit)" if ttft.cut else ""),
             f"   {'path':<40}{'n':>5}{'err':>5}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}"]
    for path in PATHS:
        row = ttft.row(path)
        lines.append(f"   {LABELS[path]:<40}{row['samples']:>5}{row['errors']:>5}"
                     f"{_ms(row['p50_ms']):>9}{_ms(row['p95_ms']):>9}{_ms(row['max_ms']):>9}")
        if row["error_kinds"]:
            lines.append(f"      errors: {row['error_kinds']}")
    lines.append(f"   the ledger's ttft_ms of those fleet jobs (submit to the worker's first "
                 f"chunk): p50 {_ms(ledger_ttft['p50'])}, p95 {_ms(ledger_ttft['p95'])}")
    sim = conc.sim
    lines += ["", f"2. {conc.streams} streams at once on one worker process "
              f"({conc.seconds:.2f} s, {sim.get('deltas', 0) / max(conc.seconds, 1e-9):.0f} "
              "deltas/s)",
              f"   simulator: started {sim.get('started')}, completed {sim.get('completed')}, "
              f"failed {sim.get('failed')}, cancelled {sim.get('cancelled')}, deltas "
              f"{sim.get('deltas')}, tokens {sim.get('tokens')}; provider calls "
              f"{conc.provider_calls}",
              f"   chunks read {conc.chunks} (one per delta: "
              f"{'yes' if conc.chunks == sim.get('deltas') else 'NO'}); stream errors "
              f"{conc.errors or 0}",
              f"   lost streams {conc.lost_streams} (missing positions "
              f"{conc.missing_positions}), reordered {conc.reordered}, text != non-streamed "
              f"answer {conc.different}, text != own result {conc.not_result}, no reference "
              f"{conc.no_reference}",
              f"   under load: first token p50 {_ms(conc.ttft_ms['p50'])} ms, p95 "
              f"{_ms(conc.ttft_ms['p95'])} ms; whole stream p50 {_ms(conc.total_ms['p50'])} "
              f"ms, p95 {_ms(conc.total_ms['p95'])} ms",
              "", f"3. worker CPU: {conc.worker_cpu_s:.2f} s streamed, "
              f"{conc.reference_worker_cpu_s:.2f} s for the same jobs not streamed "
              f"({conc.reference_seconds:.2f} s); per delta {conc.cpu_per_delta_ms:.4f} ms, "
              f"marginal over not streamed {conc.marginal_per_delta_ms:.4f} ms",
              "", f"4. cancellation: close() after {opts.chunks_before_cancel} chunks of a "
              f"{opts.long_tokens}-token stream (and a pause, spread over the worker's "
              f"{CANCEL_POLL_S:g} s poll), until the simulator counts it cancelled"]
    for c in cancels:
        row = ledger.jobs.get(c.job_id, {})
        wait = "never" if c.seconds_to_cancelled is None else f"{c.seconds_to_cancelled:.3f} s"
        lines.append(f"   {c.job_id[:12]}  paused {c.paused_s:.2f} s, then {wait:>9}"
                     f"{'  COMPLETED instead' * c.completed_instead}"
                     f"  ledger: {row.get('status', 'NO ROW')}, {row.get('error')}, "
                     f"{row.get('completion_tokens')} tokens billed, ${row.get('cost_usd')}")
    lines += ["", f"   {'phase':<34}{'secs':>7}{'wlog':>6}   cpu %: " + "/".join(GROUPS)]
    for phase in phases.values():
        cpu = "/".join(f"{phase.cpu.get(k, 0):.0f}" for k in GROUPS)
        lines.append(f"   {phase.name:<34}{phase.seconds:>7.2f}"
                     f"{sum(phase.worker_log.values()):>6}   {cpu}")
        for message, count in phase.worker_log.most_common(3):
            lines.append(f"      worker log x{count}: {message}")

    def mark(name: str) -> str:
        goal = goals[name]
        return f"{'-' if goal['value'] is None else goal['value']!s:>9}   goal " \
               f"{goal['goal']:<7} {'met' if goal['met'] else 'NOT met'}"

    lines += ["", f"fleet p50 TTFT over direct (ms)      {mark('added_ttft_p50_ms')}",
              f"lost+reordered+different streams     {mark('lost_or_reordered')}",
              f"worker CPU per delta (ms)            {mark('worker_cpu_per_delta_ms')}",
              f"API p50 TTFT / client p50            {mark('api_over_client_ttft_p50')}",
              f"cancel to provider hang-up, max (s)  {mark('cancel_seconds_max')}",
              ledger.line()]
    cancelled = sum(ledger.jobs.get(c.job_id, {}).get("status") == "cancelled" for c in cancels)
    lines.append(f"cancelled jobs with status 'cancelled': {cancelled} of {len(cancels)}")
    busy = max((p.cpu.get("other", 0) for p in phases.values()), default=0)
    if busy > BUSY_OTHER_PCT:
        lines.append(f"note: other work used up to {busy:.0f}% of a core during a phase: "
                     "these figures are low bounds")
    return "\n".join(lines)


def _ledger_ttft(r: Rig, jobs: list[str]) -> dict[str, float | None]:
    from sqlalchemy import select

    from schemas.tables import job_ledger
    from workers.store.engines import sync_engine

    with sync_engine(r.found.database_url).connect() as connection:
        values = [float(v) for v in connection.execute(
            select(job_ledger.c.ttft_ms).where(job_ledger.c.job_id.in_(jobs),
                                               job_ledger.c.ttft_ms.is_not(None))).scalars()]
    return {"p50": _r(percentile(values, 50)), "p95": _r(percentile(values, 95))}


def run(opts: Options) -> int:
    prompts = Prompts(opts.words)
    agent = f"bench-stream-{prompts.run}"
    sim_config = {"first_token_ms": opts.first_token_ms, "token_ms": opts.token_ms}
    phases: dict[str, Phase] = {}
    with rig(agent=agent, tier=opts.tier, concurrency=opts.concurrency, sim_config=sim_config,
             api_processes=opts.api_processes, redis_db=opts.redis_db) as r:
        client = r.client()
        ttft_phase = phases["ttft"] = Phase("time to first token")
        log(f"time to first token: {opts.samples} samples per path, interleaved")
        with r.observer.measure(ttft_phase):
            ttft = run_ttft(r, opts, prompts, client)
        _wait_spool(r)
        concurrent_jobs: list[str] = []
        conc = run_concurrent(r, opts, prompts, client, phases, concurrent_jobs)
        cancels = run_cancels(r, opts, prompts, client, phases)
        r.check_alive()
        log("checking the ledger")
        expected = (len(ttft.fleet_jobs) + len(ttft.warm_fleet_jobs) + ttft.api_jobs
                    + len(concurrent_jobs) + len(cancels))
        ledger = ledger_rows(r.found, agent, expected, [c.job_id for c in cancels])
        ledger_ttft = _ledger_ttft(r, ttft.fleet_jobs)
    goals = verdicts(ttft, conc, cancels)
    table = render(opts, ttft, conc, cancels, phases, goals, ledger, ledger_ttft)
    if not opts.as_json:
        print(table)
        return 0
    log(table)
    config = {k: v for k, v in asdict(opts).items() if k != "as_json"}
    print(json.dumps({
        "config": config, "cpus": os.cpu_count(), "goals": goals,
        "ttft": {p: ttft.row(p) for p in PATHS} | {"ledger_ttft_ms": ledger_ttft,
                                                    "cut": ttft.cut},
        "concurrent": asdict(conc) | {"cpu_per_delta_ms": round(conc.cpu_per_delta_ms, 4),
                                      "marginal_per_delta_ms":
                                          round(conc.marginal_per_delta_ms, 4)},
        "cancels": [asdict(c) | {"ledger": ledger.jobs.get(c.job_id)} for c in cancels],
        "ledger": {k: v for k, v in asdict(ledger).items() if k != "jobs"} | {"ok": ledger.ok},
        "phases": {k: p.to_json() for k, p in phases.items()}}, indent=2, default=str))
    return 0


def parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        epilog=(__doc__ or "").split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--samples", type=int, default=200, help="time-to-first-token samples per path")
    add("--streams", type=int, default=256, help="streams at once in phase 2")
    add("--concurrency", type=int, default=None,
        help="worker pool threads (default: --streams, at least 256)")
    add("--first-token-ms", type=float, default=20.0,
        help="the simulator's wait before a stream's first content delta")
    add("--token-ms", type=float, default=5.0,
        help="the simulator's wait between deltas (each of 3 tokens)")
    add("--max-tokens", type=int, default=30, help="max_tokens of the phase-1 streams")
    add("--words", type=int, default=60,
        help="words of the phase-2 prompts (the answers echo them: about as many tokens)")
    add("--cancels", type=int, default=5, help="streams cancelled in phase 4")
    add("--long-tokens", type=int, default=2000, help="max_tokens of the cancelled streams")
    add("--chunks-before-cancel", type=int, default=5,
        help="content chunks read before closing a stream in phase 4")
    add("--tier", default="simple", help="the tier the jobs go to")
    add("--api-workers", type=int, default=1, help="processes of llmfleet api")
    add("--redis-db", type=int, default=15, help="db used (and flushed) when REDIS_URL is set")
    add("--phase-limit", type=float, default=300.0, help="seconds after which phase 1 stops")
    add("--json", action="store_true", help="print JSON on stdout (the table on stderr)")
    ns = parser.parse_args(argv)
    for name in ("samples", "streams", "max_tokens", "cancels", "long_tokens",
                 "chunks_before_cancel", "api_workers"):
        if getattr(ns, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 3 <= ns.words <= 64:
        parser.error("--words must be between 3 and 64 (the simulator echoes up to 64)")
    return Options(samples=ns.samples, streams=ns.streams,
                   concurrency=ns.concurrency or max(256, ns.streams),
                   first_token_ms=ns.first_token_ms, token_ms=ns.token_ms,
                   max_tokens=ns.max_tokens, words=ns.words, cancels=ns.cancels,
                   long_tokens=ns.long_tokens, chunks_before_cancel=ns.chunks_before_cancel,
                   tier=ns.tier, api_processes=ns.api_workers, redis_db=ns.redis_db,
                   phase_limit_s=ns.phase_limit, as_json=ns.json)


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    code = interruptible(lambda: run(opts))
    return 130 if code is None else code


if __name__ == "__main__":
    sys.exit(main())
