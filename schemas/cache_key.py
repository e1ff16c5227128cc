"""The response cache's key, entry and policy: pure functions both sides compute alike.

The client's short-circuit (``tasks._cache``) and the worker's ``CacheStep`` must agree
to the byte on which requests are "the same", so both take the key from here. It is
the sha256 of a canonical JSON (sorted keys, fixed separators: identical in every
process, unlike ``hash()``) of everything that changes the answer: the model that would
answer (the chain's first), the messages, max_tokens and the sampling options; and of
nothing that does not (agent, user, job id, metadata, timestamps), so that every agent
shares one cache. No I/O here: the Lua below is text both sides send to Redis.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from schemas.chat import Message, ToolCall
from schemas.config import CacheConfig, FleetConfig
from schemas.jobs import CompletionJob, CompletionResult, Usage
from schemas.settings import Settings

__all__ = [
    "KEY_VERSION",
    "LOOKUP_LUA",
    "CacheMode",
    "CachedAnswer",
    "cache_enabled",
    "cache_key",
    "cache_mode",
    "canonical_hash",
    "effective_max_tokens",
    "entry_lookup_lua",
    "is_cacheable",
]

#: Part of every key: bump it when the entry's shape or the key's inputs change, and
#: old entries are simply never found again (they expire on their own).
KEY_VERSION = 2

CacheMode = Literal["use", "skip", "refresh"]

def entry_lookup_lua(entry: str, index: str) -> str:
    """Lua that reads the cache entry at ``entry`` into ``found`` (a local the caller
    declares) and marks it used in
    the LRU ``index`` (both key expressions, such as ``KEYS[1]``); a miss drops the key
    from the index (it expired). The Redis clock scores the index, so workers and agents
    on machines with skewed clocks agree. Every lookup script embeds this one."""
    return f"""
found = redis.call('GET', {entry})
if found then
  local t = redis.call('TIME')
  redis.call('ZADD', {index}, t[1] * 1000 + math.floor(t[2] / 1000), {entry})
else
  redis.call('ZREM', {index}, {entry})
end
"""


#: Read an entry and mark it used. KEYS: the entry, the LRU index. Returns the entry
#: or nil.
LOOKUP_LUA = "local found" + entry_lookup_lua("KEYS[1]", "KEYS[2]") + "return found\n"

#: Finish reasons whose answer is not the whole answer: never cached.
_INCOMPLETE = frozenset({"length", "content_filter"})


def canonical_hash(data: Any) -> str:
    """sha256 hex of ``data`` as canonical JSON."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_key(model: str, job: CompletionJob, max_tokens: int) -> str:
    """The key of ``job``'s answer by ``model`` (the chain's first) within
    ``max_tokens`` (as resolved: the job's, else the tier's, else the fleet's)."""
    return canonical_hash({
        "v": KEY_VERSION,
        "model": model,
        "messages": [_keyed(m) for m in job.messages],
        "max_tokens": max_tokens,
        "sampling": job.sampling(),
        "options": job.options(),  # tools, tool choice, response format
    })


def _keyed(message: Message) -> dict[str, Any]:
    """A message as its key sees it: an inline image by its bytes' sha256, not its
    megabytes of base64."""
    data = message.model_dump(mode="json", exclude_none=True)
    for part in data["content"] if isinstance(data.get("content"), list) else ():
        url = part.get("image_url", {}).get("url", "")
        if url.startswith("data:"):
            part["image_url"]["url"] = "sha256:" + hashlib.sha256(url.encode()).hexdigest()
    return data


def effective_max_tokens(fleet: FleetConfig, tier: str, job: CompletionJob) -> int:
    """The output limit the worker will apply (``Pipeline.context`` resolves it alike)."""
    return (job.max_tokens or fleet.tiers[tier].default_max_tokens
            or fleet.default_max_tokens)


def cache_enabled(settings: Settings) -> bool:
    """ENABLE_LLM_CACHE, and room to keep something for some time: CACHE_MAX_SIZE=0 or
    CACHE_TTL_SECONDS=0 turn the cache off as well."""
    return (settings.enable_llm_cache and settings.cache_max_size > 0
            and settings.cache_ttl_seconds > 0)


def cache_mode(job: CompletionJob, config: CacheConfig, enabled: bool) -> CacheMode:
    """How ``job`` uses the cache. Off (ENABLE_LLM_CACHE=false) is "skip"; the job's own
    choice wins; else a job sampled above ``max_temperature`` skips the cache (its
    caller wants a fresh draw, and its draw would only crowd out reusable answers).
    An unset temperature counts as 0: it is the provider's default, not a request
    for variety."""
    if not enabled:
        return "skip"
    if job.cache is not None:
        return job.cache
    return "skip" if (job.temperature or 0.0) > config.max_temperature else "use"


def is_cacheable(result: CompletionResult, model: str) -> bool:
    """Only whole answers of the model the key names: not truncated or filtered, and
    not a fallback model's answer (a later request may well reach the first model)."""
    return (result.finish_reason not in _INCOMPLETE and not result.fallback_used
            and result.model == model and not result.cache_hit)


class CachedAnswer(BaseModel):
    """What the cache keeps of an answer: enough to rebuild a result for any job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    content: str
    finish_reason: str | None = None
    tool_calls: list[ToolCall] | None = None
    parsed: Any = None
    model: str
    provider: str
    usage: Usage
    #: What the answer cost when a provider gave it: what each hit saves.
    cost_usd: float
    #: Epoch seconds when it was stored.
    stored_at: float

    @classmethod
    def of(cls, result: CompletionResult) -> CachedAnswer:
        return cls(content=result.content, finish_reason=result.finish_reason,
                   tool_calls=result.tool_calls, parsed=result.parsed, model=result.model,
                   provider=result.provider, usage=result.usage, cost_usd=result.cost_usd,
                   stored_at=time.time())

    def result_for(self, job: CompletionJob, tier: str | None) -> CompletionResult:
        """This answer as ``job``'s result: its own id, tier, agent and user, no cost,
        no provider call, latency from its submission."""
        latency = round(max(0.0, time.time() - job.submitted_at) * 1000, 3)
        return CompletionResult(
            job_id=job.job_id, content=self.content, finish_reason=self.finish_reason,
            tool_calls=self.tool_calls, parsed=self.parsed, model=self.model,
            provider=self.provider, tier=tier, requested_model=job.model, agent=job.agent,
            user=job.user, usage=self.usage, cost_usd=0.0, latency_ms=latency, cache_hit=True)
