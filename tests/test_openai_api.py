"""The OpenAI dialect (/v1) on a real server, driven by the official ``openai`` SDK.

Every field of the OpenAI-compatibility issue runs against SmolLM2-135M in the
in-process llama.cpp engine: chat and legacy completions (streamed and not),
embeddings, models, tool calls, reasoning, logprobs and the error classes.
The exceptions are the last tests, which run the app in-process with a fake
engine (``make_app``): requests refused before they reach a model (error
shapes, ``n`` other than 1), and how 401/403/429/500 and mid-stream errors
reach the SDK, because nothing in the server produces most of those yet,
so the fake engine raises them on demand. (The 503 of a full queue is in
test_scheduler.py, in-process too.)
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

from corral.errors import EngineError, Forbidden, TooManyRequests, Unauthorized
from tests.conftest import SMOLLM, TINY, InProc, MakeApp

FAST = {"temperature": 0, "max_tokens": 8}
HELLO = [{"role": "user", "content": "Say hello."}]
# A 1x1 PNG.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="

TOOLS_MODEL = "smol-oai-tools"
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nYou can call tools. Tools: {{ tools | tojson }}\n"
    'Reply with <tool_call>{"name": ..., "arguments": ...}</tool_call>.<|im_end|>\n{% endif %}'
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
# Constrains the reply to a tool call so the tiny model reliably makes one.
WEATHER_CALL = {
    "type": "json_schema",
    "json_schema": {
        "name": "call",
        "schema": {
            "type": "object",
            "properties": {
                "name": {"const": "get_weather"},
                "arguments": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "enum": ["Paris"]}},
                    "required": ["city"],
                },
            },
            "required": ["name", "arguments"],
        },
    },
}

# A "thinking" model: its template mentions enable_thinking and, when thinking
# is on, shows worked examples that think inside <think></think> first, which
# SmolLM2 copies at temperature 0.
THINK_MODEL = "smol-oai-think"
_SHOTS = "".join(
    f"<|im_start|>user\nWhat is {q}?<|im_end|>\n<|im_start|>assistant\n<think>{t}</think>{a}<|im_end|>\n"
    for q, t, a in (
        ("1+1", "one plus one", "2"),
        ("3+3", "three plus three", "6"),
        ("5+1", "five plus one", "6"),
        ("2+3", "two plus three", "5"),
        ("4+4", "four plus four", "8"),
    )
)
THINK_TEMPLATE = (
    "{% if enable_thinking %}" + _SHOTS + "{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def client(base_url: str) -> OpenAI:
    return OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=120)


def _create(base_url: str, name: str, template: str) -> None:
    r = httpx.post(
        base_url + "/api/create",
        json={"model": name, "from": SMOLLM, "template": template, "stream": False},
        timeout=120,
    )
    assert r.status_code == 200, r.text


def _sse_events(r: httpx.Response) -> list[str]:
    assert r.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in r.text.split("\n\n") if b]
    assert all(b.startswith("data: ") for b in blocks), blocks
    return [b[len("data: ") :] for b in blocks]


# ---- /v1/models --------------------------------------------------------------------


def test_models_list_and_retrieve(client: OpenAI, base_url: str) -> None:
    models = {m.id: m for m in client.models.list()}
    m = models[SMOLLM]
    assert m.object == "model" and m.owned_by == "library" and m.created > 1_600_000_000
    got = client.models.retrieve(SMOLLM)
    assert got.id == SMOLLM and got.owned_by == "library" and got.created == m.created
    # A namespaced name has '/' and ':' in the path.
    r = httpx.post(base_url + "/api/copy", json={"source": SMOLLM, "destination": "someone/smol-copy:v1"})
    assert r.status_code == 200
    try:
        other = client.models.retrieve("someone/smol-copy:v1")
        assert other.id == "someone/smol-copy:v1" and other.owned_by == "someone"
    finally:
        httpx.request("DELETE", base_url + "/api/delete", json={"model": "someone/smol-copy:v1"})
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("nope:latest")
    assert err.value.status_code == 404 and err.value.code == "model_not_found"
    assert err.value.body == {
        "message": 'model "nope:latest" not found',
        "type": "not_found_error",
        "param": "model",
        "code": "model_not_found",
    }


# ---- /v1/chat/completions ------------------------------------------------------------------


def test_chat_non_streaming(client: OpenAI) -> None:
    r = client.chat.completions.create(
        model=SMOLLM,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi, I'm Bob."},
            {"role": "assistant", "content": "Hello Bob."},
            {"role": "user", "content": "What's my name?"},
        ],
        **FAST,
    )
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == SMOLLM
    assert r.system_fingerprint and r.created > 1_600_000_000
    choice = r.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length" and choice.logprobs is None
    assert r.usage.completion_tokens == 8 and r.usage.prompt_tokens > 20
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # max_completion_tokens is the newer name for max_tokens; "developer" is a system turn.
    r = client.chat.completions.create(
        model=SMOLLM,
        max_completion_tokens=3,
        temperature=0,
        messages=[{"role": "developer", "content": "Be terse."}, *HELLO],
    )
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
    # Content given as a list of text parts.
    parts = client.chat.completions.create(
        model=SMOLLM, messages=[{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}], **FAST
    )
    assert (
        parts.choices[0].message.content
        == client.chat.completions.create(model=SMOLLM, messages=HELLO, **FAST).choices[0].message.content
    )


def test_chat_streaming_with_usage(client: OpenAI, base_url: str) -> None:
    whole = client.chat.completions.create(model=SMOLLM, messages=HELLO, **FAST)
    chunks = list(
        client.chat.completions.create(
            model=SMOLLM, messages=HELLO, stream=True, stream_options={"include_usage": True}, **FAST
        )
    )
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    usage_chunk, finish_chunk = chunks[-1], chunks[-2]
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens == 8
    assert usage_chunk.usage.prompt_tokens == whole.usage.prompt_tokens
    assert finish_chunk.choices[0].finish_reason == "length" and finish_chunk.choices[0].delta.content is None
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text == whole.choices[0].message.content
    # Without include_usage there is no usage chunk; the wire is SSE ending in [DONE].
    r = httpx.post(
        base_url + "/v1/chat/completions", json={"model": SMOLLM, "messages": HELLO, "stream": True, **FAST}, timeout=60
    )
    events = _sse_events(r)
    assert events[-1] == "[DONE]"
    decoded = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in d for d in decoded)
    assert decoded[-1]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length"}]


def test_chat_sampling_fields(client: OpenAI) -> None:
    seeded = {
        "temperature": 1.0,
        "top_p": 0.9,
        "seed": 42,
        "max_tokens": 16,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.5,
    }
    a = client.chat.completions.create(model=SMOLLM, messages=[{"role": "user", "content": "Write a word."}], **seeded)
    b = client.chat.completions.create(model=SMOLLM, messages=[{"role": "user", "content": "Write a word."}], **seeded)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_chat_stop_string_and_list(client: OpenAI) -> None:
    # The system prompt SmolLM2's own Jinja template adds: with it this model writes numbers here.
    msgs = [
        {"role": "system", "content": "You are a helpful AI assistant named SmolLM, trained by Hugging Face"},
        {"role": "user", "content": "Count from 1 to 10, separated by commas."},
    ]
    full = client.chat.completions.create(model=SMOLLM, messages=msgs, temperature=0, max_tokens=16)
    assert "5" in full.choices[0].message.content
    for stop in ("5", ["5", "never-appears"]):
        r = client.chat.completions.create(model=SMOLLM, messages=msgs, temperature=0, max_tokens=16, stop=stop)
        assert "5" not in r.choices[0].message.content and r.choices[0].finish_reason == "stop"
        assert full.choices[0].message.content.startswith(r.choices[0].message.content)


def test_chat_logprobs(client: OpenAI) -> None:
    r = client.chat.completions.create(
        model=SMOLLM, messages=HELLO, logprobs=True, top_logprobs=3, temperature=0, max_tokens=5
    )
    content = r.choices[0].logprobs.content
    assert len(content) == 5 and "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and bytes(t.bytes).decode(errors="replace") == t.token
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob
        assert t.top_logprobs[0].token == t.token  # greedy
    bare = client.chat.completions.create(model=SMOLLM, messages=HELLO, logprobs=True, temperature=0, max_tokens=3)
    assert [t.top_logprobs for t in bare.choices[0].logprobs.content] == [[], [], []]
    streamed = list(
        client.chat.completions.create(
            model=SMOLLM, messages=HELLO, logprobs=True, top_logprobs=2, temperature=0, max_tokens=5, stream=True
        )
    )
    tokens = [t for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in tokens] == [t.token for t in content]
    assert all(len(t.top_logprobs) == 2 for t in tokens)


def test_chat_response_format(client: OpenAI) -> None:
    r = client.chat.completions.create(
        model=SMOLLM,
        messages=[{"role": "user", "content": "Give a JSON object with a key ok set to true."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=200,
    )
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    schema = {
        "type": "object",
        "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}, "count": {"type": "integer"}},
        "required": ["color", "count"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model=SMOLLM,
        messages=[{"role": "user", "content": "Pick a color and a count."}],
        response_format={"type": "json_schema", "json_schema": {"name": "pick", "schema": schema, "strict": True}},
        temperature=0,
        max_tokens=40,
    )
    data = json.loads(r.choices[0].message.content)
    assert data["color"] in ("red", "green", "blue") and isinstance(data["count"], int)
    plain = client.chat.completions.create(model=SMOLLM, messages=HELLO, response_format={"type": "text"}, **FAST)
    assert (
        plain.choices[0].message.content
        == client.chat.completions.create(model=SMOLLM, messages=HELLO, **FAST).choices[0].message.content
    )
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=SMOLLM, messages=HELLO, response_format={"type": "yaml"})
    assert err.value.param == "response_format"


def test_chat_images_go_to_the_vision_check(client: OpenAI) -> None:
    image = {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        ],
    }
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=SMOLLM, messages=[image], **FAST)
    assert "does not support vision" in err.value.message
    remote = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.test/cat.png"}}]}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=SMOLLM, messages=[remote], **FAST)
    assert "image URLs are not currently supported" in err.value.message


def test_chat_tool_choice_none_drops_tools(client: OpenAI, base_url: str) -> None:
    _create(
        base_url,
        "smol-oai-no-tools",
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
        "<|im_end|>\n{% endfor %}<|im_start|>assistant\n",
    )
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="smol-oai-no-tools", messages=HELLO, tools=[WEATHER_TOOL], **FAST)
    assert "does not support tools" in err.value.message
    r = client.chat.completions.create(
        model="smol-oai-no-tools", messages=HELLO, tools=[WEATHER_TOOL], tool_choice="none", **FAST
    )
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls


def test_chat_tool_calls(client: OpenAI, base_url: str) -> None:
    _create(base_url, TOOLS_MODEL, TOOLS_TEMPLATE)
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    for choice in ("auto", "required", {"type": "function", "function": {"name": "get_weather"}}):
        r = client.chat.completions.create(
            model=TOOLS_MODEL,
            messages=msgs,
            tools=[WEATHER_TOOL],
            tool_choice=choice,
            response_format=WEATHER_CALL,
            temperature=0,
            max_tokens=40,
        )
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and c.message.content is None, c
        (call,) = c.message.tool_calls
        assert (
            call.type == "function" and len(call.id) == 9 and call.id.isalnum() and call.function.name == "get_weather"
        )
        assert isinstance(call.function.arguments, str) and json.loads(call.function.arguments) == {"city": "Paris"}
    streamed = list(
        client.chat.completions.create(
            model=TOOLS_MODEL,
            messages=msgs,
            tools=[WEATHER_TOOL],
            response_format=WEATHER_CALL,
            temperature=0,
            max_tokens=40,
            stream=True,
        )
    )
    deltas = [t for c in streamed if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert len(deltas) == 1 and deltas[0].index == 0 and len(deltas[0].id) == 9
    assert deltas[0].type == "function" and deltas[0].function.name == "get_weather"
    assert json.loads(deltas[0].function.arguments) == {"city": "Paris"}
    assert streamed[-1].choices[0].finish_reason == "tool_calls"
    # The call and its result go back in the history; the model answers in text.
    history = msgs + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"},
    ]
    final = client.chat.completions.create(model=TOOLS_MODEL, messages=history, tools=[WEATHER_TOOL], **FAST)
    assert final.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=TOOLS_MODEL,
            messages=msgs,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "other"}},
        )
    assert err.value.param == "tool_choice"
    bad_args = msgs + [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{not json"}}
            ],
        }
    ]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=TOOLS_MODEL, messages=bad_args, tools=[WEATHER_TOOL], **FAST)


def test_chat_forced_tool_choice(client: OpenAI, base_url: str) -> None:
    """tool_choice "required" or a named function constrains sampling to a call: no response_format needed."""
    _create(base_url, TOOLS_MODEL, TOOLS_TEMPLATE)
    city = {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "London"]}},
        "required": ["city"],
    }
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": city}}
    clock = {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"tz": {"type": "string", "enum": ["UTC"]}},
                "required": ["tz"],
            },
        },
    }
    msgs = [{"role": "user", "content": "What is the weather in London?"}]
    named = client.chat.completions.create(
        model=TOOLS_MODEL,
        messages=msgs,
        tools=[weather, clock],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=32,
    )
    (call,) = named.choices[0].message.tool_calls
    assert named.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "London"}
    required = list(
        client.chat.completions.create(
            model=TOOLS_MODEL,
            messages=msgs,
            tools=[weather, clock],
            tool_choice="required",
            temperature=0,
            max_tokens=32,
            stream=True,
        )
    )
    (delta,) = [t for c in required if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert delta.function.name in ("get_weather", "get_time") and isinstance(json.loads(delta.function.arguments), dict)
    assert required[-1].choices[0].finish_reason == "tool_calls"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=TOOLS_MODEL, messages=msgs, tool_choice="required", max_tokens=4)
    assert err.value.param == "tool_choice"


def test_reasoning_effort_maps_to_think(client: OpenAI, base_url: str) -> None:
    _create(base_url, THINK_MODEL, THINK_TEMPLATE)
    msgs = [{"role": "user", "content": "What is 6+1?"}]
    r = client.chat.completions.create(
        model=THINK_MODEL, messages=msgs, reasoning_effort="low", temperature=0, max_tokens=30
    )
    message = r.choices[0].message
    reasoning = message.model_extra["reasoning"]  # Ollama's field for the thinking text
    assert reasoning and "<think>" not in reasoning and "</think>" not in reasoning  # "six plus one"
    assert message.content and "<think>" not in message.content
    streamed = list(
        client.chat.completions.create(
            model=THINK_MODEL,
            messages=msgs,
            temperature=0,
            max_tokens=30,
            stream=True,
            extra_body={"reasoning": {"effort": "high"}},
        )
    )
    deltas = [c.choices[0].delta for c in streamed if c.choices]
    assert "".join((d.model_extra or {}).get("reasoning") or "" for d in deltas) == reasoning
    assert "".join(d.content or "" for d in deltas) == message.content
    # "none" turns thinking off: no examples in the prompt, no reasoning.
    off = client.chat.completions.create(
        model=THINK_MODEL, messages=msgs, reasoning_effort="none", temperature=0, max_tokens=30
    )
    assert "reasoning" not in (off.choices[0].message.model_extra or {})
    assert off.usage.prompt_tokens < r.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=SMOLLM, messages=msgs, reasoning_effort="high", **FAST)
    assert "does not support thinking" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=THINK_MODEL, messages=msgs, reasoning_effort="extreme", **FAST)
    assert "invalid reasoning value" in err.value.message
    assert client.chat.completions.create(model=SMOLLM, messages=msgs, reasoning_effort="none", **FAST).choices


# ---- /v1/completions -------------------------------------------------------------------


def test_completions_raw_prompt(client: OpenAI, base_url: str) -> None:
    prompt = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    r = client.completions.create(model=SMOLLM, prompt=prompt, **FAST)
    assert r.id.startswith("cmpl-") and r.object == "text_completion" and r.model == SMOLLM
    assert r.choices[0].finish_reason == "length" and r.choices[0].logprobs is None
    assert r.usage.completion_tokens == 8 and r.usage.total_tokens == r.usage.prompt_tokens + 8
    # The prompt goes to the model untouched, exactly as Ollama's raw generate.
    raw = httpx.post(
        base_url + "/api/generate",
        json={
            "model": SMOLLM,
            "prompt": prompt,
            "raw": True,
            "stream": False,
            "options": {"temperature": 0, "num_predict": 8},
        },
        timeout=60,
    ).json()
    assert r.choices[0].text == raw["response"] and r.usage.prompt_tokens == raw["prompt_eval_count"]


def test_completions_streaming_stop_seed_echo(client: OpenAI) -> None:
    whole = client.completions.create(model=SMOLLM, prompt="1, 2, 3,", temperature=0, max_tokens=10)
    chunks = list(
        client.completions.create(
            model=SMOLLM,
            prompt="1, 2, 3,",
            temperature=0,
            max_tokens=10,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert chunks[-2].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].text for c in chunks[:-1]) == whole.choices[0].text
    stopped = client.completions.create(
        model=SMOLLM, prompt="1, 2, 3,", temperature=0, max_tokens=20, stop=["6", ", 7"]
    )
    assert stopped.choices[0].text == " 4, 5, " and stopped.choices[0].finish_reason == "stop"
    assert (
        client.completions.create(model=SMOLLM, prompt="1, 2, 3,", max_tokens=20, temperature=0, stop="5")
        .choices[0]
        .text
        == " 4, "
    )
    seeded = {"temperature": 1.0, "top_p": 0.95, "seed": 7, "max_tokens": 12}
    a = client.completions.create(model=SMOLLM, prompt="Once upon a time", **seeded).choices[0].text
    assert a == client.completions.create(model=SMOLLM, prompt="Once upon a time", **seeded).choices[0].text
    echoed = client.completions.create(model=SMOLLM, prompt="1, 2, 3,", temperature=0, max_tokens=10, echo=True)
    assert echoed.choices[0].text == "1, 2, 3," + whole.choices[0].text
    streamed_echo = list(
        client.completions.create(model=SMOLLM, prompt="1, 2, 3,", temperature=0, max_tokens=10, echo=True, stream=True)
    )
    assert "".join(c.choices[0].text for c in streamed_echo) == echoed.choices[0].text


def test_completions_logprobs_legacy_shape(client: OpenAI) -> None:
    r = client.completions.create(model=SMOLLM, prompt="1, 2, 3,", temperature=0, max_tokens=6, logprobs=2)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.tokens) == 6
    assert len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert all(x <= 0 for x in lp.token_logprobs)
    assert all(len(top) == 2 and tok in top for tok, top in zip(lp.tokens, lp.top_logprobs))
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    chunks = list(
        client.completions.create(model=SMOLLM, prompt="1, 2, 3,", temperature=0, max_tokens=6, logprobs=2, stream=True)
    )
    offsets = [o for c in chunks if c.choices and c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset]
    assert offsets == lp.text_offset


def test_completions_unsupported_fields_are_400(client: OpenAI) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"n": 2}, "n"),
        ({"best_of": 3}, "best_of"),
        ({"echo": True, "logprobs": 1}, "echo"),
        ({"prompt": ["a", "b"]}, "prompt"),
    ]
    for extra, param in cases:
        kwargs: dict[str, Any] = {"prompt": "x", **extra}
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model=SMOLLM, max_tokens=2, **kwargs)
        assert err.value.param == param, (extra, err.value.body)
    with pytest.raises(openai.BadRequestError) as err:  # suffix needs fill-in-the-middle support
        client.completions.create(model=SMOLLM, prompt="def f(x):", suffix="    return y", max_tokens=4)
    assert "does not support insert" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:  # llama.cpp validates token ids
        client.completions.create(model=SMOLLM, prompt=[10**7], max_tokens=2)
    # A token-id prompt is accepted as-is.
    ok = client.completions.create(model=SMOLLM, prompt=[[28, 30, 28]], temperature=0, max_tokens=2)
    assert ok.usage.prompt_tokens == 3


# ---- /v1/embeddings ----------------------------------------------------------------------


def test_embeddings_inputs_and_formats(client: OpenAI, base_url: str) -> None:
    one = client.embeddings.create(model=SMOLLM, input="The quick brown fox", encoding_format="float")
    assert one.object == "list" and one.model == SMOLLM and len(one.data) == 1
    vec = one.data[0].embedding
    assert one.data[0].object == "embedding" and one.data[0].index == 0 and len(vec) == 576
    assert abs(sum(x * x for x in vec) - 1.0) < 1e-3
    assert one.usage.prompt_tokens > 0 and one.usage.total_tokens == one.usage.prompt_tokens
    # The SDK asks for base64 by default and decodes the float32 bytes itself.
    b64 = client.embeddings.create(model=SMOLLM, input="The quick brown fox")
    assert np.allclose(b64.data[0].embedding, vec, atol=1e-6)
    many = client.embeddings.create(
        model=SMOLLM, input=["cat", "dog", "airplane"], dimensions=32, encoding_format="float"
    )
    assert [d.index for d in many.data] == [0, 1, 2] and all(len(d.embedding) == 32 for d in many.data)
    assert all(abs(sum(x * x for x in d.embedding) - 1.0) < 1e-3 for d in many.data)
    tokens = client.embeddings.create(model=SMOLLM, input=[28, 30, 28], encoding_format="float")
    assert len(tokens.data) == 1 and tokens.usage.prompt_tokens == 3
    token_lists = client.embeddings.create(model=SMOLLM, input=[[28, 30], [28, 30, 28]], encoding_format="float")
    assert len(token_lists.data) == 2 and token_lists.usage.prompt_tokens == 5
    # The same vector as Ollama's /api/embed for the same input. (Only single
    # inputs are compared: the engine's batched rows for this causal model are
    # not batch-invariant, on /api/embed as much as here.)
    for inp, got in (([28, 30, 28], tokens), ("The quick brown fox", one)):
        ref = httpx.post(base_url + "/api/embed", json={"model": SMOLLM, "input": inp}, timeout=60).json()
        assert np.allclose(got.data[0].embedding, ref["embeddings"][0], atol=1e-6)


def test_embeddings_base64_wire_and_errors(client: OpenAI, base_url: str) -> None:
    body = {"model": "all-minilm", "input": ["hello", "world"]}
    floats = httpx.post(base_url + "/v1/embeddings", json=body, timeout=60).json()
    packed = httpx.post(base_url + "/v1/embeddings", json={**body, "encoding_format": "base64"}, timeout=60).json()
    for f, p in zip(floats["data"], packed["data"]):
        decoded = np.frombuffer(base64.b64decode(p["embedding"]), dtype="<f4")
        assert len(decoded) == 384 and np.allclose(decoded, f["embedding"], atol=1e-6)
    for bad, param in (
        ({"encoding_format": "int8"}, "encoding_format"),
        ({"input": []}, "input"),
        ({"dimensions": 0}, "dimensions"),
    ):
        r = httpx.post(base_url + "/v1/embeddings", json={**body, **bad}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    with pytest.raises(openai.NotFoundError) as err:
        client.embeddings.create(model="nope", input="x")
    assert err.value.code == "model_not_found"


# ---- errors ------------------------------------------------------------------------------


def _sdk(app: InProc) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url="http://corral.test/v1", api_key="x", max_retries=0, http_client=app.client)


async def test_chat_n_other_than_one_is_400(inproc: InProc) -> None:
    c = _sdk(inproc)
    assert len((await c.chat.completions.create(model=TINY, messages=HELLO, n=1, **FAST)).choices) == 1
    with pytest.raises(openai.BadRequestError) as err:
        await c.chat.completions.create(model=TINY, messages=HELLO, n=2, **FAST)
    assert err.value.status_code == 400 and err.value.param == "n" and err.value.type == "invalid_request_error"
    assert len(inproc.engine.requests) == 1  # only n=1 reached the engine


async def test_not_found_and_bad_request_shapes(inproc: InProc) -> None:
    c = _sdk(inproc)
    with pytest.raises(openai.NotFoundError) as err:
        await c.chat.completions.create(model="nope", messages=HELLO)
    assert err.value.body == {
        "message": 'model "nope" not found',
        "type": "not_found_error",
        "param": "model",
        "code": "model_not_found",
    }
    with pytest.raises(openai.NotFoundError):
        await c.chat.completions.create(model="nope", messages=HELLO, stream=True)
    with pytest.raises(openai.NotFoundError):
        await c.completions.create(model="nope", prompt="x")
    bad: list[tuple[Any, str | None]] = [
        ({"model": TINY, "messages": HELLO, "temperature": "hot"}, "temperature"),
        ({"model": TINY, "messages": HELLO, "temperature": 3}, "temperature"),
        ({"model": TINY}, "messages"),
        ({"model": TINY, "messages": []}, "messages"),
        ({"messages": HELLO}, "model"),
        ({"model": TINY, "messages": [{"role": "wizard", "content": "x"}]}, "messages"),
        ({"model": TINY, "messages": HELLO, "stop": [1, 2]}, "stop.str"),
        ([1, 2], None),
    ]
    for payload, param in bad:
        r = await inproc.client.post("/v1/chat/completions", json=payload)
        assert r.status_code == 400, (payload, r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
        assert param is None or (error["param"] or "").startswith(param.split(".")[0]), (payload, error)
    r = await inproc.client.post("/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = await inproc.client.get("/v1/nothing-here")  # OpenAI: 404 invalid_request_error
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    assert inproc.engine.loads == []


async def test_error_classes_map_to_sdk_exceptions(make_app: MakeApp) -> None:
    """Checks the error *mapping* only: nothing produces 401/403/429 yet (API keys
    and rate limits arrive with the gateway), so the real app runs in-process
    with a fake engine that raises those errors when it loads the model, and
    the SDK talks to it through httpx's ASGI transport."""
    app = await make_app()
    c = openai.AsyncOpenAI(base_url="http://corral.test/v1", api_key="x", max_retries=0, http_client=app.client)
    expected = {
        Unauthorized("invalid api key"): (openai.AuthenticationError, 401, "authentication_error"),
        Forbidden("model not allowed"): (openai.PermissionDeniedError, 403, "permission_error"),
        TooManyRequests("slow down"): (openai.RateLimitError, 429, "rate_limit_error"),
        EngineError("engine error: boom"): (openai.InternalServerError, 500, "server_error"),
    }
    for error, (exc_type, status, err_type) in expected.items():
        app.engine.fail_load = error
        for stream in (False, True):
            with pytest.raises(exc_type) as err:
                await c.chat.completions.create(model="tiny", messages=HELLO, stream=stream)
            assert err.value.status_code == status and err.value.type == err_type
            assert err.value.body["message"] == error.message  # type: ignore[index]
    # After the first chunk the status is already 200: the error is the last event.
    app.engine.fail_load = None
    app.engine.reply, app.engine.fail_after = "Hello world", 1
    app.engine.fail_error = EngineError("engine error: crashed mid-stream")
    events = await c.chat.completions.create(model="tiny", messages=HELLO, stream=True)
    with pytest.raises(openai.APIError) as mid:
        async for chunk in events:
            assert chunk.choices[0].delta.content == "Hello"
    assert mid.value.message == "engine error: crashed mid-stream"
    assert mid.value.body == {
        "message": "engine error: crashed mid-stream",
        "type": "server_error",
        "param": None,
        "code": None,
    }
