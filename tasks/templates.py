"""Prompt templates on the agent's side: sandboxed rendering and ``client.templates``.

Templates live in Postgres (``prompt_templates``) so every agent on every machine
renders the same text; the client reaches them through tasks on the admin queue, so an
agent loads no database code. Rendering happens here, in the agent's process, at
submit: a missing variable is the caller's error and should surface before the job
costs a queue slot.

Rendering is Jinja2 in its sandbox with ``StrictUndefined``: template text may come
from many hands, so it must not reach Python internals (``__class__``, ``__globals__``)
nor allocate without bound (``range(10**9)``, ``'x' * 10**10``). A body with lines
``### system`` / ``### user`` / ``### assistant`` becomes that list of messages; any
other body is one user message. Headers are found in the template's source, before
rendering, so a variable's value can never forge a system message; each section then
renders on its own (a ``{% set %}`` in one is not seen in the next).
"""

from __future__ import annotations

import builtins
import datetime as dt
import operator
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from celery import Celery
from jinja2 import StrictUndefined, Template, TemplateSyntaxError, UndefinedError
from jinja2 import TemplateError as JinjaTemplateError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment
from kombu.exceptions import OperationalError

from schemas import (
    FleetError,
    FleetUnavailableError,
    JobValidationError,
    TemplateRenderError,
    WorkerError,
)
from tasks._results import ResultWaiter
from tasks.names import ADMIN_QUEUE, TEMPLATES_GET, TEMPLATES_LIST, TEMPLATES_PUT

__all__ = ["PromptTemplate", "Templates", "admin_call", "check_syntax", "render"]

#: Longest string or list that ``*`` may build inside a template.
MAX_REPEAT = 1_000_000
#: Largest exponent ``**`` may take inside a template.
MAX_EXPONENT = 1_000
_HEADER = re.compile(r"^###[ \t]*(system|user|assistant)[ \t]*$", re.IGNORECASE | re.MULTILINE)
_UNDEFINED = re.compile(r"'([^']+)' is undefined|has no attribute '([^']+)'|attribute '([^']+)' of")
#: Chat messages as the client sends them.
Messages = list[dict[str, str]]


class _Sandbox(SandboxedEnvironment):
    """Jinja's sandbox (which already refuses unsafe attributes and caps ``range``),
    plus a cap on ``*`` and ``**``, the other one-liners that exhaust memory."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "**":
            if isinstance(right, int) and abs(right) > MAX_EXPONENT:
                raise SecurityError(f"exponent {right} is over the limit of {MAX_EXPONENT}")
            return operator.pow(left, right)
        size = _repeat_size(left, right)
        if size > MAX_REPEAT:
            raise SecurityError(f"'*' would build {size} items, over the limit of {MAX_REPEAT}")
        return operator.mul(left, right)


def _repeat_size(left: Any, right: Any) -> int:
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, str | list | tuple) and isinstance(times, int):
            return len(seq) * times
    return 0


_ENV = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)


@dataclass(frozen=True)
class PromptTemplate:
    """One stored version of a template."""

    name: str
    version: int
    body: str
    category: str | None = None
    created_at: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PromptTemplate:
        created = data.get("created_at")
        if isinstance(created, dt.datetime):
            created = created.isoformat()
        return cls(name=str(data["name"]), version=int(data["version"]), body=str(data["body"]),
                   category=data.get("category"), created_at=created)


def _split(body: str) -> list[tuple[str, str]]:
    """(role, source) sections of a body; one user section when it has no headers."""
    headers = list(_HEADER.finditer(body))
    if not headers:
        return [("user", body)]
    sections: list[tuple[str, str]] = []
    for index, match in enumerate(headers):
        end = headers[index + 1].start() if index + 1 < len(headers) else len(body)
        sections.append((match[1].lower(), body[match.end():end]))
    if body[:headers[0].start()].strip():
        sections.insert(0, ("user", body[:headers[0].start()]))
    return sections


@lru_cache(maxsize=512)
def _compile(name: str, version: int | None, body: str) -> tuple[tuple[str, Template], ...]:
    """Compiled sections, cached per template version (the body is part of the key so
    that an unsaved body rendered under a name can never hit a stale entry)."""
    try:
        return tuple((role, _ENV.from_string(source)) for role, source in _split(body))
    except TemplateSyntaxError as exc:
        raise TemplateRenderError(
            f"template {name!r} v{version}: syntax error on line {exc.lineno}: {exc.message}",
            template=name, version=version) from None


def check_syntax(body: str, name: str = "<inline>") -> None:
    """Refuse a body that does not compile (TemplateRenderError), before it is stored."""
    _compile(name, None, body)


def _render_error(exc: Exception, name: str, version: int | None) -> TemplateRenderError:
    variable = None
    found = _UNDEFINED.search(str(exc))
    if found and isinstance(exc, UndefinedError | SecurityError):
        variable = next((g for g in found.groups() if g), None)
    if isinstance(exc, UndefinedError):
        what = f"missing variable {variable!r}" if variable else str(exc)
    elif isinstance(exc, SecurityError | OverflowError):
        what = f"refused by the sandbox: {exc}"
    else:
        what = f"{type(exc).__name__}: {exc}"
    return TemplateRenderError(f"template {name!r} v{version}: {what}",
                               template=name, version=version, variable=variable)


def render(body: str, variables: Mapping[str, Any], name: str = "<inline>",
           version: int | None = None) -> Messages:
    """The chat messages a template body gives with ``variables``; a typed
    TemplateRenderError (naming template, version, variable) for anything wrong."""
    messages: Messages = []
    for role, template in _compile(name, version, body):
        try:
            text = template.render(dict(variables)).strip()
        except (JinjaTemplateError, OverflowError, TypeError, ValueError, ArithmeticError,
                MemoryError) as exc:
            raise _render_error(exc, name, version) from None
        if text:
            messages.append({"role": role, "content": text})
    if not any(m["role"] != "system" for m in messages):
        raise TemplateRenderError(f"template {name!r} v{version}: renders no user message",
                                  template=name, version=version)
    return messages


def admin_call(app: Celery, waiter: ResultWaiter, task: str, args: list[Any],
               timeout: float) -> Any:
    """Run an admin-queue task and return its envelope's result, or raise its error."""
    task_id = "admin-" + uuid.uuid4().hex
    try:
        app.send_task(task, args=args, queue=ADMIN_QUEUE, task_id=task_id)
    except OperationalError as exc:
        raise FleetUnavailableError(f"cannot reach the broker: {exc}") from None
    outcome = waiter.wait_task(task_id, timeout)
    if not isinstance(outcome, dict) or "ok" not in outcome:
        raise WorkerError(f"malformed {task} result: {str(outcome)[:200]}")
    if not outcome["ok"]:
        raise FleetError.from_payload(outcome.get("error") or {})
    return outcome.get("result")


class Templates:
    """``client.templates``: put, get, list and render stored templates. Explicit
    versions are cached in the client (a version never changes); "latest" is asked."""

    def __init__(self, app: Celery, waiter: ResultWaiter, timeout: float = 10) -> None:
        self._app = app
        self._waiter = waiter
        self._timeout = timeout
        self._cache: dict[tuple[str, int], PromptTemplate] = {}

    def put(self, name: str, body: str, *, category: str | None = None) -> int:
        """Store ``body`` as the next version; the same body as the latest returns the
        latest's version. A template that does not compile is refused here."""
        check_syntax(body, name)
        version = admin_call(self._app, self._waiter, TEMPLATES_PUT, [name, body, category],
                             self._timeout)
        return int(version)

    def get(self, name: str, version: int | None = None) -> PromptTemplate:
        """The template at ``version``, or its latest; TemplateNotFoundError if none."""
        if version is not None and (name, version) in self._cache:
            return self._cache[(name, version)]
        data = admin_call(self._app, self._waiter, TEMPLATES_GET, [name, version],
                          self._timeout)
        found = PromptTemplate.from_dict(data)
        self._cache[(found.name, found.version)] = found
        return found

    def list(self, category: str | None = None) -> builtins.list[PromptTemplate]:
        """The latest version of every template, optionally of one category."""
        rows = admin_call(self._app, self._waiter, TEMPLATES_LIST, [category], self._timeout)
        return [PromptTemplate.from_dict(row) for row in rows]

    def render(self, template: str, /, variables: Mapping[str, Any] | None = None, *,
               version: int | None = None, **more: Any) -> Messages:
        """The messages of a stored template (variables as a dict and/or keywords)."""
        found = self.get(template, version)
        return render(found.body, {**(variables or {}), **more}, found.name, found.version)

    def expand(self, messages: Any, options: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        """For ``submit``: turn ``template=``/``variables=``/``version=`` into messages,
        and record the template and version in the job's metadata."""
        rest = dict(options)
        name = rest.pop("template", None)
        variables = rest.pop("variables", None)
        version = rest.pop("version", None)
        if name is None:
            if variables is not None or version is not None:
                raise JobValidationError("template: variables/version need a template",
                                         field="template")
            return messages, rest
        if messages is not None:
            raise JobValidationError("template: give messages or a template, not both",
                                     field="template")
        found = self.get(str(name), version)
        rendered = render(found.body, variables or {}, found.name, found.version)
        metadata = {**(rest.get("metadata") or {}), "template": found.name,
                    "template_version": found.version}
        return rendered, {**rest, "metadata": metadata}
