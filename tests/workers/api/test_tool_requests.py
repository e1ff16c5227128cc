"""Bad tool requests at ``/v1/chat/completions`` are refused by name, never a 500.

Fuzzed (about 200 examples each): the order of messages with their tool calls and tool
messages, JSON Schemas as tool parameters and as response formats, tool names, tool
choice, parallel tool calls, ``json_object``, image parts. Every answer is under 500, and
every 400 is OpenAI's error shape whose ``param`` points at something the request holds.

Each kind of refusal the fuzz once found answered wrongly (a 500, a provider's 502, a
``param`` naming a member of a union) has its explicit test beside the others.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

Body = dict[str, Any]
ANTHROPIC = "anthropic/claude-3-haiku"
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])


def post(http: httpx.Client, key: str, body: Body) -> httpx.Response:
    return http.post("/v1/chat/completions", content=json.dumps(body), headers={
        "authorization": f"Bearer {key}", "content-type": "application/json",
        "x-llmfleet-timeout": "20"})


def ask(text: str = "hello") -> Body:
    return {"role": "user", "content": text}


def tool(name: str, parameters: Any = None, strict: bool | None = None) -> Body:
    function: Body = {"name": name, "description": f"The {name} tool."}
    if parameters is not None:
        function["parameters"] = parameters
    if strict is not None:
        function["strict"] = strict
    return {"type": "function", "function": function}


def calls(*ids: str, name: str = "lookup") -> Body:
    """An assistant message calling ``name`` once per id."""
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": i, "type": "function", "function": {"name": name, "arguments": '{"q":"x"}'}}
        for i in ids]}


def answer(call_id: str, content: Any = "42") -> Body:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def json_schema(schema: Any, strict: bool | None = None, name: str = "answer") -> Body:
    spec: Body = {"name": name, "schema": schema}
    if strict is not None:
        spec["strict"] = strict
    return {"type": "json_schema", "json_schema": spec}


LOOKUP = tool("lookup", {"type": "object", "properties": {"q": {"type": "string"}},
                         "required": ["q"]})
CONVERT = tool("convert", {"type": "object", "properties": {
    "amount": {"type": "number"}, "unit": {"enum": ["eur", "usd"]}}})


# -- what an answer must be ------------------------------------------------------------


def resolves(body: Any, param: str) -> bool:
    """Does ``param`` ("messages.1.tool_call_id") lead to something ``body`` holds?"""
    node = body
    for part in param.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


def assert_openai_error(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, response.text
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


def assert_refused_by_name(body: Body, response: httpx.Response) -> None:
    """Under 500; a 400 names, in ``param``, a field the request holds (for a missing
    field, the object that lacks it)."""
    assert response.status_code < 500, (body, response.text)
    if response.status_code < 400:
        return
    error = assert_openai_error(response)
    if response.status_code != 400:
        return
    param = error["param"]
    assert isinstance(param, str) and param, (body, response.text)
    # A missing field is named by its path: the object that lacks it is in the request.
    where = param if resolves(body, param) else param.rsplit(".", 1)[0]
    assert resolves(body, where), (f"param {param!r} names nothing the request holds", body,
                                   response.text)


# -- what the fleet answers wrongly today ----------------------------------------------


def check(body: Body, response: httpx.Response) -> None:
    event(f"status {response.status_code}")
    assert_refused_by_name(body, response)


# -- explicit cases ----------------------------------------------------------------------


def refused(http: httpx.Client, key: str, sim: Any, body: Body, param: str) -> str:
    """Given ``body``, the fleet answers 400 naming ``param`` and calls no provider;
    the error's message."""
    response = post(http, key, {"model": "simple", "messages": [ask()], **body})
    assert response.status_code == 400, response.text
    error = assert_openai_error(response)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, response.text
    assert sim.stats()["requests"] == 0
    return str(error["message"])


def test_a_tool_message_answering_no_call_is_refused_by_its_tool_call_id(
        http: httpx.Client, key: str, sim: Any) -> None:
    message = refused(http, key, sim, {"messages": [ask(), answer("call_9")]},
                      "messages.1.tool_call_id")
    assert "call_9" in message


def test_a_call_answered_twice_is_refused_at_the_second_answer(
        http: httpx.Client, key: str, sim: Any) -> None:
    body = {"messages": [ask(), calls("call_1"), answer("call_1"), answer("call_1")]}
    assert "twice" in refused(http, key, sim, body, "messages.3.tool_call_id")


def test_a_call_left_unanswered_is_refused_at_the_assistant_message(
        http: httpx.Client, key: str, sim: Any) -> None:
    body = {"messages": [ask(), calls("call_1", "call_2"), answer("call_1"), ask("and?")]}
    assert "call_2" in refused(http, key, sim, body, "messages.1.tool_calls")


def test_a_strict_schema_with_an_open_object_is_refused(
        http: httpx.Client, key: str, sim: Any) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    body = {"messages": [ask("answer in JSON")], "response_format": json_schema(schema, True)}
    assert "additionalProperties" in refused(http, key, sim, body,
                                             "response_format.json_schema.schema")


def test_a_tool_name_with_a_space_is_refused(http: httpx.Client, key: str, sim: Any) -> None:
    refused(http, key, sim, {"tools": [tool("look up")]}, "tools.0.function.name")


def test_tool_choice_naming_an_absent_tool_is_refused(
        http: httpx.Client, key: str, sim: Any) -> None:
    body = {"tools": [LOOKUP], "tool_choice": {"type": "function",
                                               "function": {"name": "convert"}}}
    assert "convert" in refused(http, key, sim, body, "tool_choice")


def test_tool_parameters_that_are_no_json_schema_are_refused(
        http: httpx.Client, key: str, sim: Any) -> None:
    response = post(http, key, {"model": "simple", "messages": [ask()],
                                "tools": [tool("lookup", {"type": "object", "required": "q"})]})
    assert response.status_code == 400, response.text
    assert assert_openai_error(response)["param"] in ("tools.0.function",
                                                      "tools.0.function.parameters")
    assert sim.stats()["requests"] == 0


def test_json_object_needs_a_message_asking_for_json(
        http: httpx.Client, key: str, sim: Any) -> None:
    refused(http, key, sim, {"response_format": {"type": "json_object"}}, "response_format")
    response = post(http, key, {"model": "simple", "messages": [ask("the total, as JSON")],
                                "response_format": {"type": "json_object"}})
    assert response.status_code == 200, response.text
    assert isinstance(json.loads(response.json()["choices"][0]["message"]["content"]), dict)


def test_a_conversation_whose_tool_messages_answer_each_call_once_runs(
        http: httpx.Client, key: str, sim: Any) -> None:
    body = {"model": "simple", "tools": [LOOKUP], "messages": [
        ask("use lookup twice"), calls("call_1", "call_2"), answer("call_2", "blue"),
        answer("call_1", "green")]}
    response = post(http, key, body)
    assert response.status_code == 200, response.text
    text = response.json()["choices"][0]["message"]["content"]
    assert "blue" in text and "green" in text


def test_an_image_over_5_mb_is_refused_naming_it(http: httpx.Client, key: str,
                                                  sim: Any) -> None:
    big = PNG + b"\0" * (5 * 1024 * 1024)
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url("image/png", big)}}]}]}
    assert "5 MB" in refused(http, key, sim, body, "messages.0.content.0.image_url.url")


def test_tool_parameters_of_another_type_than_object_are_refused(
        http: httpx.Client, key: str, sim: Any) -> None:
    # Both services take a tool's arguments as one object; OpenAI refuses other roots.
    message = refused(http, key, sim, {"tools": [tool("lookup", {"type": "string"})]},
                      "tools.0.function.parameters")
    assert "object" in message
    refused(http, key, sim, {"model": ANTHROPIC, "tools": [tool("lookup", {
        "properties": {"q": {"type": "string"}}})]}, "tools.0.function.parameters")


@pytest.mark.parametrize("schema,param,reason", [
    ({"type": "object", "properties": {"a": {"type": ["object", "null"]}}, "required": ["a"],
      "additionalProperties": False}, "response_format.json_schema.schema.properties.a",
     "additionalProperties"),
    ({"type": "array", "items": {"type": "string"}}, "response_format.json_schema.schema",
     "root"),
])
def test_a_strict_schema_openai_would_refuse_is_refused_here(
        http: httpx.Client, key: str, sim: Any, schema: Body, param: str, reason: str) -> None:
    body = {"messages": [ask("answer in JSON")], "response_format": json_schema(schema, True)}
    assert reason in refused(http, key, sim, body, param)


@pytest.mark.parametrize("ref", ["#/$defs/missing", "https://example.com/a.json", "#/x~1y"])
def test_a_ref_pointing_nowhere_in_the_schema_is_refused(
        http: httpx.Client, key: str, sim: Any, ref: str) -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": ref}}, "required": ["a"]}
    body = {"messages": [ask("answer in JSON")], "response_format": json_schema(schema)}
    assert ref in refused(http, key, sim, body, "response_format.json_schema.schema")
    body = {"tools": [tool("lookup", schema, strict=False)]}
    refused(http, key, sim, body, "tools.0.function.parameters")


def test_a_ref_inside_the_schema_is_answered(http: httpx.Client, key: str, sim: Any) -> None:
    schema = {"type": "object", "$defs": {"a/b": {"type": "string"}},
              "properties": {"a": {"$ref": "#/$defs/a~1b"}}, "required": ["a"]}
    response = post(http, key, {"model": "simple", "messages": [ask("answer in JSON")],
                                "response_format": json_schema(schema)})
    assert response.status_code == 200, response.text
    answer_ = json.loads(response.json()["choices"][0]["message"]["content"])
    assert isinstance(answer_["a"], str)


def test_empty_or_blank_user_content_is_refused(http: httpx.Client, key: str,
                                                sim: Any) -> None:
    refused(http, key, sim, {"messages": [{"role": "user", "content": []}]},
            "messages.0.content")
    # Anthropic refuses a turn with no text, and any job may fall back to it.
    refused(http, key, sim, {"model": ANTHROPIC, "messages": [ask(" ")]}, "messages.0.content")


def test_a_bad_image_or_tool_choice_is_named_as_the_field_not_a_union_member(
        http: httpx.Client, key: str, sim: Any) -> None:
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is it"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]}
    assert "base64" in refused(http, key, sim, body, "messages.0.content.1.image_url.url")
    body = {"tools": [LOOKUP], "tool_choice": {"type": "function", "function": {"nom": "x"}}}
    refused(http, key, sim, body, "tool_choice.function.name")


def test_parallel_tool_calls_without_tools_names_itself(http: httpx.Client, key: str,
                                                        sim: Any) -> None:
    refused(http, key, sim, {"parallel_tool_calls": True}, "parallel_tool_calls")


# -- fuzzed: messages in any order ---------------------------------------------------------

_IDS = ["call_1", "call_2", "call_3"]
_WORDS = st.sampled_from(["hello", "use lookup", "lookup then convert", "as JSON", "", " "])


def _message() -> st.SearchStrategy[Body]:
    text = _WORDS | st.text(max_size=12)
    return st.one_of(
        st.builds(lambda role, t: {"role": role, "content": t},
                  st.sampled_from(["system", "developer", "user", "assistant"]), text),
        st.builds(lambda ids, name: calls(*ids, name=name),
                  st.lists(st.sampled_from(_IDS), min_size=1, max_size=3),
                  st.sampled_from(["lookup", "convert", "absent"])),
        st.builds(answer, st.sampled_from([*_IDS, "call_x"]), text))


@st.composite
def _tool_rounds(draw: st.DrawFn) -> list[Body]:
    """User, then rounds of calls and tool messages that answer them: all, some, some
    twice or a call of another round, in any order; a user message after some."""
    messages: list[Body] = [ask(draw(_WORDS))]
    made: list[str] = []
    for n in range(draw(st.integers(0, 3))):
        ids = [f"call_{n}_{k}" for k in range(draw(st.integers(1, 3)))]
        messages.append(calls(*ids))
        made += ids
        answers = draw(st.permutations(ids))
        if draw(st.booleans()):  # spoil them: cut short, answer twice or another round's
            extra = draw(st.lists(st.sampled_from(made), max_size=2))
            answers = [*answers, *extra][:draw(st.integers(0, 5))]
        messages += [answer(i) for i in answers]
        if draw(st.booleans()):
            messages.append(ask(draw(_WORDS)))
    return messages


@FUZZ
@given(messages=_tool_rounds() | st.lists(_message(), min_size=1, max_size=6),
       model=st.sampled_from(["simple", ANTHROPIC]), with_tools=st.booleans())
# Found by this test: empty messages leave an Anthropic model nothing to send.
@example(messages=[{"role": "assistant", "content": ""}], model=ANTHROPIC, with_tools=False)
def test_messages_in_any_order_are_never_a_500(http: httpx.Client, key: str,
                                               messages: list[Body], model: str,
                                               with_tools: bool) -> None:
    body: Body = {"model": model, "messages": messages, "max_tokens": 64}
    if with_tools:
        body["tools"] = [LOOKUP, CONVERT]
    check(body, post(http, key, body))


# -- fuzzed: JSON Schemas as tool parameters and response formats --------------------------

_PROPERTY = st.sampled_from(["a", "b", "city", "n"])
_SCALAR = st.text(max_size=5) | st.integers(-9, 9) | st.booleans() | st.none()
#: Each breaks the meta-schema wherever it is put.
_INVALID: list[Any] = [{"type": 5}, {"type": "strin"}, {"required": "a"}, {"properties": []},
                       {"minimum": "x"}, {"items": 3}, {"additionalProperties": 3},
                       {"pattern": "("}, {"enum": "a"}, {"anyOf": []}, [], "object", 7]


def _leaf() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from([{"type": "string"}, {"type": "number"}, {"type": "boolean"},
                         {"type": "null"}, {"type": ["string", "null"]},
                         {"type": "string", "format": "date"}]),
        st.builds(lambda low, more: {"type": "string", "minLength": low,
                                     "maxLength": low + more},
                  st.integers(0, 3), st.integers(0, 5)),
        st.builds(lambda low, more: {"type": "integer", "minimum": low, "maximum": low + more},
                  st.integers(-5, 5), st.integers(0, 10)),
        st.builds(lambda values: {"enum": values}, st.lists(_SCALAR, min_size=1, max_size=3)),
        st.builds(lambda value: {"const": value}, _SCALAR))


@st.composite
def _object(draw: st.DrawFn, children: st.SearchStrategy[Any], nullable: bool = True
            ) -> Body:
    """An object (maybe null), open or closed, some or all of its properties required."""
    properties = draw(st.dictionaries(_PROPERTY, children, max_size=3))
    kind = draw(st.sampled_from(["object", ["object", "null"]])) if nullable else "object"
    schema: Body = {"type": kind, "properties": properties,
                    "required": [p for p in properties if draw(st.booleans())]}
    closed = draw(st.sampled_from([None, False, True]))
    if closed is not None:
        schema["additionalProperties"] = not closed
    return schema


def _grow(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        _object(children),
        st.builds(lambda items, low, more: {"type": "array", "items": items,
                                            "minItems": low, "maxItems": low + more},
                  children, st.integers(0, 2), st.integers(0, 2)),
        st.builds(lambda branches: {"anyOf": branches},
                  st.lists(children, min_size=1, max_size=3)))


_SCHEMA = st.recursive(_leaf(), _grow, max_leaves=6)


@st.composite
def _root(draw: st.DrawFn) -> Any:
    """A satisfiable schema (an object mostly), maybe with $defs and a $ref into them
    or into nowhere, maybe broken by a value the meta-schema refuses."""
    schema = draw(_object(_SCHEMA, nullable=False) | _SCHEMA)
    if isinstance(schema, dict) and draw(st.booleans()):
        ref = draw(st.sampled_from(["#/$defs/item", "#/$defs/other",
                                    "https://example.com/item.json"]))
        schema = {**schema, "$defs": {"item": draw(_SCHEMA)},
                  "properties": {**schema.get("properties", {}), "item": {"$ref": ref}}}
    if draw(st.integers(0, 4)) == 0:
        bad = draw(st.sampled_from(_INVALID))
        if isinstance(schema, dict) and isinstance(bad, dict) and draw(st.booleans()):
            schema = {**schema, **bad}
        elif isinstance(schema, dict):
            schema = {**schema, "properties": {**schema.get("properties", {}), "bad": bad}}
        else:
            schema = bad
    return schema


@FUZZ
@given(schemas=st.lists(st.tuples(_root(), st.sampled_from([None, False, True])),
                        min_size=1, max_size=3),
       as_format=st.booleans(), required=st.booleans(),
       model=st.sampled_from(["simple", "simple", ANTHROPIC]))
def test_any_json_schema_as_parameters_or_format_is_never_a_500(
        http: httpx.Client, key: str, schemas: list[tuple[Any, bool | None]],
        as_format: bool, required: bool, model: str) -> None:
    names = ["lookup", "convert", "search"]
    tools = [tool(n, s, strict) for n, (s, strict) in zip(names, schemas, strict=False)]
    body: Body = {"model": model, "messages": [ask("use lookup, answer in JSON")]}
    if as_format:
        schema, strict = schemas[0]
        body["response_format"] = json_schema(schema, strict)
        tools = tools[1:]
    if tools:
        body["tools"] = tools
        if required:
            body["tool_choice"] = "required"
    check(body, post(http, key, body))


# -- fuzzed: tool names, tool choice, parallel calls, json_object --------------------------

_NAME = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True) | st.sampled_from(
    ["lookup", "", "look up", "look.up", "x" * 65, "naïve", "a/b", "get-weather"])


@st.composite
def _options(draw: st.DrawFn) -> Body:
    names = draw(st.lists(_NAME, max_size=3))
    body: Body = {"model": draw(st.sampled_from(["simple", ANTHROPIC])), "messages": [
        ask(draw(st.sampled_from(["hello", "as JSON", "in json please", "jsonl", "j s o n"]))
            + " " + " ".join(draw(st.lists(st.sampled_from([*names, "lookup"]), max_size=2))))]}
    empty_tools: bool = draw(st.booleans())  # tools: [] is refused too
    if names or empty_tools:
        body["tools"] = [tool(n) for n in names]
    named = st.sampled_from([*names, "absent", "look up"]).map(
        lambda n: {"type": "function", "function": {"name": n}})
    choice = draw(st.none() | st.sampled_from(["auto", "none", "required", "any", "bogus"])
                  | named | st.sampled_from([{"type": "function"}, {"type": "tool", "name": "x"}]))
    parallel = draw(st.none() | st.booleans() | st.just("yes"))
    response_format = draw(st.none() | st.sampled_from([
        {"type": "json_object"}, {"type": "text"}, {"type": "json_schema"}, {"type": "xml"},
        json_schema({"type": "object"}, name="an answer"), json_schema({"type": "object"})]))
    for field, value in (("tool_choice", choice), ("parallel_tool_calls", parallel),
                         ("response_format", response_format)):
        if value is not None:
            body[field] = value
    return body


@FUZZ
@given(body=_options())
def test_tool_names_choice_and_formats_are_never_a_500(http: httpx.Client, key: str,
                                                       body: Body) -> None:
    check(body, post(http, key, body))


# -- fuzzed: image parts -----------------------------------------------------------------


#: Images of a few bytes, their headers whole (1x1, 3x2, 16x16).
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9Q"
                       "DwADhgGAWjR9awAAAABJRU5ErkJggg==")
GIF = b"GIF89a" + struct.pack("<HH", 3, 2) + b"\x00\x00\x00;"
JPEG = bytes.fromhex("ffd8ffc0001108001000100301220002110103110100ffd9")


def data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


_URLS = st.sampled_from([
    data_url("image/png", PNG), data_url("image/gif", GIF), data_url("image/jpeg", JPEG),
    "https://example.com/cat.png",
    "data:image/png;base64,@@not base64@@",  # not base64
    data_url("image/png", JPEG),  # the bytes are another type's
    data_url("image/png", PNG[:12]),  # the magic, no header
    data_url("image/bmp", PNG),  # a type no provider takes
    data_url("text/plain", b"hello"),
    "data:image/png," + PNG.hex(),  # not marked base64
    data_url("image/png", PNG)[:-6] + "\n" + data_url("image/png", PNG)[-6:],
    "http://example.com/cat.png", "ftp://example.com/cat.png", "",
    "https://example.com/" + "a" * 2100,
])


@st.composite
def _image_message(draw: st.DrawFn) -> Body:
    parts: list[Any] = []
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            parts.append({"type": "text", "text": draw(st.sampled_from(["what is it", ""]))})
            continue
        image: Body = {"url": draw(_URLS)}
        if (detail := draw(st.sampled_from([None, "auto", "low", "high", "max"]))) is not None:
            image["detail"] = detail
        parts.append({"type": "image_url", "image_url": image})
    role = draw(st.sampled_from(["user", "user", "user", "system", "assistant"]))
    return {"role": role, "content": parts}


@FUZZ
@given(messages=st.lists(_image_message(), min_size=1, max_size=2),
       model=st.sampled_from(["simple", ANTHROPIC]))
def test_image_parts_good_or_bad_are_never_a_500(http: httpx.Client, key: str,
                                                 messages: list[Body], model: str) -> None:
    body: Body = {"model": model, "messages": [*messages, ask("describe them")],
                  "max_tokens": 32}
    check(body, post(http, key, body))
