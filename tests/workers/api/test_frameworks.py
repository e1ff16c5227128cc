"""Agent frameworks built on the official OpenAI SDK work unchanged against
``llmfleet api``: LangChain's ``ChatOpenAI`` (tools, tool results, structured output,
streaming) and the OpenAI Agents SDK through its Chat Completions model (function tools,
output types, streamed runs). Only ``base_url`` and the key change."""

from __future__ import annotations

import asyncio
import enum
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from openai import AsyncOpenAI
from pydantic import BaseModel, Field

# -- LangChain -------------------------------------------------------------------------------


@pytest.fixture()
def chat(api_url: str, key: str) -> ChatOpenAI:
    return ChatOpenAI(base_url=f"{api_url}/v1", api_key=key, model="simple", max_retries=0,
                      timeout=30)


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


class GetWeather(BaseModel):
    """The weather in a city."""

    city: str = Field(description="The city's name")


class Color(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


class Item(BaseModel):
    name: str
    quantity: int = Field(ge=1)


class Order(BaseModel):
    """An order: nested models, an enum and an optional field, as LangChain users write
    them ($defs, $ref and anyOf with null in the schema)."""

    items: list[Item]
    color: Color
    note: str | None = None


@pytest.mark.parametrize(("tool", "name", "fields"), [
    (multiply, "multiply", {"a": int, "b": int}),
    (GetWeather, "GetWeather", {"city": str}),
])
def test_langchain_bound_tools_come_back_as_tool_calls(
        chat: ChatOpenAI, sim: Any, tool: Any, name: str, fields: dict[str, type]) -> None:
    # Given a chat model with a function (or a pydantic model) bound as a tool
    bound = chat.bind_tools([tool])
    # When the prompt names the tool
    message = bound.invoke(f"Use {name} for Paris, 6 and 7")
    # Then the answer is one call of it, its arguments as the tool's schema says
    assert isinstance(message, AIMessage)
    assert message.response_metadata["finish_reason"] == "tool_calls"
    [call] = message.tool_calls
    assert call["name"] == name and call["id"]
    assert set(call["args"]) == set(fields)
    assert all(isinstance(call["args"][k], kind) for k, kind in fields.items())


def test_langchain_tool_results_come_back_quoted(chat: ChatOpenAI, sim: Any) -> None:
    # Given a call of multiply that the model asked for (forced, one at a time)
    bound = chat.bind_tools([multiply], tool_choice="multiply", parallel_tool_calls=False,
                            strict=True)
    prompt = HumanMessage("Please multiply 6 and 7")
    asked = bound.invoke([prompt])
    assert isinstance(asked, AIMessage)
    [call] = asked.tool_calls
    # When its result goes back as a ToolMessage
    result = str(multiply(**call["args"]))
    answer = bound.invoke([prompt, asked, ToolMessage(result, tool_call_id=call["id"])])
    # Then the model answers in text, quoting it
    assert isinstance(answer, AIMessage) and not answer.tool_calls
    assert f'multiply returned "{result}"' in answer.text
    assert answer.response_metadata["finish_reason"] == "stop"


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_structured_output_is_an_instance(chat: ChatOpenAI, sim: Any,
                                                    method: str) -> None:
    # Given a chat model asked for an Order (json_schema is LangChain's default)
    structured = chat.with_structured_output(Order, method=method)  # type: ignore[arg-type]
    # When it is invoked
    order = structured.invoke("An order of three red pens")
    # Then the answer is an Order, valid for its model
    assert isinstance(order, Order)
    assert order.items and all(item.quantity >= 1 for item in order.items)
    assert order.color in (Color.RED, Color.BLUE)


def _added(chunks: list[Any]) -> AIMessageChunk:
    """Streamed chunks added up, as LangChain users do."""
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    assert isinstance(total, AIMessageChunk)
    return total


def test_langchain_streamed_chunks_add_up_to_the_answer(api_url: str, key: str,
                                                        sim: Any) -> None:
    # Given a chat model that asks for usage in its streams
    chat = ChatOpenAI(base_url=f"{api_url}/v1", api_key=key, model="simple", max_retries=0,
                      timeout=30, stream_usage=True)
    prompt = f"Tell me about {uuid.uuid4().hex}"
    # When the answer is streamed
    chunks = list(chat.stream(prompt))
    # Then it comes in several chunks whose concatenation is the answer
    assert sum(1 for c in chunks if c.content) > 1
    streamed = _added(chunks)
    assert streamed.text == chat.invoke(prompt).text
    assert streamed.response_metadata["finish_reason"] == "stop"
    assert streamed.usage_metadata is not None and streamed.usage_metadata["output_tokens"] > 0


def test_langchain_streamed_tool_calls_add_up_to_calls(chat: ChatOpenAI, sim: Any) -> None:
    # Given two tools, both named in the prompt
    def negate(a: int) -> int:
        """Negate an integer."""
        return -a

    # When the answer is streamed
    chunks = list(chat.bind_tools([multiply, negate]).stream("Use negate, then multiply"))
    # Then the chunks add up to both calls, in the prompt's order, arguments parsed
    calls = _added(chunks).tool_calls
    assert [c["name"] for c in calls] == ["negate", "multiply"]
    assert set(calls[0]["args"]) == {"a"} and set(calls[1]["args"]) == {"a", "b"}
    assert len({c["id"] for c in calls}) == 2


# -- OpenAI Agents SDK ------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def no_tracing() -> Iterator[None]:
    """The Agents SDK exports traces to OpenAI unless told not to."""
    set_tracing_disabled(True)
    yield
    set_tracing_disabled(False)


class Report(BaseModel):
    city: str
    degrees: int


#: What the tools were called with, test by test.
CALLED: list[tuple[str, str]] = []


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    CALLED.append(("get_weather", city))
    return "sunny, 21 C"


@function_tool
def get_time(city: str) -> str:
    """The local time in a city."""
    CALLED.append(("get_time", city))
    return "12:34 local time"


def run_agent(api_url: str, key: str, prompt: str, *, streamed: bool = False,
              **agent: Any) -> Any:
    """Run an Agent on the fleet through the SDK's Chat Completions model (the fleet
    serves no Responses API); its result."""

    async def run() -> Any:
        async with AsyncOpenAI(base_url=f"{api_url}/v1", api_key=key, max_retries=0) as client:
            model = OpenAIChatCompletionsModel(model="simple", openai_client=client)
            built = Agent(name="helper", instructions="You help.", model=model, **agent)
            if not streamed:
                return await Runner.run(built, prompt)
            result = Runner.run_streamed(built, prompt)
            async for _ in result.stream_events():
                pass
            return result

    CALLED.clear()
    return asyncio.run(run())


def test_an_agent_with_two_function_tools_answers_with_their_results(
        api_url: str, key: str, sim: Any) -> None:
    # Given an Agent with two function tools
    # When it runs on a prompt that names both
    result = run_agent(api_url, key, "Use get_weather and get_time for Paris",
                       tools=[get_weather, get_time])
    # Then both tools ran, each once with a city, and the final output quotes them
    assert sorted(name for name, _ in CALLED) == ["get_time", "get_weather"]
    assert all(isinstance(city, str) and city for _, city in CALLED)
    assert "sunny, 21 C" in result.final_output and "12:34 local time" in result.final_output
    assert result.context_wrapper.usage.requests == 2


def test_an_agent_with_an_output_type_returns_an_instance(api_url: str, key: str,
                                                          sim: Any) -> None:
    # Given an Agent whose output type is a pydantic model, and a tool
    # When it runs
    result = run_agent(api_url, key, "Use get_weather, then report on Paris",
                       tools=[get_weather], output_type=Report)
    # Then it called the tool, and its final output is a Report
    assert [name for name, _ in CALLED] == ["get_weather"]
    assert isinstance(result.final_output, Report)
    assert isinstance(result.final_output.degrees, int)


def test_a_streamed_agent_run_forced_to_a_tool_ends_in_an_answer(api_url: str, key: str,
                                                                 sim: Any) -> None:
    # Given an Agent that must call a tool, one at a time, and counts usage
    settings = ModelSettings(tool_choice="required", parallel_tool_calls=False,
                             temperature=0.2, max_tokens=300, include_usage=True)
    # When its run is streamed
    result = run_agent(api_url, key, "What is the weather in Paris?", streamed=True,
                       tools=[get_weather, get_time], model_settings=settings)
    # Then the first tool ran, and the answer quotes it
    assert [name for name, _ in CALLED] == ["get_weather"]
    assert 'get_weather returned "sunny, 21 C"' in result.final_output
    usage = result.context_wrapper.usage
    assert usage.requests == 2 and usage.input_tokens > 0 and usage.output_tokens > 0

