"""OpenAI's Responses API (/v1/responses) on a real server, driven by the official ``openai`` SDK.

SmolLM2-135M runs in the in-process llama.cpp engine. Where a Responses
request has a chat-completions twin, both are sent at temperature 0 and
must give the same text and the same prompt token count: that is the proof
that input items, instructions and stored history become the same
conversation as the equivalent chat messages. Forced tool choice is
deterministic (sampling is constrained to the call's schema), so tool calls
are asserted exactly. Busy (503) uses the real app in-process with a
stand-in backend, as tests/test_openai_api.py does for its error classes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel

from tests.conftest import SMOLLM, ServerProc
from tests.test_openai_api import THINK_MODEL, THINK_TEMPLATE

TOOLS_MODEL = "smol-dialect-tools"
# A tool-capable template for SmolLM2's weights (the stock one has no tools).
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nYou can call tools. Tools: {{ tools | tojson }}\n"
    'Reply with <tool_call>{"name": ..., "arguments": ...}</tool_call>.<|im_end|>\n{% endif %}'
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CITY = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "London"]}}, "required": ["city"]}
WEATHER = {"type": "function", "name": "get_weather", "description": "Get the weather for a city", "parameters": CITY}
CLOCK = {
    "type": "function",
    "name": "get_time",
    "description": "Get the time in a time zone",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string", "enum": ["UTC"]}}, "required": ["tz"]},
}
FAST: dict[str, Any] = {"temperature": 0, "max_output_tokens": 8}


@pytest.fixture(scope="module")
def client(base_url: str) -> OpenAI:
    return OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=120)


def _chat_twin(client: OpenAI, model: str, messages: list[dict[str, Any]], max_tokens: int = 8, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=max_tokens, **kwargs
    )


# ---- create ------------------------------------------------------------------------


def test_create_string_input(client: OpenAI) -> None:
    r = client.responses.create(model=SMOLLM, input="Say hello.", instructions="You are terse.", **FAST)
    assert r.id.startswith("resp_") and r.object == "response" and r.model == SMOLLM
    assert r.created_at > 1_600_000_000 and r.instructions == "You are terse." and r.store is True
    # 8 tokens hit max_output_tokens: OpenAI reports that as an incomplete response.
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    (item,) = r.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    assert item.id.startswith("msg_") and item.content[0].type == "output_text"
    assert r.output_text == item.content[0].text and r.output_text
    assert r.usage.output_tokens == 8 and r.usage.total_tokens == r.usage.input_tokens + 8
    # instructions are the system message of the same chat.
    twin = _chat_twin(
        client, SMOLLM, [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]
    )
    assert r.output_text == twin.choices[0].message.content
    assert r.usage.input_tokens == twin.usage.prompt_tokens


def test_create_input_items(client: OpenAI) -> None:
    """Messages of every role, with string content and input_text/output_text parts."""
    items: list[Any] = [
        {"role": "developer", "content": "You are terse."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi, I'm Bob."}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello Bob."}]},
        {"role": "user", "content": "What's my name?"},
    ]
    r = client.responses.create(model=SMOLLM, input=items, **FAST)
    twin = _chat_twin(
        client,
        SMOLLM,
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi, I'm Bob."},
            {"role": "assistant", "content": "Hello Bob."},
            {"role": "user", "content": "What's my name?"},
        ],
    )
    assert r.output_text == twin.choices[0].message.content
    assert r.usage.input_tokens == twin.usage.prompt_tokens


def test_stream_event_sequence(client: OpenAI, base_url: str) -> None:
    whole = client.responses.create(model=SMOLLM, input="Say hello.", store=False, **FAST)
    with client.responses.stream(model=SMOLLM, input="Say hello.", store=False, **FAST) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(d.delta for d in deltas) == final.output_text == whole.output_text
    assert deltas[-1].snapshot == final.output_text  # the SDK accumulated the deltas itself
    assert final.id == events[0].response.id and final.usage.output_tokens == 8
    assert events[0].response.status == "in_progress" and final.output[0].status == "completed"
    # On the wire: each event's SSE name is its data's type.
    r = httpx.post(
        base_url + "/v1/responses",
        json={"model": SMOLLM, "input": "Hi", "stream": True, "store": False, "max_output_tokens": 2},
        timeout=60,
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    for block in filter(None, r.text.split("\n\n")):
        name, data = block.split("\n")
        assert name.startswith("event: ") and json.loads(data[len("data: ") :])["type"] == name[len("event: ") :]


class Pick(BaseModel):
    color: Literal["red", "green", "blue"]
    count: int


def test_structured_output(client: OpenAI) -> None:
    r = client.responses.parse(
        model=SMOLLM, input="Pick a color and a count.", text_format=Pick, temperature=0, max_output_tokens=32
    )
    assert isinstance(r.output_parsed, Pick), r.output_text
    assert r.text.format.type == "json_schema" and r.text.format.name == "Pick"
    r = client.responses.create(
        model=SMOLLM,
        input="Give a JSON object with a key ok set to true.",
        temperature=0,
        instructions="You are a helpful AI assistant named SmolLM, trained by Hugging Face",
        max_output_tokens=64,
        text={"format": {"type": "json_object"}},
    )
    assert isinstance(json.loads(r.output_text), dict)


# ---- tools ---------------------------------------------------------------------------


def test_forced_tool_choice_and_round_trip(client: OpenAI, tools_model: str) -> None:
    ask = "What is the weather in Paris?"
    r = client.responses.create(
        model=tools_model,
        input=ask,
        tools=[WEATHER, CLOCK],
        tool_choice="required",
        temperature=0,
        max_output_tokens=32,
    )
    (call,) = r.output
    assert call.type == "function_call" and call.status == "completed" and call.id.startswith("fc_")
    assert call.name in ("get_weather", "get_time") and len(call.call_id) == 9
    named = client.responses.create(
        model=tools_model,
        input=ask,
        tools=[WEATHER, CLOCK],
        tool_choice={"type": "function", "name": "get_weather"},
        temperature=0,
        max_output_tokens=32,
    )
    (call,) = named.output
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert named.status == "completed" and named.output_text == ""
    # The call and its result go back as items; the model answers in text.
    items: list[Any] = [
        {"role": "user", "content": ask},
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees and sunny"},
    ]
    answer = client.responses.create(model=tools_model, input=items, tools=[WEATHER], **FAST)
    assert answer.output[0].type == "message" and answer.output_text
    twin = _chat_twin(
        client,
        tools_model,
        [
            {"role": "user", "content": ask},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.call_id,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": call.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.call_id, "content": "18 degrees and sunny"},
        ],
        tools=[
            {
                "type": "function",
                "function": {"name": "get_weather", "description": "Get the weather for a city", "parameters": CITY},
            }
        ],
    )
    assert answer.output_text == twin.choices[0].message.content
    assert answer.usage.input_tokens == twin.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(
            model=tools_model, input=ask, tools=[WEATHER], tool_choice={"type": "function", "name": "other"}
        )
    assert err.value.param == "tool_choice"


def test_forced_tool_call_streamed(client: OpenAI, tools_model: str) -> None:
    with client.responses.stream(
        model=tools_model,
        input="Weather in London?",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        temperature=0,
        max_output_tokens=32,
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    (call,) = final.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "London"} == json.loads(events[4].arguments)


def test_reasoning_item(client: OpenAI, base_url: str) -> None:
    """reasoning.effort turns thinking on; the thinking comes back as a reasoning item before the message."""
    r = httpx.post(
        base_url + "/api/create",
        json={"model": THINK_MODEL, "from": SMOLLM, "template": THINK_TEMPLATE, "stream": False},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    ask: dict[str, Any] = {
        "model": THINK_MODEL,
        "input": "What is 6+1?",
        "reasoning": {"effort": "low"},
        "temperature": 0,
        "max_output_tokens": 30,
    }
    whole = client.responses.create(**ask)
    reasoning, message = whole.output
    assert reasoning.type == "reasoning" and reasoning.summary[0].text  # "six plus one"
    assert "<think>" not in whole.output_text and message.type == "message"
    with client.responses.stream(**ask) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds[2:4] == ["response.output_item.added", "response.reasoning_summary_part.added"]
    assert "response.reasoning_summary_text.delta" in kinds and "response.reasoning_summary_text.done" in kinds
    assert final.output[0].summary[0].text == reasoning.summary[0].text
    assert final.output_text == whole.output_text


# ---- stored responses -----------------------------------------------------------------


def test_store_continue_get_delete(client: OpenAI) -> None:
    first = client.responses.create(model=SMOLLM, input="Hi, I'm Bob.", instructions="Answer in French.", **FAST)
    got = client.responses.retrieve(first.id)
    assert got.id == first.id and got.output_text == first.output_text and got.usage == first.usage
    follow = client.responses.create(model=SMOLLM, input="What's my name?", previous_response_id=first.id, **FAST)
    assert follow.previous_response_id == first.id
    # The stored conversation continues; instructions do not carry over (as in OpenAI's API).
    twin = _chat_twin(
        client,
        SMOLLM,
        [
            {"role": "user", "content": "Hi, I'm Bob."},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "What's my name?"},
        ],
    )
    assert follow.output_text == twin.choices[0].message.content
    assert follow.usage.input_tokens == twin.usage.prompt_tokens
    # A streamed response is stored too, by the time response.completed arrives.
    with client.responses.stream(model=SMOLLM, input="And mine?", previous_response_id=follow.id, **FAST) as s:
        streamed = s.get_final_response()
    assert client.responses.retrieve(streamed.id).output_text == streamed.output_text
    assert streamed.usage.input_tokens > follow.usage.input_tokens
    # store=false keeps nothing.
    unstored = client.responses.create(model=SMOLLM, input="Hi", store=False, **FAST)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    # DELETE removes it: reading, deleting again and continuing from it are all 404s.
    assert client.responses.delete(first.id) is None
    for call in (lambda: client.responses.retrieve(first.id), lambda: client.responses.delete(first.id)):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.body["param"] == "response_id"
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.create(model=SMOLLM, input="x", previous_response_id=first.id)
    assert err.value.body["param"] == "previous_response_id"
    assert client.responses.retrieve(follow.id).previous_response_id == first.id  # others stay


def test_stored_responses_survive_a_restart(
    start_server: Callable[..., ServerProc], server: ServerProc, tmp_path: Path
) -> None:
    env = {"CORRAL_STARTER_MODELS": "0", "OLLAMA_MODELS": str(server.home / "models")}
    home = tmp_path / "restart-home"
    before = start_server(env, home=home)
    c = OpenAI(base_url=f"{before.url}/v1", api_key="x", max_retries=0, timeout=120)
    first = c.responses.create(model=SMOLLM, input="Hi, I'm Bob.", **FAST)
    before.stop()
    after = start_server(env, home=home)
    c = OpenAI(base_url=f"{after.url}/v1", api_key="x", max_retries=0, timeout=120)
    assert c.responses.retrieve(first.id).output_text == first.output_text
    follow = c.responses.create(model=SMOLLM, input="What's my name?", previous_response_id=first.id, **FAST)
    assert follow.usage.input_tokens > first.usage.input_tokens


# ---- errors ------------------------------------------------------------------------------


def test_error_shapes(client: OpenAI, base_url: str) -> None:
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as err:
            client.responses.create(model="nope", input="x", stream=stream)
        assert err.value.body == {
            "message": 'model "nope" not found',
            "type": "not_found_error",
            "param": "model",
            "code": "model_not_found",
        }
    bad: list[tuple[Any, str | None]] = [
        ({"model": SMOLLM, "input": "x", "temperature": "hot"}, "temperature"),
        ({"input": "x"}, "model"),
        ({"model": SMOLLM}, "input"),
        ({"model": SMOLLM, "input": [{"type": "telepathy"}]}, "input[0]"),
        ({"model": SMOLLM, "input": [{"role": "wizard", "content": "x"}]}, "input[0]"),
        ({"model": SMOLLM, "input": "x", "text": {"format": {"type": "yaml"}}}, "text.format"),
        ({"model": SMOLLM, "input": "x", "tools": [{"type": "web_search"}]}, "tools"),
        ({"model": SMOLLM, "input": "x", "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ([1, 2], None),
    ]
    for payload, param in bad:
        r = httpx.post(base_url + "/v1/responses", json=payload, timeout=30)
        assert r.status_code == 400, (payload, r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
        assert param is None or error["param"] == param, (payload, error)
    r = httpx.post(base_url + "/v1/responses", content=b"{not json", timeout=30)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


class _Busy:
    """The chat part of a Backend whose queue is always full."""

    def chat(self, call: Any) -> AsyncIterator[Any]:
        from corral.errors import ServerBusy

        async def events() -> AsyncIterator[Any]:
            raise ServerBusy("server busy, please try again.  maximum pending requests exceeded")
            yield  # an async generator, as the real backend's

        return events()


@pytest.fixture
def busy_client(tmp_path: Path) -> Iterator[OpenAI]:
    from starlette.testclient import TestClient

    from corral.server.app import create_app
    from corral.settings import Settings

    settings = Settings.from_env({"CORRAL_HOME": str(tmp_path), "CORRAL_STARTER_MODELS": "0"})
    with TestClient(create_app(settings, engine=object())) as http:  # type: ignore[arg-type]
        http.app.state.backend = _Busy()  # type: ignore[attr-defined]
        yield OpenAI(base_url="http://testserver/v1", api_key="x", max_retries=0, http_client=http)


def test_busy_is_503(busy_client: OpenAI) -> None:
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as err:
            busy_client.responses.create(model=SMOLLM, input="x", stream=stream)
        assert err.value.status_code == 503 and err.value.type == "server_error"
        assert "maximum pending requests exceeded" in err.value.message
