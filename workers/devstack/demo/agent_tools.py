"""The demo's agent with tools: a planner that calls a calculator and a search of the RAG
store in a loop through the queue, step by step, then a streamed answer showing its
time to first token."""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from tasks import AgentStep, ContextRetriever, FleetAgent, FleetClient
from tasks.vectors import PgVectorStore
from workers.devstack.demo.rag import COLLECTION

__all__ = ["run_tool_agent_demo"]

TASK = ("Retries of a flaky route: use multiply for 3 attempts times a 0.5 s backoff, "
        "and search_docs for how Quillstack configures them.")


def multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b


def run_tool_agent_demo(client: FleetClient, database_url: str, console: Console) -> None:
    """One tool loop (the model asks for both tools, reads their results, answers), then
    one streamed answer."""
    console.rule("[bold]An agent with tools: a calculator and the RAG store")
    with PgVectorStore(database_url) as store:
        rag = ContextRetriever(COLLECTION, client=client, store=store)

        def search_docs(query: str) -> str:
            """Search the Quillstack documentation; returns the best passage."""
            return rag.retrieve_and_format(query, top_k=1)

        agent = FleetAgent(client, name="planner-tools", tier="medium")
        console.print(f"Task: [italic]{TASK}[/]")
        run = agent.run(TASK, tools=[multiply, search_docs], max_steps=4,
                        on_step=lambda step: _show_step(step, console), timeout=90)
    console.print(f"Answer after {len(run.steps)} tool step(s) ({run.result.model}): "
                  f"{run.answer[:300]}")
    console.print(f"The run's cost: [bold]${run.cost_usd:.6f}[/] over {len(run.steps) + 1} "
                  f"jobs")
    _stream_once(client, console)


def _show_step(step: AgentStep, console: Console) -> None:
    table = Table(title=f"Step {step.index}: {step.result.model}, "
                        f"${step.result.cost_usd:.6f}", title_justify="left")
    for column in ("tool", "arguments", "result"):
        table.add_column(column, overflow="fold")
    for outcome in step.outcomes:
        shown = outcome.output if len(outcome.output) < 120 else outcome.output[:117] + "..."
        table.add_row(outcome.call.name, outcome.call.function.arguments,
                      ("[red]failed: [/]" if outcome.failed else "") + shown)
    console.print(table)


def _stream_once(client: FleetClient, console: Console) -> None:
    started = time.monotonic()
    stream = client.stream("Summarise in one sentence why retries need backoff.",
                           tier="simple", agent="planner-tools", cache="skip", timeout=90)
    first: float | None = None
    chunks = 0
    for _chunk in stream:
        first = first if first is not None else time.monotonic() - started
        chunks += 1
    total = time.monotonic() - started
    console.print(f"Streamed answer: {chunks} chunks, first after "
                  f"{(first or 0) * 1000:.0f} ms, whole after {total * 1000:.0f} ms "
                  f"(${stream.result.cost_usd:.6f})")
