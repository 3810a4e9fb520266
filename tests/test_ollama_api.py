"""The Ollama inference API on a real server, driven by the official client.

Every endpoint and field from the core issue against SmolLM2-135M running in
the in-process llama.cpp engine. Requests refused before they reach a model
(validation, missing models, missing capabilities) are checked at the end
in-process (``make_app``), where the fake engine can also show that nothing
was loaded or run for them.
"""

from __future__ import annotations

import json

import httpx
import ollama
import pytest

from tests.conftest import SMOLLM, TINY, InProc

OPTS = {"temperature": 0, "num_predict": 12}


@pytest.fixture(scope="module")
def client(base_url: str) -> ollama.Client:
    return ollama.Client(host=base_url)


def test_root_and_version(base_url: str) -> None:
    r = httpx.get(base_url + "/")
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert httpx.head(base_url + "/").status_code == 200
    version = httpx.get(base_url + "/api/version").json()["version"]
    assert version.count(".") == 2


def test_tags_lists_starter_with_gguf_details(client: ollama.Client) -> None:
    models = {m.model: m for m in client.list().models}
    m = models[SMOLLM]
    assert m.size > 90_000_000 and len(m.digest) == 64 and m.modified_at is not None
    assert m.details.format == "gguf"
    assert m.details.family == "llama" and m.details.families == ["llama"]
    assert m.details.parameter_size == "134.52M"
    assert m.details.quantization_level == "Q4_1"


def test_show(client: ollama.Client) -> None:
    info = client.show(SMOLLM)
    assert info.modelinfo["general.architecture"] == "llama"
    assert info.modelinfo["llama.context_length"] == 8192
    assert info.capabilities == ["completion", "tools"]  # as Ollama's library smollm2 (tests/test_parity.py)
    assert "<|im_start|>" in info.template
    assert info.details.quantization_level == "Q4_1"
    assert "FROM " in info.modelfile


def test_generate_non_streaming_fields(client: ollama.Client) -> None:
    r = client.generate(model=SMOLLM, prompt="Why is the sky blue?", stream=False, options=OPTS)
    assert r.done is True and r.done_reason == "length"
    assert r.response.strip()
    assert r.eval_count == 12
    assert r.prompt_eval_count and r.prompt_eval_count > 5
    for field in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(getattr(r, field), int)
    assert r.total_duration >= r.eval_duration > 0
    assert r.context and all(isinstance(t, int) for t in r.context)
    assert r.context and len(r.context) >= r.prompt_eval_count


def test_generate_streaming(client: ollama.Client) -> None:
    chunks = list(client.generate(model=SMOLLM, prompt="Count: one, two,", stream=True, options=OPTS))
    assert len(chunks) >= 2
    assert all(not c.done for c in chunks[:-1])
    last = chunks[-1]
    assert last.done and last.done_reason in ("stop", "length") and last.eval_count
    assert "".join(c.response for c in chunks).strip()


def test_generate_deterministic_and_seed(client: ollama.Client) -> None:
    a = client.generate(model=SMOLLM, prompt="Tell me a story.", options=OPTS).response
    b = client.generate(model=SMOLLM, prompt="Tell me a story.", options=OPTS).response
    assert a == b
    seeded = {"temperature": 1.0, "seed": 42, "num_predict": 16}
    c = client.generate(model=SMOLLM, prompt="Write a word.", options=seeded).response
    d = client.generate(model=SMOLLM, prompt="Write a word.", options=seeded).response
    assert c == d


def test_generate_context_continues_conversation(client: ollama.Client) -> None:
    first = client.generate(model=SMOLLM, prompt="My name is Ada.", options=OPTS)
    second = client.generate(model=SMOLLM, prompt="What is my name?", context=first.context, options=OPTS)
    assert second.prompt_eval_count > len(first.context)
    assert second.context[: len(first.context)] == first.context


def test_generate_raw_and_system(client: ollama.Client) -> None:
    raw = client.generate(
        model=SMOLLM, prompt="<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", raw=True, options=OPTS
    )
    assert raw.response and raw.context is None
    sysr = client.generate(model=SMOLLM, prompt="Hi", system="You only say the word banana.", options=OPTS)
    assert sysr.prompt_eval_count and sysr.response


def test_generate_stop_sequences(client: ollama.Client) -> None:
    r = client.generate(
        model=SMOLLM,
        prompt="List the numbers 1 to 10 separated by commas: 1,",
        raw=True,
        options={"temperature": 0, "num_predict": 40, "stop": ["5"]},
    )
    assert "5" not in r.response
    assert r.done_reason == "stop"


def test_generate_format_json_and_schema(client: ollama.Client) -> None:
    r = client.generate(
        model=SMOLLM,
        prompt="Give a JSON object with a key ok set to true.",
        format="json",
        options={"temperature": 0, "num_predict": 200},
    )
    assert isinstance(json.loads(r.response), dict)
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    r = client.generate(
        model=SMOLLM, prompt="Invent a person.", format=schema, options={"temperature": 0, "num_predict": 100}
    )
    data = json.loads(r.response)
    assert isinstance(data["name"], str) and isinstance(data["age"], int)


def test_generate_logprobs(base_url: str) -> None:
    r = httpx.post(
        base_url + "/api/generate",
        json={
            "model": SMOLLM,
            "prompt": "Hello",
            "stream": False,
            "logprobs": True,
            "top_logprobs": 3,
            "options": {"temperature": 0, "num_predict": 4},
        },
        timeout=60,
    ).json()
    assert len(r["logprobs"]) == 4
    first = r["logprobs"][0]
    assert isinstance(first["token"], str) and first["logprob"] <= 0
    assert len(first["top_logprobs"]) == 3


def test_chat_non_streaming_and_history(client: ollama.Client) -> None:
    r = client.chat(
        model=SMOLLM,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi, I'm Bob."},
            {"role": "assistant", "content": "Hello Bob."},
            {"role": "user", "content": "What's my name?"},
        ],
        options=OPTS,
    )
    assert r.message.role == "assistant" and r.message.content
    assert r.done and r.done_reason in ("stop", "length") and 0 < r.eval_count <= 12 and r.prompt_eval_count > 20


def test_chat_streaming(client: ollama.Client) -> None:
    chunks = list(
        client.chat(model=SMOLLM, messages=[{"role": "user", "content": "Say hello"}], stream=True, options=OPTS)
    )
    assert chunks[-1].done and chunks[-1].eval_count
    assert "".join(c.message.content for c in chunks).strip()


def test_chat_structured_output(client: ollama.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}},
        "required": ["color"],
        "additionalProperties": False,
    }
    r = client.chat(
        model=SMOLLM,
        messages=[{"role": "user", "content": "Pick a color."}],
        format=schema,
        options={"temperature": 0, "num_predict": 30},
    )
    assert json.loads(r.message.content)["color"] in ("red", "green", "blue")


TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nYou can call tools. Tools: {{ tools | tojson }}\n"
    'Reply with <tool_call>{"name": ..., "arguments": ...}</tool_call>.<|im_end|>\n{% endif %}'
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_chat_tool_calls_parsed(client: ollama.Client) -> None:
    for _ in client.create(model="smol-tools", from_=SMOLLM, template=TOOLS_TEMPLATE, stream=True):
        pass
    assert "tools" in client.show("smol-tools").capabilities
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
    # Constrain the reply to a tool call so the tiny model reliably makes one.
    schema = {
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
    }
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat(
        model="smol-tools",
        messages=messages,
        tools=[tool],
        format=schema,
        options={"temperature": 0, "num_predict": 40},
    )
    assert r.message.tool_calls, r.message
    call = r.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    streamed = list(
        client.chat(
            model="smol-tools",
            messages=messages,
            tools=[tool],
            format=schema,
            stream=True,
            options={"temperature": 0, "num_predict": 40},
        )
    )
    calls = [c for chunk in streamed for c in (chunk.message.tool_calls or [])]
    assert calls and calls[0].function.name == "get_weather"
    # A tool result goes back in the history and the model answers.
    history = messages + [
        {"role": "assistant", "content": "", "tool_calls": [call.model_dump()]},
        {"role": "tool", "content": "18 degrees and sunny", "tool_name": "get_weather"},
    ]
    final = client.chat(model="smol-tools", messages=history, tools=[tool], options=OPTS)
    assert final.done


def test_embed_and_legacy_embeddings(client: ollama.Client) -> None:
    r = client.embed(model=SMOLLM, input="The quick brown fox")
    assert len(r.embeddings) == 1 and len(r.embeddings[0]) == 576
    norm = sum(x * x for x in r.embeddings[0]) ** 0.5
    assert abs(norm - 1.0) < 1e-3
    many = client.embed(model=SMOLLM, input=["cat", "dog", "airplane"], dimensions=64)
    assert len(many.embeddings) == 3 and all(len(e) == 64 for e in many.embeddings)
    assert many.prompt_eval_count and many.total_duration
    legacy = client.embeddings(model=SMOLLM, prompt="The quick brown fox")
    assert len(legacy.embedding) == 576


def test_embed_truncate_false_rejects_long_input(client: ollama.Client) -> None:
    long_text = "word " * 3000
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model=SMOLLM, input=long_text, truncate=False)
    assert err.value.status_code == 400
    assert len(client.embed(model=SMOLLM, input=long_text).embeddings[0]) == 576


def test_context_overflow_truncates_prompt(client: ollama.Client) -> None:
    long_prompt = "The history of the world is long. " * 200
    r = client.generate(model=SMOLLM, prompt=long_prompt, options={"num_ctx": 512, "num_predict": 8, "temperature": 0})
    assert r.done and r.prompt_eval_count < 512
    ps = {m.model: m for m in client.ps().models}
    assert ps[SMOLLM].context_length == 512  # num_ctx change reloaded the model
    client.generate(model=SMOLLM, prompt="hi", options={"num_predict": 1})
    assert {m.model: m for m in client.ps().models}[SMOLLM].context_length == 4096


ALL_OPTIONS = {
    "num_ctx": 1024,
    "num_predict": 8,
    "temperature": 0.5,
    "top_k": 20,
    "top_p": 0.8,
    "min_p": 0.05,
    "typical_p": 0.9,
    "repeat_penalty": 1.2,
    "repeat_last_n": 32,
    "presence_penalty": 0.3,
    "frequency_penalty": 0.2,
    "seed": 7,
    "stop": ["\n\n"],
    "num_keep": 8,
}


def test_every_option_reaches_llama_cpp(client: ollama.Client) -> None:
    from corral.engine.base import CompletionRequest
    from corral.engine.llamacpp import sampling_body

    body = sampling_body(CompletionRequest(["x"], dict(ALL_OPTIONS)))
    expected = {
        "n_predict": 8,
        "temperature": 0.5,
        "top_k": 20,
        "top_p": 0.8,
        "min_p": 0.05,
        "typical_p": 0.9,
        "repeat_penalty": 1.2,
        "repeat_last_n": 32,
        "presence_penalty": 0.3,
        "frequency_penalty": 0.2,
        "seed": 7,
        "stop": ["\n\n"],
        "n_keep": 8,
    }
    assert {k: body[k] for k in expected} == expected
    a = client.generate(model=SMOLLM, prompt="Name a fruit.", options=ALL_OPTIONS)
    b = client.generate(model=SMOLLM, prompt="Name a fruit.", options=ALL_OPTIONS)
    assert a.done and a.eval_count <= 8 and a.response == b.response
    assert {m.model: m for m in client.ps().models}[SMOLLM].context_length == 1024


def test_embeddings_do_not_depend_on_the_batch(client: ollama.Client) -> None:
    words = ["cat", "dog", "airplane", "a much longer sentence about embeddings"]
    batch = client.embed(model=SMOLLM, input=words).embeddings
    for word, vec in zip(words, batch):
        alone = client.embed(model=SMOLLM, input=word).embeddings[0]
        assert max(abs(a - b) for a, b in zip(vec, alone)) < 1e-3


def test_embeddings_while_generating_match_embeddings_alone(client: ollama.Client) -> None:
    """A causal model's embeddings run in their own one-slot runner, apart from generation."""
    import threading

    text = "a much longer sentence about embeddings"
    alone = client.embed(model=SMOLLM, input=text).embeddings[0]
    done = threading.Event()

    def generate(i: int) -> None:
        while not done.is_set():
            client.generate(model=SMOLLM, prompt=f"Story {i}: a cat", options={"num_predict": 24})

    threads = [threading.Thread(target=generate, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        during = [client.embed(model=SMOLLM, input=[text, "cat"]).embeddings[0] for _ in range(3)]
    finally:
        done.set()
        for t in threads:
            t.join(timeout=60)
    for vec in during:
        assert max(abs(a - b) for a, b in zip(vec, alone)) < 1e-3
    # /api/ps counts both runners' KV caches: 4 generation slots + 1 embedding slot, num_ctx each.
    from corral.engine.llamacpp import kv_bytes_per_token
    from corral.store.starters import smollm2_gguf

    path = smollm2_gguf()
    assert path is not None
    m = next(m for m in client.ps().models if m.model == SMOLLM)
    assert m.size == path.stat().st_size + kv_bytes_per_token(path) * m.context_length * 5


# ---- refused before the engine: in-process ------------------------------------------------------


def _client(app: InProc) -> ollama.AsyncClient:
    return ollama.AsyncClient(host="http://corral.test", transport=httpx.ASGITransport(app=app.app))


async def test_generate_unsupported_features_are_400(inproc: InProc) -> None:
    client = _client(inproc)
    for kwargs, word in (
        ({"suffix": "return x"}, "insert"),
        ({"images": ["aGVsbG8="]}, "vision"),
        ({"think": True}, "thinking"),
    ):
        with pytest.raises(ollama.ResponseError) as err:
            await client.generate(model=TINY, prompt="def f(x):", **kwargs)
        assert err.value.status_code == 400 and word in err.value.error
    assert inproc.engine.loads == []


async def test_chat_tools_rejected_without_tool_template(inproc: InProc) -> None:
    tool = {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}
    with pytest.raises(ollama.ResponseError) as err:
        await _client(inproc).chat(model=TINY, messages=[{"role": "user", "content": "hi"}], tools=[tool])
    assert err.value.status_code == 400 and "does not support tools" in err.value.error
    assert inproc.engine.loads == []


@pytest.mark.parametrize(
    "payload, fragment",
    [
        ({"model": TINY, "prompt": 123}, "prompt"),
        ({"model": TINY, "prompt": "x", "options": {"temperature": "hot"}}, "temperature"),
        ({"prompt": "x"}, "model"),
        ({"model": TINY, "prompt": "x", "keep_alive": "soon"}, "duration"),
        ({"model": TINY, "prompt": "x", "format": "xml"}, "format"),
    ],
)
async def test_bad_input_is_400(inproc: InProc, payload: dict, fragment: str) -> None:
    r = await inproc.client.post("/api/generate", json=payload)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]
    assert inproc.engine.loads == []


async def test_malformed_json_is_400(inproc: InProc) -> None:
    for path in ("/api/generate", "/api/chat", "/api/embed", "/api/show"):
        r = await inproc.client.post(path, content=b"{not json")
        assert r.status_code == 400 and "error" in r.json()


async def test_missing_model_is_404(inproc: InProc) -> None:
    client = _client(inproc)
    with pytest.raises(ollama.ResponseError) as err:
        await client.generate(model="nope:latest", prompt="hi")
    assert err.value.status_code == 404 and err.value.error == 'model "nope:latest" not found'
    with pytest.raises(ollama.ResponseError) as err:
        await client.chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 404
    r = await inproc.client.post("/api/chat", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and r.json() == {"error": 'model "nope" not found'}
    for path, body in (
        ("/api/embed", {"model": "nope", "input": "x"}),
        ("/api/embeddings", {"model": "nope", "prompt": "x"}),
        ("/api/show", {"model": "nope"}),
    ):
        r = await inproc.client.post(path, json=body)
        assert r.status_code == 404 and r.json() == {"error": 'model "nope" not found'}, (path, r.text)
    assert inproc.engine.loads == []
