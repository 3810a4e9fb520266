"""Where Corral must answer as Ollama does, through the official clients on the real models.

Each test's name states Ollama's behaviour; where Ollama has an error text,
the whole phrase is matched. All run against the session server (SmolLM2
and all-minilm) with short generations.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from openai import OpenAI

from corral.cli import until
from tests.conftest import ROOT, SMOLLM, ServerProc

MINILM = "all-minilm"
OPTS = {"temperature": 0, "num_predict": 8}
TIMINGS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)
REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text())
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city"}},
            "required": ["city"],
        },
    },
}
# A call forced by constraining the reply to the shape of one call (the 135M model rarely calls unprompted).
ONE_CALL = {
    "type": "array",
    "minItems": 1,
    "maxItems": 1,
    "items": {
        "type": "object",
        "required": ["name", "arguments"],
        "properties": {
            "name": {"const": "get_weather"},
            "arguments": {
                "type": "object",
                "required": ["city"],
                "properties": {"city": {"type": "string", "maxLength": 20}},
            },
        },
    },
}


@pytest.fixture(scope="module")
def client(base_url: str) -> ollama.Client:
    return ollama.Client(host=base_url, timeout=120)


@pytest.fixture(scope="module")
def oai(base_url: str) -> OpenAI:
    return OpenAI(base_url=base_url + "/v1", api_key="unused", timeout=120)


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (norm(a) * norm(b))


# ---- timing fields -----------------------------------------------------------------------------------------


def assert_timings(final: Any) -> None:
    for name in TIMINGS:
        value = getattr(final, name)
        assert isinstance(value, int) and value > 0, (name, value)
    assert final.total_duration >= final.load_duration


def test_every_final_response_carries_six_positive_timings_and_load_duration_is_never_zero(
    client: ollama.Client,
) -> None:
    client.generate(model=SMOLLM, prompt="", keep_alive="5m")  # warm: load_duration is then scheduling only
    messages = [{"role": "user", "content": "Say hi."}]
    finals = [
        client.generate(model=SMOLLM, prompt="Say hi.", options=OPTS),
        list(client.generate(model=SMOLLM, prompt="Say hi.", options=OPTS, stream=True))[-1],
        client.chat(model=SMOLLM, messages=messages, options=OPTS),
        list(client.chat(model=SMOLLM, messages=messages, options=OPTS, stream=True))[-1],
    ]
    for final in finals:
        assert final.done
        assert_timings(final)
        assert final.load_duration < 2_000_000_000  # warm: time to a ready slot, not a load
    embedded = client.embed(model=MINILM, input="Say hi.")
    assert embedded.load_duration > 0 and embedded.total_duration >= embedded.load_duration


# ---- logprobs ----------------------------------------------------------------------------------------------


def test_logprobs_without_top_logprobs_give_each_token_logprob_and_bytes_but_no_alternatives(
    client: ollama.Client, base_url: str
) -> None:
    messages = [{"role": "user", "content": "Count to three."}]
    for top in (None, 0):
        answers = [
            client.generate(model=SMOLLM, prompt="Count to three.", options=OPTS, logprobs=True, top_logprobs=top),
            client.chat(model=SMOLLM, messages=messages, options=OPTS, logprobs=True, top_logprobs=top),
        ]
        streamed = [
            list(
                client.generate(
                    model=SMOLLM, prompt="Count to three.", options=OPTS, logprobs=True, top_logprobs=top, stream=True
                )
            ),
            list(
                client.chat(model=SMOLLM, messages=messages, options=OPTS, logprobs=True, top_logprobs=top, stream=True)
            ),
        ]
        for chunks in streamed:
            tokens = [lp for c in chunks for lp in c.logprobs or []]
            assert len(tokens) == 8
            assert all(lp.top_logprobs is None and lp.logprob <= 0 for lp in tokens)
        for answer in answers:
            assert len(answer.logprobs) == 8
            assert all(lp.top_logprobs is None and lp.logprob <= 0 for lp in answer.logprobs)
    raw = httpx.post(
        base_url + "/api/generate",
        timeout=60,
        json={"model": SMOLLM, "prompt": "Count to three.", "stream": False, "options": OPTS, "logprobs": True},
    ).json()
    for entry in raw["logprobs"]:
        assert "top_logprobs" not in entry
        assert bytes(entry["bytes"]).decode(errors="replace") == entry["token"]
    # top_logprobs alone does not ask for logprobs
    assert (
        "logprobs"
        not in httpx.post(
            base_url + "/api/generate",
            timeout=60,
            json={"model": SMOLLM, "prompt": "Count to three.", "stream": False, "options": OPTS, "top_logprobs": 3},
        ).json()
    )


def test_top_logprobs_n_gives_between_one_and_n_alternatives_sorted_by_logprob(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "Count to three."}]
    for n in (1, 3):
        kw: dict[str, Any] = {"options": OPTS, "logprobs": True, "top_logprobs": n}
        per_answer = [
            client.generate(model=SMOLLM, prompt="Count to three.", **kw).logprobs,
            client.chat(model=SMOLLM, messages=messages, **kw).logprobs,
            [
                lp
                for c in client.generate(model=SMOLLM, prompt="Count to three.", stream=True, **kw)
                for lp in c.logprobs or []
            ],
            [lp for c in client.chat(model=SMOLLM, messages=messages, stream=True, **kw) for lp in c.logprobs or []],
        ]
        for tokens in per_answer:
            assert len(tokens) == 8
            for lp in tokens:
                alternatives = [t.logprob for t in lp.top_logprobs]
                assert 1 <= len(alternatives) <= n
                assert alternatives == sorted(alternatives, reverse=True)
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model=SMOLLM, prompt="Hi", options=OPTS, logprobs=True, top_logprobs=21)
    assert err.value.status_code == 400 and err.value.error == "top_logprobs must be between 0 and 20"


def test_v1_logprobs_follow_top_logprobs(oai: OpenAI, base_url: str) -> None:
    messages = [{"role": "user", "content": "Count to three."}]
    bare = oai.chat.completions.create(model=SMOLLM, messages=messages, logprobs=True, temperature=0, max_tokens=6)
    assert [t.top_logprobs for t in bare.choices[0].logprobs.content] == [[]] * 6
    for stream in (False, True):
        if stream:
            chunks = list(
                oai.chat.completions.create(
                    model=SMOLLM,
                    messages=messages,
                    logprobs=True,
                    top_logprobs=3,
                    temperature=0,
                    max_tokens=6,
                    stream=True,
                )
            )
            tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
        else:
            tokens = (
                oai.chat.completions.create(
                    model=SMOLLM, messages=messages, logprobs=True, top_logprobs=3, temperature=0, max_tokens=6
                )
                .choices[0]
                .logprobs.content
            )
        assert len(tokens) == 6
        for t in tokens:
            alternatives = [a.logprob for a in t.top_logprobs]
            assert 1 <= len(alternatives) <= 3 and alternatives == sorted(alternatives, reverse=True)
    legacy = oai.completions.create(model=SMOLLM, prompt="One, two,", logprobs=2, temperature=0, max_tokens=4)
    tops = legacy.choices[0].logprobs.top_logprobs
    assert len(tops) == 4 and all(1 <= len(t) <= 2 for t in tops)


# ---- embeddings --------------------------------------------------------------------------------------------


def test_legacy_embeddings_are_the_raw_vector_and_embed_is_l2_normalised(client: ollama.Client) -> None:
    sentences, reference = REFERENCE["sentences"][:3], REFERENCE["embeddings"][:3]
    embedded = client.embed(model=MINILM, input=sentences).embeddings
    for mine, theirs in zip(embedded, reference, strict=True):
        assert abs(norm(mine) - 1) < 1e-5
        assert max(abs(a - b) for a, b in zip(mine, theirs, strict=True)) < 0.01
    for sentence, theirs in zip(sentences, reference, strict=True):
        raw = client.embeddings(model=MINILM, prompt=sentence).embedding
        assert norm(raw) > 1.5  # all-minilm's mean-pooled vectors are far from unit length
        assert cosine(raw, theirs) > 0.999
        assert max(abs(a / norm(raw) - b) for a, b in zip(raw, theirs, strict=True)) < 0.01


def test_embed_truncates_each_input_to_num_ctx_keeping_special_tokens(client: ollama.Client) -> None:
    cut = client.embed(model=MINILM, input="why is the sky blue?", options={"num_ctx": 3})
    assert cut.prompt_eval_count == 3  # [CLS] why [SEP]
    remains = client.embed(model=MINILM, input="why")
    assert remains.prompt_eval_count == 3
    assert cosine(cut.embeddings[0], remains.embeddings[0]) > 0.9999
    whole = client.embed(model=MINILM, input="why is the sky blue?")
    assert whole.prompt_eval_count == 8 and cosine(whole.embeddings[0], cut.embeddings[0]) < 0.99


def test_embed_with_truncate_false_and_a_long_input_is_400_the_input_length_exceeds_the_context_length(
    client: ollama.Client,
) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model=MINILM, input="why is the sky blue?", truncate=False, options={"num_ctx": 3})
    assert err.value.status_code == 400
    assert err.value.error == "the input length exceeds the context length"
    assert client.embed(model=MINILM, input="why", truncate=False, options={"num_ctx": 3}).prompt_eval_count == 3


@pytest.mark.parametrize("num_ctx", [0, 1])
def test_embed_num_ctx_too_small_for_the_special_tokens_is_400_cannot_be_truncated_further(
    client: ollama.Client, num_ctx: int
) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model=MINILM, input="why is the sky blue?", options={"num_ctx": num_ctx})
    assert err.value.status_code == 400
    assert err.value.error == "input exceeds maximum context length and cannot be truncated further"
    assert len(client.embed(model=MINILM, input="why").embeddings[0]) == 384


def test_embed_prompt_eval_count_sums_the_tokens_evaluated_after_truncation(client: ollama.Client) -> None:
    long_text = " ".join(REFERENCE["sentences"]) * 3
    r = client.embed(model=MINILM, input=[long_text, long_text, "short one"], options={"num_ctx": 30})
    assert len(r.embeddings) == 3
    assert r.prompt_eval_count == 30 + 30 + client.embed(model=MINILM, input="short one").prompt_eval_count
    assert r.prompt_eval_count <= 90


def test_v1_embeddings_truncate_to_the_context_and_count_the_tokens_embedded(
    oai: OpenAI, client: ollama.Client
) -> None:
    long_text = " ".join(REFERENCE["sentences"]) * 20  # well over all-minilm's 512 tokens
    r = oai.embeddings.create(model=MINILM, input=[long_text, "why"])
    assert r.usage.prompt_tokens == 512 + 3
    native = client.embed(model=MINILM, input=long_text)
    assert native.prompt_eval_count == 512
    assert cosine(r.data[0].embedding, native.embeddings[0]) > 0.9999
    assert abs(norm(r.data[0].embedding) - 1) < 1e-5


# ---- starter models as the library ships them ----------------------------------------------------------------


def test_smollm2_is_tagged_for_tools_with_a_template_that_renders_tools_and_chatml_stop_words(
    client: ollama.Client,
) -> None:
    info = client.show(SMOLLM)
    assert info.capabilities == ["completion", "tools"]
    assert ".Tools" in info.template and ".ToolCalls" in info.template
    assert info.parameters.splitlines() == [
        'stop                           "<|im_start|>"',
        'stop                           "<|im_end|>"',
    ]


def test_chat_with_tools_is_200_and_a_forced_call_comes_back_parsed_into_tool_calls(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    plain = client.chat(model=SMOLLM, messages=messages, tools=[WEATHER_TOOL], options=OPTS)
    assert plain.done  # Open WebUI's default chat: tools sent with every message
    forced = client.chat(
        model=SMOLLM,
        messages=messages,
        tools=[WEATHER_TOOL],
        format=ONE_CALL,
        options={"temperature": 0, "num_predict": 40},
    )
    assert forced.message.content == ""
    [call] = forced.message.tool_calls
    assert call.function.name == "get_weather" and set(call.function.arguments) == {"city"}
    chunks = list(
        client.chat(
            model=SMOLLM,
            messages=messages,
            tools=[WEATHER_TOOL],
            format=ONE_CALL,
            stream=True,
            options={"temperature": 0, "num_predict": 40},
        )
    )
    calls = [tc for c in chunks for tc in c.message.tool_calls or []]
    assert [c.function.name for c in calls] == ["get_weather"]
    # the call and its result go back into the conversation through the template's tools section
    follow = client.chat(
        model=SMOLLM,
        tools=[WEATHER_TOOL],
        options=OPTS,
        messages=[
            *messages,
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "18 degrees and sunny", "tool_name": "get_weather"},
        ],
    )
    assert follow.done


def test_smollm2_has_no_default_system_prompt_tools_take_its_place_and_it_stops_at_the_end_of_its_turn(
    client: ollama.Client,
) -> None:
    r = client.generate(
        model=SMOLLM, prompt="What is the capital of France?", options={"temperature": 0, "num_predict": 32}
    )
    assert r.done_reason == "stop" and r.response.strip() and "<|im_" not in r.response
    hi = [{"role": "user", "content": "Hi!"}]
    system = [{"role": "system", "content": "You are a pirate. Always answer like a pirate."}]
    one = {"temperature": 0, "num_predict": 1}
    bare = client.chat(model=SMOLLM, messages=hi, options=one).prompt_eval_count
    assert bare < 15  # <|im_start|>user Hi!<|im_end|> <|im_start|>assistant: no default system prompt
    assert client.chat(model=SMOLLM, messages=system + hi, options=one).prompt_eval_count > bare + 8
    with_tools = client.chat(model=SMOLLM, messages=hi, tools=[WEATHER_TOOL], options=one).prompt_eval_count
    assert (
        client.chat(model=SMOLLM, messages=system + hi, tools=[WEATHER_TOOL], options=one).prompt_eval_count
        == with_tools
    )  # as the library template: tools replace it


# ---- corral ps ----------------------------------------------------------------------------------------------


def test_ps_until_reads_as_ollama_prints_it() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def at(delta: timedelta) -> str:
        return (now + delta).isoformat().replace("+00:00", "Z")

    assert until(at(timedelta(minutes=4, seconds=59)), now) == "4 minutes from now"
    assert until(at(timedelta(seconds=30)), now) == "30 seconds from now"
    assert until(at(timedelta(hours=1)), now) == "About an hour from now"
    assert until("2318-01-01T00:00:00Z", now) == "Forever"
    assert until(at(timedelta(seconds=-1)), now) == "Stopping..."


def corral_ps(server: ServerProc) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "CORRAL_"))}
    env["CORRAL_HOST"] = server.url.removeprefix("http://")
    out = subprocess.run(
        [sys.executable, "-m", "corral", "ps"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return next(line for line in out.stdout.splitlines() if line.startswith(SMOLLM))


def test_corral_ps_prints_minutes_from_now_forever_and_stopping(server: ServerProc, client: ollama.Client) -> None:
    client.generate(model=SMOLLM, prompt="", keep_alive="5m")
    assert corral_ps(server).endswith("4 minutes from now")
    client.generate(model=SMOLLM, prompt="", keep_alive=-1)
    assert corral_ps(server).endswith("Forever")
    # keep_alive 0 while a request still runs: expired, waiting for the request to end
    started = threading.Event()

    def long_stream() -> None:
        with httpx.stream(
            "POST",
            server.url + "/api/generate",
            timeout=60,
            json={
                "model": SMOLLM,
                "prompt": "Tell a long story.",
                "keep_alive": 0,
                "options": {"temperature": 0, "num_predict": 200},
            },
        ) as r:
            for _ in r.iter_lines():
                started.set()

    thread = threading.Thread(target=long_stream)
    thread.start()
    try:
        assert started.wait(60)
        time.sleep(0.1)
        assert corral_ps(server).endswith("Stopping...")
    finally:
        thread.join(60)
    client.generate(model=SMOLLM, prompt="", keep_alive="5m")
