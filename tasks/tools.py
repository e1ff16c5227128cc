"""Python functions as tools a model may call, and running the calls it makes.

A function becomes a tool by its signature and docstring: its name, the docstring's
first paragraph as the description, and a JSON Schema of its parameters from their type
hints (through pydantic, so models, enums, lists and optionals all say themselves). A
call runs with its arguments validated the same way; a tool that raises is reported to
the model as that tool's result (an error it may work around), never a crash.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from schemas import FunctionDef, JobValidationError, Tool, ToolCall

__all__ = ["ToolBox", "ToolOutcome", "as_tool", "function_tool", "response_format_for"]

ToolLike = Callable[..., Any] | Tool | Mapping[str, Any]
#: How much of a tool's output goes back to the model.
MAX_OUTPUT_CHARS = 20_000


def _arguments_model(fn: Callable[..., Any]) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = Any if param.annotation is param.empty else param.annotation
        default = ... if param.default is param.empty else param.default
        fields[name] = (annotation, default)
    return create_model(f"{fn.__name__}_arguments",
                        __config__=ConfigDict(extra="forbid"), **fields)


def _description(fn: Callable[..., Any]) -> str | None:
    doc = inspect.getdoc(fn)
    return doc.split("\n\n", 1)[0].strip() if doc else None


def function_tool(fn: Callable[..., Any]) -> Tool:
    """The tool ``fn`` is: its name, description and parameters' schema."""
    schema = _arguments_model(fn).model_json_schema()
    schema.pop("title", None)
    try:
        return Tool(function=FunctionDef(name=fn.__name__, description=_description(fn),
                                         parameters=schema))
    except ValidationError as exc:
        raise JobValidationError(f"tools: {fn.__name__!r} cannot be a tool: "
                                 f"{exc.errors()[0]['msg']}", field="tools") from None


def response_format_for(model: type[BaseModel]) -> dict[str, Any]:
    """The response format that asks for JSON of a pydantic model's schema."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", model.__name__)[:64] or "answer"
    return {"type": "json_schema", "json_schema": {"name": name,
                                                   "schema": model.model_json_schema()}}


def as_tool(tool: ToolLike) -> Tool:
    if isinstance(tool, Tool):
        return tool
    if isinstance(tool, Mapping):
        return Tool.model_validate(tool)
    return function_tool(tool)


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """One call the model asked for, and what running it gave."""

    call: ToolCall
    output: str
    failed: bool

    def message(self) -> dict[str, Any]:
        """The tool message that answers the call."""
        return {"role": "tool", "tool_call_id": self.call.id, "content": self.output}


class ToolBox:
    """The tools of a run: their specs for the job, and their functions to call."""

    def __init__(self, tools: Iterable[ToolLike]) -> None:
        self._functions: dict[str, Callable[..., Any]] = {}
        self._models: dict[str, type[BaseModel]] = {}
        self.specs: list[Tool] = []
        for tool in tools:
            spec = as_tool(tool)
            self.specs.append(spec)
            if callable(tool) and not isinstance(tool, Tool | Mapping):
                self._functions[spec.function.name] = tool
                self._models[spec.function.name] = _arguments_model(tool)

    async def run(self, calls: Iterable[ToolCall]) -> list[ToolOutcome]:
        """Every call, at once (the model asked for them together), in order."""
        return list(await asyncio.gather(*(self._one(call) for call in calls)))

    async def _one(self, call: ToolCall) -> ToolOutcome:
        fn = self._functions.get(call.name)
        if fn is None:
            return ToolOutcome(call, f"error: there is no tool {call.name!r}", failed=True)
        try:
            arguments = self._models[call.name].model_validate_json(call.function.arguments)
            kwargs = {name: getattr(arguments, name) for name in type(arguments).model_fields}
            # A plain function runs in a thread: several calls of a step overlap.
            value = await (fn(**kwargs) if inspect.iscoroutinefunction(fn)
                           else asyncio.to_thread(fn, **kwargs))
            if inspect.isawaitable(value):
                value = await value
        except ValidationError as exc:
            return ToolOutcome(call, f"error: bad arguments for {call.name}: "
                               f"{exc.errors()[0]['msg']}", failed=True)
        except Exception as exc:  # the tool's failure is the model's to work around
            return ToolOutcome(call, f"error: {type(exc).__name__}: {exc}"[:2000], failed=True)
        return ToolOutcome(call, _text(value), failed=False)


def _text(value: Any) -> str:
    """A tool's output as the text the model reads: strings as they are, the rest JSON."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, BaseModel):
        text = value.model_dump_json()
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = str(value)
    return text[:MAX_OUTPUT_CHARS]
