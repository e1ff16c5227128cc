"""Structured output over real HTTP: JSON answers valid for their schema (the SDK's
parse() included), json_object, and malformed_rate spoiling a seeded share of them."""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.workers.devstack.simulator.conftest import (
    CHAT,
    ENC,
    MESSAGES,
    claude_tool,
    tool,
)
from workers.devstack.simulator import SimulatorConfig, SimulatorThread, count_prompt_tokens


class Address(BaseModel):
    street: str
    number: int | None


class Person(BaseModel):
    name: str
    age: int
    role: Literal["author", "reviewer"]
    tags: list[str]
    home: Address


def test_sdk_parse_returns_the_model(oai: openai.OpenAI) -> None:
    # Given a pydantic model (nested, optional, literal, list) as the response format
    messages: Any = [{"role": "user", "content": "Extract: Ada Lovelace, reviewer of notes"}]
    # When the SDK parses the answer
    completion = oai.chat.completions.parse(model="gpt-4o", messages=messages,
                                            response_format=Person)
    # Then a valid Person comes back, made of the prompt's words and the literal it names
    person = completion.choices[0].message.parsed
    assert isinstance(person, Person)
    assert person.role == "reviewer"
    assert person.name in messages[0]["content"]


SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 12, "maxLength": 40},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "count": {"type": "integer", "exclusiveMinimum": 10, "multipleOf": 5},
        "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 3},
        "when": {"type": "string", "format": "date-time"},
        "note": {"type": ["string", "null"]},
        "extra": {"anyOf": [{"type": "null"}, {"type": "boolean"}]},
    },
    "required": ["title", "score", "count", "items"],
    "$defs": {"item": {"type": "object", "properties": {"id": {"type": "integer"},
                                                       "label": {"const": "fixed"}},
                       "required": ["id", "label"]}},
}


def schema_body(schema: dict[str, Any], text: str = "Summarise the outage report",
                strict: bool = False) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": text}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "out", "schema": schema,
                                                "strict": strict}}}


def test_json_schema_answer_is_valid_and_counted(client: httpx.Client) -> None:
    # Given a non-strict schema with bounds, refs, formats and unions
    body = schema_body(SCHEMA)
    # When it is asked twice
    first, second = (client.post(CHAT, json=body).json() for _ in range(2))
    # Then the content is a valid document, the same each time, using the prompt's words
    content = first["choices"][0]["message"]["content"]
    document = json.loads(content)
    jsonschema.validate(document, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert content == second["choices"][0]["message"]["content"]
    assert document["title"].split()[0] in body["messages"][0]["content"]
    # And the schema counts in the prompt, the document in the completion
    schema_json = json.dumps(SCHEMA, separators=(",", ":"))
    usage = first["usage"]
    assert usage["prompt_tokens"] == count_prompt_tokens(body["messages"]) + len(
        ENC.encode(schema_json))
    assert usage["completion_tokens"] == len(ENC.encode(content))


def test_json_object_answer(client: httpx.Client) -> None:
    # Given json_object and a prompt that says JSON
    body = {"model": "gpt-4o", "response_format": {"type": "json_object"},
            "messages": [{"role": "user", "content": "List the risks as JSON"}]}
    # When it is asked; Then the content is an object answering with the prompt's words
    content = client.post(CHAT, json=body).json()["choices"][0]["message"]["content"]
    document = json.loads(content)
    assert isinstance(document, dict)
    assert document["answer"].startswith("List the risks as JSON")


def invalid(content: str, schema: dict[str, Any]) -> str | None:
    """Why `content` is no valid document ("broken" / "violating"), or None."""
    try:
        document = json.loads(content)
    except json.JSONDecodeError:
        return "broken"
    try:
        jsonschema.validate(document, schema)
    except jsonschema.ValidationError:
        return "violating"
    return None


def test_malformed_rate_spoils_a_seeded_share() -> None:
    # Given two simulators with a 30% malformed rate and the same seed
    def kinds() -> list[str | None]:
        config = SimulatorConfig(latency_ms=0, malformed_rate=0.3, seed=7)
        with SimulatorThread(config) as sim, httpx.Client(base_url=sim.base_url) as http:
            answers = [http.post(CHAT, json=schema_body(SCHEMA)).json() for _ in range(300)]
        return [invalid(a["choices"][0]["message"]["content"], SCHEMA) for a in answers]

    # When each answers 300 structured requests
    first = kinds()
    # Then about 30% are invalid, broken and violating in turn, the same each time
    spoiled = [k for k in first if k]
    assert 0.22 <= len(spoiled) / len(first) <= 0.38
    assert spoiled[:4] == ["broken", "violating", "broken", "violating"]
    assert first == kinds()


def test_malformed_tool_arguments(sim: SimulatorThread, client: httpx.Client) -> None:
    # Given every JSON answer malformed
    sim.configure(malformed_rate=1.0)
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}
    body = {"model": "gpt-4o", "tools": [tool("lookup", schema, strict=True)],
            "messages": [{"role": "user", "content": "lookup Oslo"}]}
    # When the tool is called four times through OpenAI and twice through Anthropic
    arguments = [client.post(CHAT, json=body).json()["choices"][0]["message"]["tool_calls"][0]
                 ["function"]["arguments"] for _ in range(4)]
    claude = {"model": "claude-sonnet", "max_tokens": 100, "tools": [claude_tool("lookup", schema)],
              "messages": body["messages"]}
    inputs = [next(b for b in client.post(MESSAGES, json=claude).json()["content"]
                   if b["type"] == "tool_use")["input"] for _ in range(2)]
    # Then OpenAI's arguments are broken or violating in turn; Anthropic's inputs, objects,
    # always violate the schema
    assert [invalid(a, schema) for a in arguments] == ["broken", "violating"] * 2
    for value in inputs:
        assert isinstance(value, dict)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(value, schema)


def test_strict_schema_answer_keeps_every_property(client: httpx.Client) -> None:
    # Given a strict schema (every property required, nullable ones as unions)
    schema = {"type": "object", "additionalProperties": False, "required": ["a", "b"],
              "properties": {"a": {"type": "string"}, "b": {"type": ["integer", "null"]}}}
    # When it is asked; Then the document has every property, and validates
    body = client.post(CHAT, json=schema_body(schema, strict=True)).json()
    document = json.loads(body["choices"][0]["message"]["content"])
    assert set(document) == {"a", "b"}
    jsonschema.validate(document, schema)


TREE = {"$defs": {"node": {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
    "$ref": "#/$defs/node"}


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"mail": {"type": "string", "format": "email"},
                                          "site": {"type": "string", "format": "uri"},
                                          "key": {"type": "string", "format": "uuid"},
                                          "day": {"type": "string", "format": "date"}},
         "required": ["mail", "site", "key", "day"]},
        {"type": "object", "properties": {"n": {"enum": [3, 5, 8]}, "k": {"const": "v"}},
         "required": ["n", "k"]},
        {"type": "object", "properties": {"pair": {"type": "array", "prefixItems": [
            {"type": "string"}, {"type": "integer"}], "minItems": 2, "maxItems": 2},
            "none": {"type": "array", "maxItems": 0}}, "required": ["pair", "none"]},
        {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}},
                    "required": ["a"]},
                   {"properties": {"b": {"type": "integer", "minimum": 100}},
                    "required": ["b"]}]},
        {"type": "object", "properties": {"x": {"oneOf": [{"type": "integer"},
                                                           {"type": "string"}]}},
         "required": ["x"]},
        {"type": "object", "properties": {"p": {"type": "number", "exclusiveMaximum": 0.5,
                                                "multipleOf": 0.25}}, "required": ["p"]},
        TREE,
        {"type": "array", "items": {"type": "integer"}, "minItems": 4, "uniqueItems": True},
        {"type": "string", "maxLength": 3},
        {"type": "boolean"},
        {"type": "object", "required": ["undeclared"]},
        {"type": ["null", "integer"], "minimum": 2},
    ],
)
def test_documents_fit_their_schema_and_malformed_ones_do_not(
    sim: SimulatorThread, client: httpx.Client, schema: dict[str, Any]
) -> None:
    # Given a schema; When a structured answer is asked
    def content() -> str:
        body = client.post(CHAT, json=schema_body(schema)).json()
        text: str = body["choices"][0]["message"]["content"]
        return text

    valid = content()
    # Then it validates
    assert invalid(valid, schema) is None, valid
    # And once every answer is malformed, one is broken and the next breaks the schema
    sim.configure(malformed_rate=1.0)
    assert [invalid(content(), schema), invalid(content(), schema)] == ["broken", "violating"]


class Lookup(BaseModel):
    city: str
    days: int


def test_sdk_parse_with_a_pydantic_tool(oai: openai.OpenAI) -> None:
    # Given a strict tool made from a pydantic model by the SDK
    tools = [openai.pydantic_function_tool(Lookup)]
    messages: Any = [{"role": "user", "content": "Lookup the forecast for Tromso"}]
    # When parse() is asked and the prompt names the tool
    completion = oai.chat.completions.parse(model="gpt-4o", messages=messages, tools=tools)
    # Then the call's arguments parse into the model
    (call,) = completion.choices[0].message.tool_calls or []
    assert isinstance(call.function.parsed_arguments, Lookup)
    assert call.function.parsed_arguments.city in messages[0]["content"]
