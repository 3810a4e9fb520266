"""Anthropic's Messages API (/v1/messages) on a real server, driven by the official ``anthropic`` SDK.

The SDK's ``base_url`` points at the server, as Claude-Code-style tools do
with ``ANTHROPIC_BASE_URL``. SmolLM2-135M runs in the in-process llama.cpp
engine; where a request has a chat-completions twin, both are sent at
temperature 0 and must give the same text and prompt token count, which
proves the content blocks become the same conversation. Forced tool choice
(``any``/``tool``) is constrained sampling, so tool calls are asserted
exactly. Statuses nothing on a loopback server produces on demand (503 and
the rest of the error table) use the real app in-process with a stand-in
backend.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

import anthropic
import httpx
import pytest
from anthropic import Anthropic
from openai import OpenAI
from pydantic import BaseModel

from tests.conftest import SMOLLM, free_port
from tests.test_openai_api import THINK_MODEL, THINK_TEMPLATE
from tests.test_responses_api import CITY

# The SDK dropped the sampling keywords; the API (and Corral) still take them in the body.
GREEDY: dict[str, Any] = {"extra_body": {"temperature": 0}}
HELLO = [{"role": "user", "content": "Say hello."}]
WEATHER = {"name": "get_weather", "description": "Get the weather for a city", "input_schema": CITY}
CLOCK = {
    "name": "get_time",
    "description": "Get the time in a time zone",
    "input_schema": {"type": "object", "properties": {"tz": {"type": "string", "enum": ["UTC"]}}, "required": ["tz"]},
}


@pytest.fixture(scope="module")
def client(base_url: str) -> Anthropic:
    return Anthropic(base_url=base_url, api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def oai(base_url: str) -> OpenAI:
    return OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=120)


def _twin(oai: OpenAI, model: str, messages: list[dict[str, Any]], max_tokens: int = 8, **kwargs: Any) -> Any:
    return oai.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=max_tokens, **kwargs)


# ---- create and stream ----------------------------------------------------------------


def test_create(client: Anthropic, oai: OpenAI) -> None:
    m = client.messages.create(model=SMOLLM, max_tokens=8, system="You are terse.", messages=HELLO, **GREEDY)
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant" and m.model == SMOLLM
    (block,) = m.content
    assert block.type == "text" and block.text
    assert m.stop_reason == "max_tokens" and m.stop_sequence is None and m.usage.output_tokens == 8
    twin = _twin(oai, SMOLLM, [{"role": "system", "content": "You are terse."}, *HELLO])
    assert block.text == twin.choices[0].message.content and m.usage.input_tokens == twin.usage.prompt_tokens
    # System as blocks and multi-turn block content: the same conversation as the chat messages.
    m = client.messages.create(
        model=SMOLLM,
        max_tokens=8,
        system=[{"type": "text", "text": "You are terse."}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Hi, I'm Bob."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello Bob."}]},
            {"role": "user", "content": "What's my name?"},
        ],
        **GREEDY,
    )
    twin = _twin(
        oai,
        SMOLLM,
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi, I'm Bob."},
            {"role": "assistant", "content": "Hello Bob."},
            {"role": "user", "content": "What's my name?"},
        ],
    )
    assert m.content[0].text == twin.choices[0].message.content
    assert m.usage.input_tokens == twin.usage.prompt_tokens


SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def test_stop_reasons(client: Anthropic) -> None:
    # The starter has no default system prompt (as Ollama's library model): give it SmolLM2's own, which
    # keeps its answer to one word.
    done = client.messages.create(
        model=SMOLLM,
        max_tokens=32,
        system=SMOLLM_SYSTEM,
        messages=[{"role": "user", "content": "Reply with one word: yes or no. Is the sky blue?"}],
        **GREEDY,
    )
    assert done.stop_reason == "end_turn" and done.usage.output_tokens < 32
    count = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    full = client.messages.create(model=SMOLLM, max_tokens=32, system=SMOLLM_SYSTEM, messages=count, **GREEDY)
    assert "5" in full.content[0].text
    stopped = client.messages.create(
        model=SMOLLM, max_tokens=32, system=SMOLLM_SYSTEM, messages=count, stop_sequences=["5", "never"], **GREEDY
    )
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "5"
    assert full.content[0].text.startswith(stopped.content[0].text) and "5" not in stopped.content[0].text
    sampled = client.messages.create(
        model=SMOLLM, max_tokens=8, messages=HELLO, extra_body={"temperature": 0.7, "top_p": 0.9, "top_k": 1}
    )
    assert (
        sampled.content[0].text
        == client.messages.create(model=SMOLLM, max_tokens=8, messages=HELLO, **GREEDY).content[0].text
    )  # top_k 1 is greedy
    # max_tokens 0 warms the model and generates nothing.
    warm = client.messages.create(model=SMOLLM, max_tokens=0, messages=HELLO)
    assert warm.content[0].text == "" and warm.stop_reason == "max_tokens"
    assert warm.usage.output_tokens == 0
    assert warm.usage.input_tokens == client.messages.count_tokens(model=SMOLLM, messages=HELLO).input_tokens


def test_stream(client: Anthropic, base_url: str) -> None:
    whole = client.messages.create(model=SMOLLM, max_tokens=8, messages=HELLO, **GREEDY)
    with client.messages.stream(model=SMOLLM, max_tokens=8, messages=HELLO, **GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text == final.content[0].text
    assert final.stop_reason == "max_tokens" and final.usage == whole.usage
    # The wire: SSE events named by their data's type, in Anthropic's order.
    r = httpx.post(
        base_url + "/v1/messages",
        json={"model": SMOLLM, "max_tokens": 3, "stream": True, "messages": HELLO, "temperature": 0},
        timeout=60,
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in filter(None, r.text.split("\n\n")):
        name, data = block.split("\n")
        events.append(json.loads(data[len("data: ") :]))
        assert events[-1]["type"] == name[len("event: ") :]
    assert [e["type"] for e in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0]["message"]["content"] == [] and events[2]["content_block"] == {"type": "text", "text": ""}
    assert events[-2]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert events[-2]["usage"]["output_tokens"] == 3 and events[-2]["usage"]["input_tokens"] > 0


class Pick(BaseModel):
    color: Literal["red", "green", "blue"]
    count: int


def test_structured_output(client: Anthropic) -> None:
    m = client.messages.parse(
        model=SMOLLM,
        max_tokens=32,
        output_format=Pick,
        messages=[{"role": "user", "content": "Pick a color and a count."}],
        **GREEDY,
    )
    assert isinstance(m.parsed_output, Pick), m.content


def test_count_tokens(client: Anthropic, tools_model: str) -> None:
    made = client.messages.create(model=SMOLLM, max_tokens=1, system="You are terse.", messages=HELLO, **GREEDY)
    counted = client.messages.count_tokens(model=SMOLLM, system="You are terse.", messages=HELLO)
    assert counted.input_tokens == made.usage.input_tokens
    # Tools are part of the prompt (the template prints them).
    with_tools = client.messages.count_tokens(model=tools_model, messages=HELLO, tools=[WEATHER])
    made = client.messages.create(model=tools_model, max_tokens=1, messages=HELLO, tools=[WEATHER], **GREEDY)
    assert with_tools.input_tokens == made.usage.input_tokens
    assert with_tools.input_tokens > client.messages.count_tokens(model=tools_model, messages=HELLO).input_tokens


def test_thinking_blocks(client: Anthropic, base_url: str) -> None:
    r = httpx.post(
        base_url + "/api/create",
        json={"model": THINK_MODEL, "from": SMOLLM, "template": THINK_TEMPLATE, "stream": False},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    ask: dict[str, Any] = {
        "model": THINK_MODEL,
        "max_tokens": 30,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [{"role": "user", "content": "What is 6+1?"}],
        **GREEDY,
    }
    m = client.messages.create(**ask)
    thinking, text = m.content
    assert thinking.type == "thinking" and thinking.thinking and text.type == "text" and "<think>" not in text.text
    with client.messages.stream(**ask) as stream:
        final = stream.get_final_message()
    assert [b.model_dump(exclude={"parsed_output"}) for b in final.content] == [b.model_dump() for b in m.content]
    # "adaptive" leaves it to the model: no 400 from a model that cannot think.
    plain = client.messages.create(model=SMOLLM, max_tokens=4, messages=HELLO, thinking={"type": "adaptive"}, **GREEDY)
    assert [b.type for b in plain.content] == ["text"]


# ---- tools ---------------------------------------------------------------------------------


def test_forced_tool_choice_and_round_trip(client: Anthropic, oai: OpenAI, tools_model: str) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    m = client.messages.create(
        model=tools_model, max_tokens=32, messages=ask, tools=[WEATHER, CLOCK], tool_choice={"type": "any"}, **GREEDY
    )
    assert m.stop_reason == "tool_use" and [b.type for b in m.content] == ["tool_use"]
    assert m.content[0].name in ("get_weather", "get_time")
    m = client.messages.create(
        model=tools_model,
        max_tokens=32,
        messages=ask,
        tools=[WEATHER, CLOCK],
        tool_choice={"type": "tool", "name": "get_weather"},
        **GREEDY,
    )
    (use,) = m.content
    assert m.stop_reason == "tool_use" and use.type == "tool_use" and use.name == "get_weather"
    assert use.input == {"city": "Paris"} and use.id
    # The tool_use block and a tool_result block go back; the model answers in text.
    history: list[Any] = [
        *ask,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 degrees and sunny"}],
        },
    ]
    answer = client.messages.create(model=tools_model, max_tokens=8, messages=history, tools=[WEATHER], **GREEDY)
    assert answer.content[0].type == "text" and answer.stop_reason in ("end_turn", "max_tokens")
    twin = _twin(
        oai,
        tools_model,
        [
            *ask,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": use.id,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": json.dumps(use.input)},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": use.id, "content": "18 degrees and sunny"},
        ],
        tools=[
            {
                "type": "function",
                "function": {"name": "get_weather", "description": "Get the weather for a city", "parameters": CITY},
            }
        ],
    )
    assert answer.content[0].text == twin.choices[0].message.content
    assert answer.usage.input_tokens == twin.usage.prompt_tokens
    # tool_result content given as blocks reads the same.
    blocks = [
        *history[:2],
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": use.id,
                    "content": [{"type": "text", "text": "18 degrees and sunny"}],
                }
            ],
        },
    ]
    assert (
        client.messages.create(model=tools_model, max_tokens=8, messages=blocks, tools=[WEATHER], **GREEDY)
        .content[0]
        .text
        == answer.content[0].text
    )


def test_forced_tool_call_streamed(client: Anthropic, tools_model: str) -> None:
    with client.messages.stream(
        model=tools_model,
        max_tokens=32,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Weather in London?"}],
        **GREEDY,
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    assert [d.type for d in deltas] == ["input_json_delta"] and json.loads(deltas[0].partial_json) == {"city": "London"}
    (use,) = final.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "London"}
    assert final.stop_reason == "tool_use"


def test_tool_choice_none_drops_tools(client: Anthropic, base_url: str) -> None:
    # A model whose template has no tools section refuses tools, unless tool_choice none drops them.
    plain = "smol-no-tools"
    r = httpx.post(
        base_url + "/api/create",
        timeout=120,
        json={
            "model": plain,
            "from": SMOLLM,
            "template": "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n",
        },
    )
    assert r.status_code == 200
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model=plain, max_tokens=4, messages=HELLO, tools=[WEATHER])
    assert "does not support tools" in err.value.message
    m = client.messages.create(
        model=plain, max_tokens=4, messages=HELLO, tools=[WEATHER], tool_choice={"type": "none"}, **GREEDY
    )
    assert m.content[0].type == "text" and m.stop_reason == "max_tokens"


# ---- errors ------------------------------------------------------------------------------------


def test_error_shapes(client: Anthropic, base_url: str) -> None:
    for stream in (False, True):
        with pytest.raises(anthropic.NotFoundError) as err:
            client.messages.create(model="nope", max_tokens=4, messages=HELLO, stream=stream)
        assert err.value.status_code == 404
        assert err.value.body == {
            "type": "error",
            "error": {"type": "not_found_error", "message": 'model "nope" not found'},
        }
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="nope", messages=HELLO)
    bad: list[Any] = [
        {"model": SMOLLM, "messages": HELLO},  # no max_tokens
        {"model": SMOLLM, "max_tokens": 4, "messages": HELLO, "temperature": 1.5},
        {"model": SMOLLM, "max_tokens": 4, "messages": [{"role": "system", "content": "x"}]},
        {"model": SMOLLM, "max_tokens": 4, "messages": []},
        {"model": SMOLLM, "max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "telepathy"}]}]},
        {"model": SMOLLM, "max_tokens": 4, "messages": HELLO, "tool_choice": {"type": "sometimes"}},
        {
            "model": SMOLLM,
            "max_tokens": 4,
            "messages": HELLO,
            "tools": [WEATHER],
            "tool_choice": {"type": "tool", "name": "other"},
        },
        {"model": SMOLLM, "max_tokens": 4, "messages": HELLO, "tools": [{"name": "x", "type": "bash_20250124"}]},
        [1, 2],
    ]
    for payload in bad:
        r = httpx.post(base_url + "/v1/messages", json=payload, timeout=30)
        assert r.status_code == 400, (payload, r.text)
        body = r.json()
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
        assert body["error"]["type"] == "invalid_request_error", body
    r = httpx.post(base_url + "/v1/messages", content=b"{not json", timeout=30)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError) as bad_err:
        client.messages.create(
            model=SMOLLM,
            max_tokens=4,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "url", "url": "https://x.test/cat.png"}}],
                }
            ],
        )
    assert bad_err.value.body["error"]["type"] == "invalid_request_error"


class _StandIn:  # the chat part of a Backend
    """Raises the error the model name asks for; ``midstream`` fails after one piece."""

    def __init__(self) -> None:
        from corral.errors import EngineError, Forbidden, ServerBusy, TooManyRequests, Unauthorized

        self.errors: dict[str, Exception] = {
            "unauthorized": Unauthorized("invalid api key"),
            "forbidden": Forbidden("model not allowed"),
            "limited": TooManyRequests("slow down"),
            "crash": EngineError("engine error: boom"),
            "busy": ServerBusy("server busy, please try again.  maximum pending requests exceeded"),
        }

    async def chat(self, call: Any) -> AsyncIterator[Any]:
        from corral.backend.base import Piece
        from corral.errors import EngineError

        if call.model == "midstream":
            yield Piece("Hello")
            raise EngineError("engine error: crashed mid-stream")
        raise self.errors[call.model]


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[Anthropic]:
    """The real app with a stand-in backend, served by uvicorn on a thread (the anthropic SDK only takes
    httpx2 clients, so Starlette's httpx-based TestClient cannot carry it)."""
    import uvicorn

    from corral.server.app import create_app
    from corral.settings import Settings

    settings = Settings.from_env({"CORRAL_HOME": str(tmp_path), "CORRAL_STARTER_MODELS": "0"})
    app = create_app(settings, engine=object())  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the in-process server did not start"
    app.state.backend = _StandIn()  # after the lifespan made the real one
    try:
        yield Anthropic(base_url=f"http://127.0.0.1:{server.config.port}", api_key="x", max_retries=0, timeout=30)
    finally:
        server.should_exit = True
        thread.join(30)


def test_error_classes_map_to_sdk_exceptions(stand_in: Anthropic) -> None:
    expected = {
        "unauthorized": (anthropic.AuthenticationError, 401, "authentication_error"),
        "forbidden": (anthropic.PermissionDeniedError, 403, "permission_error"),
        "limited": (anthropic.RateLimitError, 429, "rate_limit_error"),
        "crash": (anthropic.InternalServerError, 500, "api_error"),
        "busy": (anthropic.ServiceUnavailableError, 503, "overloaded_error"),
    }
    for model, (exc_type, status, err_type) in expected.items():
        for stream in (False, True):
            with pytest.raises(exc_type) as err:
                stand_in.messages.create(model=model, max_tokens=4, messages=HELLO, stream=stream)
            assert err.value.status_code == status and err.value.body["error"]["type"] == err_type
    # After the first block the status is already 200: the failure is an `event: error`, which the SDK raises.
    with stand_in.messages.stream(model="midstream", max_tokens=4, messages=HELLO) as stream:
        with pytest.raises(anthropic.APIStatusError) as mid:
            for text in stream.text_stream:
                assert text == "Hello"
        assert stream.current_message_snapshot.content[0].text == "Hello"
    assert mid.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": "engine error: crashed mid-stream"},
    }


def test_api_keys_in_x_api_key_and_the_request_log(start_server: Any, tmp_path: Path) -> None:
    """With keys on, the Anthropic SDK's own header authenticates; a wrong key is its AuthenticationError;
    both dialects' calls land in the request log with route, model, status and phases."""
    from corral.gateway.db import open_database
    from corral.gateway.keys import KeyStore
    from corral.gateway.requestlog import RequestLog

    home = tmp_path / "keyed"
    home.mkdir()
    db = open_database(home / "corral.db")
    db.migrate()
    _, key = KeyStore(db).create("agent")
    srv = start_server(home=home)
    good = Anthropic(base_url=srv.url, api_key=key, max_retries=0)
    reply = good.messages.create(model=SMOLLM, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    assert reply.type == "message" and reply.usage.output_tokens <= 4
    bad = Anthropic(base_url=srv.url, api_key="corral-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model=SMOLLM, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    oai = OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0)
    assert oai.responses.create(model=SMOLLM, input="Hi", max_output_tokens=4).status in ("completed", "incomplete")
    srv.stop()  # flushes the log
    rows = RequestLog(open_database(home / "corral.db")).query(limit=10)
    by_route = {(r["route"], r["status"]): r for r in rows}
    ok = by_route[("/v1/messages", 200)]
    assert ok["key_name"] == "agent" and ok["model"] == SMOLLM and ok["dialect"] == "anthropic"
    assert ok["output_tokens"] <= 4 and ok["total_ms"] > 0 and ok["prompt_tokens"] > 0
    assert ("/v1/messages", 401) in by_route
    resp = by_route[("/v1/responses", 200)]
    assert resp["dialect"] == "openai" and resp["model"] == SMOLLM and resp["prompt_tokens"] > 0
