"""The agent base class: an agent that calls LLMs through the fleet.

It takes the place of an in-process "enhanced base agent" (client + cache + cost
tracker in every process): caching, budgets and accounting live in the fleet, so the
agent keeps only its name, its default tier and a tally of what its calls cost.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from schemas import CompletionResult, FleetError, MaxStepsExceededError, Priority
from tasks.client import FleetClient
from tasks.retriever import ContextRetriever
from tasks.tools import ToolBox, ToolLike, ToolOutcome

__all__ = ["AgentRun", "AgentStats", "AgentStep", "FleetAgent"]


@dataclass(frozen=True)
class AgentStep:
    """One turn of a tool loop: the model's answer and the tool calls it asked for."""

    index: int
    result: CompletionResult
    outcomes: list[ToolOutcome]


@dataclass(frozen=True)
class AgentRun:
    """A tool loop's end: the final answer, every step before it, what it all cost."""

    answer: str
    result: CompletionResult
    steps: list[AgentStep]
    cost_usd: float
    messages: list[dict[str, Any]]


@dataclass
class AgentStats:
    """What one agent object's calls came to (this process only)."""

    jobs: int = 0
    cache_hits: int = 0
    fallbacks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_cost_usd: float = 0.0

    @property
    def cache_hit_rate(self) -> float:
        return self.cache_hits / self.jobs if self.jobs else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"jobs": self.jobs, "cache_hits": self.cache_hits,
                "cache_hit_rate": round(self.cache_hit_rate, 4), "fallbacks": self.fallbacks,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_cost_usd": round(self.total_cost_usd, 6)}


class FleetAgent:
    """Subclass it, set ``name`` and ``tier``, and call ``call_llm``."""

    name: str = "agent"
    tier: str = "simple"
    system_prompt: str | None = None
    #: The queue priority of the agent's jobs (``high`` for an agent a person waits on).
    priority: Priority = "normal"

    def __init__(self, client: FleetClient | None = None, *, name: str | None = None,
                 user: str | None = None, tier: str | None = None,
                 priority: Priority | None = None) -> None:
        self.name = name or self.name
        self.tier = tier or self.tier
        self.priority = priority or self.priority
        self.user = user
        self.client = client or FleetClient(agent=self.name)
        self._stats = AgentStats()
        self._lock = threading.Lock()
        self._retrievers: dict[str, ContextRetriever] = {}

    def rag(self, collection: str, **options: Any) -> ContextRetriever:
        """The agent's retriever over ``collection``, built on first use with the
        agent's client (``options`` as ContextRetriever's, used that first time)."""
        with self._lock:
            if collection not in self._retrievers:
                self._retrievers[collection] = ContextRetriever(
                    collection, client=self.client, **options)
            return self._retrievers[collection]

    def _messages(self, prompt: str | Sequence[Mapping[str, Any]] | None,
                  system: str | None) -> list[Mapping[str, Any]] | None:
        if prompt is None:  # a template (or an experiment's) renders the messages
            return None
        if not isinstance(prompt, str):
            return list(prompt)
        messages: list[Mapping[str, Any]] = []
        system = system if system is not None else self.system_prompt
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": prompt})
        return messages

    def _options(self, options: dict[str, Any]) -> dict[str, Any]:
        options.setdefault("agent", self.name)
        options.setdefault("user", self.user)
        options.setdefault("priority", self.priority)
        if "model" not in options:
            options.setdefault("tier", self.tier)
        return options

    def call_llm(self, prompt: str | Sequence[Mapping[str, Any]] | None = None, *,
                 system: str | None = None, timeout: float = 60,
                 **options: Any) -> CompletionResult:
        """One completion through the fleet: a prompt string (with the agent's system
        prompt), a message list, or none with ``template=``/``variables=`` or
        ``experiment=`` (the stored template's text is the whole prompt). Raises the
        fleet's typed errors."""
        result = self.client.complete(self._messages(prompt, system), timeout=timeout,
                                      **self._options(options))
        self._tally(result)
        return result

    async def acall_llm(self, prompt: str | Sequence[Mapping[str, Any]] | None = None, *,
                        system: str | None = None, timeout: float = 60,
                        **options: Any) -> CompletionResult:
        result = await self.client.acomplete(self._messages(prompt, system), timeout=timeout,
                                             **self._options(options))
        self._tally(result)
        return result

    def run(self, task: str | Sequence[Mapping[str, Any]], *, tools: Sequence[ToolLike],
            max_steps: int = 8, system: str | None = None, timeout: float = 60,
            on_step: Callable[[AgentStep], None] | None = None, **options: Any) -> AgentRun:
        """``arun`` for code without an event loop of its own."""
        return asyncio.run(self.arun(task, tools=tools, max_steps=max_steps, system=system,
                                     timeout=timeout, on_step=on_step, **options))

    async def arun(self, task: str | Sequence[Mapping[str, Any]], *,
                   tools: Sequence[ToolLike], max_steps: int = 8, system: str | None = None,
                   timeout: float = 60, on_step: Callable[[AgentStep], None] | None = None,
                   **options: Any) -> AgentRun:
        """A tool loop through the fleet: send the conversation with the tools (plain
        Python functions, sync or async, are tools: their schema comes from their type
        hints and docstring), run the calls the model asks for (several at once when it
        asks for several), feed their results back, until the model answers in text.
        A tool that raises is reported to the model as that tool's result. After
        ``max_steps`` answers that still ask for tools: MaxStepsExceededError."""
        box = ToolBox(tools)
        messages = [dict(m) for m in self._messages(task, system) or ()]
        steps: list[AgentStep] = []
        cost = 0.0
        for index in range(1, max_steps + 1):
            result = await self.acall_llm(messages, timeout=timeout, tools=box.specs,
                                          **options)
            cost += result.cost_usd
            if not result.tool_calls:
                return AgentRun(answer=result.content, result=result, steps=steps,
                                cost_usd=round(cost, 10), messages=messages)
            outcomes = await box.run(result.tool_calls)
            steps.append(AgentStep(index, result, outcomes))
            if on_step is not None:
                on_step(steps[-1])
            messages += [result.message(), *(o.message() for o in outcomes)]
        raise MaxStepsExceededError(
            f"agent {self.name!r}: no answer after {max_steps} steps (the model still asks "
            "for tools)", steps=max_steps, cost_usd=round(cost, 10))

    def _tally(self, result: CompletionResult) -> None:
        with self._lock:
            stats = self._stats
            stats.jobs += 1
            stats.cache_hits += result.cache_hit
            stats.fallbacks += result.fallback_used
            stats.prompt_tokens += result.usage.prompt_tokens
            stats.completion_tokens += result.usage.completion_tokens
            stats.total_cost_usd += result.cost_usd

    def get_agent_stats(self, *, since: str | None = None,
                        timeout: float = 10) -> dict[str, Any]:
        """Jobs, tokens, total cost, cache hit rate and errors of this agent, from the
        fleet's ledger (every process and machine), with ``"source": "ledger"``. When
        the ledger cannot answer (no worker, accounting off), the figures of this
        object's own calls, with ``"source": "process"``. ``since``: an ISO time. Rows
        reach the ledger within about a second of a job's end."""
        try:
            stats = self.client.agent_stats(self.name, since=since, timeout=timeout)
        except FleetError:
            stats = {"skipped": "the ledger did not answer"}
        if "skipped" not in stats:
            return {**stats, "source": "ledger"}
        with self._lock:
            return {"agent": self.name, **self._stats.as_dict(), "source": "process"}
