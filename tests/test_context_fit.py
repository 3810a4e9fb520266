"""Fitting prompts into num_ctx, and /api/generate's context, in-process.

The service truncates a generate prompt that does not fit (keeping the first
``num_keep`` tokens and the tail) and drops a chat's oldest turns. On the
real engine only the outcome shows (``prompt_eval_count`` < num_ctx, see
test_ollama_api and test_edge_gguf); here the fake engine's byte tokenizer
(one token per byte) lets the tests read exactly what the engine was given.
"""

from __future__ import annotations

from tests.conftest import InProc

PARTS = "".join(f"<{i:03d}>" for i in range(200))  # 1,000 bytes, each position recognisable


async def test_long_generate_prompt_keeps_num_keep_and_the_tail(inproc: InProc) -> None:
    r = await inproc.generate(prompt=PARTS, raw=True, options={"num_ctx": 256, "num_predict": 1})
    # As Ollama (llm/llama_server.go): num_ctx less half of what is not kept, 256 - (256 - 4) // 2 = 130 tokens,
    # the first 4 (num_keep) and the tail.
    sent = inproc.engine.requests[-1].prompt
    assert all(isinstance(t, int) for t in sent) and len(sent) == 130 == r.json()["prompt_eval_count"]
    assert bytes(sent) == PARTS.encode()[:4] + PARTS.encode()[-126:]  # type: ignore[arg-type]
    await inproc.generate(prompt=PARTS, raw=True, options={"num_ctx": 256, "num_keep": 10, "num_predict": 1})
    # 256 - (256 - 10) // 2 = 133: the first 10 and the last 123.
    assert bytes(inproc.engine.requests[-1].prompt) == PARTS.encode()[:10] + PARTS.encode()[-123:]  # type: ignore[arg-type]
    # A prompt that fits goes through as text, untouched.
    await inproc.generate(prompt=PARTS[:200], raw=True, options={"num_ctx": 256, "num_predict": 1})
    assert inproc.engine.requests[-1].prompt == [PARTS[:200]]


async def test_long_chat_drops_the_oldest_turns_but_not_the_system_or_the_last(inproc: InProc) -> None:
    inproc.add_model("tagged", template="{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}")
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "x" * 50} for i in range(7)]
    messages = [{"role": "system", "content": "be brief"}, *turns]
    r = await inproc.client.post(
        "/api/chat",
        json={"model": "tagged", "messages": messages, "stream": False, "options": {"num_ctx": 256, "num_predict": 1}},
    )
    assert r.status_code == 200
    (prompt,) = inproc.engine.requests[-1].prompt
    assert isinstance(prompt, str) and len(prompt.encode()) < 255
    assert prompt.startswith("[system:be brief]") and prompt.endswith(f"[user:{turns[-1]['content']}]")
    kept = [t for t in turns if t["content"] in prompt]
    assert kept == turns[-len(kept) :] and 1 < len(kept) < len(turns)  # a contiguous tail of the history


async def test_generate_context_is_prompt_then_answer_and_continues(inproc: InProc) -> None:
    first = (await inproc.generate(prompt="My name is Ada.")).json()
    assert first["context"] == list(b"My name is Ada.") * 2  # the prompt, then the echoed answer
    second = (await inproc.generate(prompt=" And yours?", context=first["context"])).json()
    assert inproc.engine.requests[-1].prompt == [*first["context"], " And yours?"]
    assert second["context"][: len(first["context"])] == first["context"]
    assert second["prompt_eval_count"] == len(first["context"]) + len(b" And yours?")
    raw = (await inproc.generate(prompt="raw text", raw=True)).json()
    assert "context" not in raw
