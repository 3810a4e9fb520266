"""OpenAIBackend against a real HTTP server that answers as vLLM and llama-server do.

The scripted upstream (:mod:`tests.fleet_upstream`) runs on loopback in its
own thread; the backend talks to it with its real aiohttp client. The last
test runs the server's own Ollama routes over this backend, which is how an
Ollama client reaches an ``openai``-kind upstream through the gateway.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from corral.backend.base import ChatCall, EmbedCall, Final, GenerateCall, Piece, collect
from corral.errors import BadGateway, BadRequest, CorralError, ModelNotFound
from corral.fleet.openai_backend import OpenAIBackend
from corral.fleet.openai_wire import FAR_FUTURE
from corral.server.app import build_app
from corral.server.ollama import inference, models
from corral.settings import Settings
from tests.conftest import free_port
from tests.fleet_upstream import USAGE, FakeUpstream

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def backend(url: str, **kw: Any) -> AbstractAsyncContextManager[OpenAIBackend]:
    @asynccontextmanager
    async def opened() -> AsyncIterator[OpenAIBackend]:
        b = OpenAIBackend(url, name="vllm", **kw)
        try:
            yield b
        finally:
            await b.close()

    return opened()


async def events(stream: AsyncIterator[Piece | Final]) -> tuple[list[Piece], Final]:
    got = [e async for e in stream]
    assert all(isinstance(e, Piece) for e in got[:-1]) and isinstance(got[-1], Final)
    return got[:-1], got[-1]  # type: ignore[return-value]


async def test_streamed_chat_gives_thinking_content_and_one_final_with_usage(upstream: FakeUpstream) -> None:
    call = ChatCall(
        model="chat-model",
        messages=HI,
        format="json",
        think=True,
        options={
            "temperature": 0.2,
            "top_p": 0.9,
            "top_k": 5,
            "num_predict": 50,
            "stop": "END",
            "seed": 7,
            "presence_penalty": 0.1,
            "frequency_penalty": 0.3,
            "num_ctx": 8192,
        },
    )
    async with backend(upstream.url) as b:
        pieces, final = await events(b.chat(call))
    assert [(p.thinking, p.content) for p in pieces] == [("Let me think.", ""), ("", "Hel"), ("", "lo"), ("", " world")]
    assert (final.done_reason, final.model, final.prompt_eval_count, final.eval_count) == ("stop", "chat-model", 12, 3)
    assert final.prompt_eval_ns > 0 and final.eval_ns > 0 and final.total_ns >= final.prompt_eval_ns + final.eval_ns
    assert final.tool_calls == [] and final.content == ""
    sent = upstream.bodies("/v1/chat/completions")[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert {
        k: sent[k]
        for k in (
            "temperature",
            "top_p",
            "top_k",
            "max_tokens",
            "stop",
            "seed",
            "presence_penalty",
            "frequency_penalty",
        )
    } == {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 5,
        "max_tokens": 50,
        "stop": ["END"],
        "seed": 7,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.3,
    }
    assert "num_ctx" not in sent and sent["response_format"] == {"type": "json_object"}
    assert sent["chat_template_kwargs"] == {"enable_thinking": True} and sent["messages"] == HI


async def test_tool_call_deltas_become_ollama_tool_calls_and_history_goes_out_in_openai_shape(
    upstream: FakeUpstream,
) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    history = [
        {"role": "user", "content": "Weather in Paris?", "images": ["iVBORw0KGgo="]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "get_time", "arguments": {"tz": "CET"}}},
                {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            ],
        },
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        {"role": "tool", "content": "12:00"},
    ]
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    async with backend(upstream.url) as b:
        pieces, final = await events(b.chat(ChatCall(model="tool-model", messages=history, tools=tools, format=schema)))
    assert pieces == []
    assert final.tool_calls == [
        {"id": "call_abc", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}},
        {"id": "call_def", "function": {"index": 1, "name": "get_time", "arguments": {"tz": "CET"}}},
    ]
    sent = upstream.bodies("/v1/chat/completions")[-1]
    assert sent["tools"] == tools
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
    user, assistant, weather, time_ = sent["messages"]
    assert user["content"] == [
        {"type": "text", "text": "Weather in Paris?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    time_id, weather_id = (c["id"] for c in assistant["tool_calls"])
    assert assistant["tool_calls"][1]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert weather["tool_call_id"] == weather_id and time_["tool_call_id"] == time_id  # by name, then by order
    again = [m.copy() for m in history]
    async with backend(upstream.url) as b:
        await collect(b.chat(ChatCall(model="tool-model", messages=again)))
    assert upstream.bodies("/v1/chat/completions")[-1]["messages"] == sent["messages"]  # ids stable across turns


async def test_a_length_stop_is_done_reason_length(upstream: FakeUpstream) -> None:
    async with backend(upstream.url) as b:
        got = await collect(b.chat(ChatCall(model="chat-model", messages=HI, options={"num_predict": 2})))
    assert (got.content, got.final.done_reason, got.final.eval_count) == ("Hello", "length", 2)


@pytest.mark.parametrize(
    ("model", "kind", "status", "words"),
    [
        ("no-such-model", ModelNotFound, 404, 'model "no-such-model" not found'),
        ("picky", BadRequest, 400, "'temperature' must be <= 2"),
        ("broken", BadGateway, 502, "upstream vllm failed: CUDA out of memory"),
    ],
)
async def test_error_answers_raise_before_any_event(
    upstream: FakeUpstream, model: str, kind: type[CorralError], status: int, words: str
) -> None:
    async with backend(upstream.url) as b:
        for stream in (
            b.chat(ChatCall(model=model, messages=HI)),
            b.generate(GenerateCall(model=model, prompt="x", raw=True)),
        ):
            with pytest.raises(kind) as err:
                await anext(stream)
            assert err.value.status == status and words in err.value.message
        with pytest.raises(kind):
            await b.embed(EmbedCall(model, ["x"]))


async def test_an_unreachable_upstream_is_a_bad_gateway_naming_it() -> None:
    async with backend(f"http://127.0.0.1:{free_port()}") as b:
        with pytest.raises(BadGateway, match="upstream vllm is unreachable"):
            await anext(b.chat(ChatCall(model="chat-model", messages=HI)))
        with pytest.raises(BadGateway, match="upstream vllm is unreachable"):
            await b.models()


async def test_failures_after_the_first_piece_raise_from_the_stream(upstream: FakeUpstream) -> None:
    async with backend(upstream.url) as b:
        for model, first, words in (("cut", "partial", "failed mid-answer"), ("errmid", "x", "engine died")):
            stream = b.chat(ChatCall(model=model, messages=HI))
            piece = await anext(stream)
            assert isinstance(piece, Piece) and piece.content == first
            with pytest.raises(BadGateway, match=words):
                await anext(stream)


async def test_a_client_that_stops_reading_closes_the_upstream_request(upstream: FakeUpstream) -> None:
    upstream.disconnected.clear()
    async with backend(upstream.url) as b:
        stream = b.chat(ChatCall(model="chat-model", messages=HI, options={"num_predict": 1000}))
        for _ in range(3):
            await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]
        assert await asyncio.to_thread(upstream.disconnected.wait, 5)


async def test_generate_raw_is_a_completion_and_templated_is_a_chat(upstream: FakeUpstream) -> None:
    async with backend(upstream.url) as b:
        raw = await collect(
            b.generate(GenerateCall(model="chat-model", prompt="Once upon", raw=True, options={"num_predict": -1}))
        )
        assert (raw.content, raw.final.prompt_eval_count, raw.final.done_reason) == ("raw:Once upon", 12, "stop")
        sent = upstream.bodies("/v1/completions")[-1]
        assert sent["prompt"] == "Once upon" and "max_tokens" not in sent and sent["stream"] is True
        templated = await collect(b.generate(GenerateCall(model="chat-model", prompt="Hi", system="Be brief.")))
        assert templated.content == "Hello world"
        assert upstream.bodies("/v1/chat/completions")[-1]["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ]
        with pytest.raises(BadRequest, match="template"):
            b.generate(GenerateCall(model="chat-model", prompt="Hi", template="{{ .Prompt }}"))
        with pytest.raises(BadRequest, match="context"):
            b.generate(GenerateCall(model="chat-model", prompt="Hi", raw=True, context=[1, 2]))


async def test_embed_orders_by_index_and_normalises(upstream: FakeUpstream) -> None:
    async with backend(upstream.url) as b:
        out = await b.embed(EmbedCall("chat-model", ["a", "b"], dimensions=2))
    assert out.vectors == [pytest.approx([0.6, 0.8]), pytest.approx([0.0, 1.0])]
    assert out.prompt_tokens == 5 and out.total_ns > 0
    assert upstream.bodies("/v1/embeddings")[-1] == {
        "model": "chat-model",
        "input": ["a", "b"],
        "encoding_format": "float",
        "dimensions": 2,
    }


async def test_the_catalog_is_v1_models(upstream: FakeUpstream) -> None:
    async with backend(upstream.url) as b:
        listed = {m.name: m for m in await b.models()}
        assert list(listed)[:2] == ["chat-model", "tool-model"]
        tool = listed["tool-model"]
        assert (tool.namespace, tool.size, tool.details["format"]) == ("llamacpp", 123456, "openai")
        assert tool.modified_at == datetime.fromtimestamp(1_700_000_100, UTC)
        assert (await b.model("chat-model:latest")).name == "chat-model"
        with pytest.raises(ModelNotFound):
            await b.model("nope")
        info = await b.show("chat-model")
        assert info.capabilities == ["completion", "tools"] and info.model_info["openai.context_length"] == 4096
        running = {r.name: r for r in await b.running()}
        assert running["tool-model"].context_length == 8192 and running["chat-model"].expires_at == FAR_FUTURE
        assert (await b.load("chat-model", keep_alive=None, options=None)).loaded
        assert not (await b.load("chat-model", keep_alive=0, options=None)).loaded
        assert await b.unload("chat-model") is False
        with pytest.raises(ModelNotFound):
            await b.load("nope", keep_alive=None, options=None)


async def test_the_upstream_key_is_sent_and_a_refused_key_is_the_gateways_fault() -> None:
    server = FakeUpstream(key="sekrit").start()
    try:
        async with backend(server.url, key="sekrit") as b:
            assert len(await b.models()) == 5
        async with backend(server.url, key="wrong") as b:
            with pytest.raises(BadGateway, match="refused the gateway's credentials: Invalid API key"):
                await anext(b.chat(ChatCall(model="chat-model", messages=HI)))
    finally:
        server.stop()


def test_ollama_routes_over_the_backend_speak_ollama(upstream: FakeUpstream, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, models_dir=tmp_path / "models")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.backend = OpenAIBackend(upstream.url, name="vllm")
        yield
        await app.state.backend.close()

    app = build_app(settings, [*models.routes, *inference.routes], (), lifespan)
    with TestClient(app) as client:
        r = client.post("/api/chat", json={"model": "chat-model", "messages": HI, "think": True})
        lines = [json.loads(line) for line in r.text.splitlines()]
        assert "".join(x["message"]["content"] for x in lines) == "Hello world"
        assert lines[0]["message"]["thinking"] == "Let me think."
        assert lines[-1]["done"] and lines[-1]["eval_count"] == USAGE["completion_tokens"]
        assert lines[-1]["eval_duration"] > 0 and lines[-1]["prompt_eval_duration"] > 0
        tools = client.post("/api/chat", json={"model": "tool-model", "messages": HI, "stream": False}).json()
        assert tools["message"]["tool_calls"][0]["function"] == {
            "index": 0,
            "name": "get_weather",
            "arguments": {"city": "Paris"},
        }
        assert [m["name"] for m in client.get("/api/tags").json()["models"]][:2] == ["chat-model", "tool-model"]
        assert client.post("/api/show", json={"model": "tool-model"}).json()["details"]["format"] == "openai"
        assert client.get("/api/ps").json()["models"][0]["expires_at"].startswith("9999-12-31")
        missing = client.post("/api/chat", json={"model": "nope", "messages": HI})
        assert missing.status_code == 404 and missing.json() == {"error": 'model "nope" not found'}
