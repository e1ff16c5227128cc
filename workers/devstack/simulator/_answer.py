"""What to answer, whatever the wire format: text, JSON or tool calls.

Each route turns its request into an `Ask`; `compose` makes the `Answer`, which the
route renders as one response or as a stream. Everything but the ids and the
malformed_rate draws is a pure function of the request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from ._config import SimState
from ._schema_instances import broken, instance, violate
from ._text import Reply, count_tokens, cut_reply, make_reply, words_of
from ._tools import Call, Mode, Tool, choose, make_call, results_text

Json = dict[str, Any]
Finish = Literal["stop", "length", "tool_calls"]


@dataclass(slots=True)
class Ask:
    """A validated chat request, as the answer needs it."""

    model: str
    messages: list[Json]  # what make_reply hashes and echoes
    limit: int | None = None  # max_tokens
    stop: list[str] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    mode: Mode = "auto"
    forced: str | None = None
    parallel: bool = True
    prompt: str | None = None  # the last user message's text, when it is the last message
    results: list[tuple[str, str]] | None = None  # (tool, content) when results come last
    output: Literal["text", "json_object", "json_schema"] = "text"
    schema: Json | None = None
    strict: bool = False


@dataclass(slots=True)
class Answer:
    text: str | None  # None: tool calls only (OpenAI's null content)
    calls: list[Call]
    tokens: int
    finish: Finish  # OpenAI's words; Anthropic's route translates them
    stop_sequence: str | None = None


def _words(ask: Ask) -> list[str]:
    if ask.results is not None:
        return words_of(" ".join(content for _, content in ask.results))
    if ask.prompt:
        return words_of(ask.prompt)
    return words_of(" ".join(str(m.get("content") or "") for m in ask.messages
                             if isinstance(m.get("content"), str)))


def _json_text(ask: Ask, state: SimState) -> str:
    """The structured answer: a document for the schema, or {"answer": ...}."""
    if ask.output == "json_schema":
        schema: Json = ask.schema or {}
        value = instance(schema, _words(ask), strict=ask.strict)
    else:
        schema = {"type": "object"}
        value = {"answer": make_reply(ask.model, ask.messages).text}
    malformed = state.malformed()
    if malformed == "violating":
        found, wrong = violate(schema, value)
        value = wrong if found else value
        malformed = None if found else "broken"
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return broken(text) if malformed == "broken" else text


def _cut_calls(calls: list[Call], budget: int) -> list[Call]:
    """The calls that fit in `budget` tokens; the one it ends in is cut short (its
    name at least must fit)."""
    kept: list[Call] = []
    for call in calls:
        if call.tokens <= budget:
            kept.append(call)
            budget -= call.tokens
            continue
        name = count_tokens(call.name)
        if name <= budget:
            cut = cut_reply(call.text, None, budget - name)
            # Anthropic's input is an object, which holds no half: it comes out empty.
            kept.append(Call(call.id, call.name, {}, cut.text, name + cut.tokens))
        break
    return kept


def _with_calls(ask: Ask, tools: list[Tool], anthropic: bool, state: SimState) -> Answer:
    names = {t.name.lower() for t in ask.tools}  # "get_weather" makes a poor city name
    words = [w for w in _words(ask) if w.lower() not in names]
    calls = [make_call(t, words, state.malformed(), as_text=not anthropic) for t in tools]
    text: str | None = None
    tokens = 0
    if anthropic and ask.mode == "auto":  # forced calls come without a preamble, as Claude's
        text = "I'll use " + " and ".join(f"the {t.name} tool" for t in tools) + "."
        tokens = count_tokens(text)
    total = tokens + sum(c.tokens for c in calls)
    if ask.limit is None or total <= ask.limit:
        return Answer(text, calls, total, "tool_calls")
    if text is not None and tokens >= ask.limit:
        reply = cut_reply(text, tokens, ask.limit)
        return Answer(reply.text, [], reply.tokens, "length")
    calls = _cut_calls(calls, ask.limit - tokens)
    return Answer(text, calls, tokens + sum(c.tokens for c in calls), "length")


def _from_reply(reply: Reply) -> Answer:
    finish: Finish = "length" if reply.truncated else "stop"
    return Answer(reply.text, [], reply.tokens, finish, reply.stop_sequence)


def compose(ask: Ask, state: SimState, *, anthropic: bool = False) -> Answer:
    """The answer to `ask`: tool calls, JSON, the tool results quoted, or the reply."""
    if ask.prompt is not None:
        tools = choose(ask.tools, ask.mode, ask.forced, ask.parallel, ask.prompt)
        if tools:
            return _with_calls(ask, tools, anthropic, state)
    if ask.output != "text":
        return _from_reply(cut_reply(_json_text(ask, state), None, ask.limit, ask.stop))
    if ask.results is not None:
        text = results_text(ask.model, ask.results)
        return _from_reply(cut_reply(text, None, ask.limit, ask.stop))
    return _from_reply(make_reply(ask.model, ask.messages, ask.limit, ask.stop))
