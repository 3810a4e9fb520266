"""The test double itself: the fake engine keeps the engine contract the app relies on.

Other in-process tests trust its token counts, done reasons, stop handling
and counters; these tests pin them, through the real app where that is how
they are seen.
"""

from __future__ import annotations

from pathlib import Path

from corral.engine.base import CompletionRequest, DoneEvent, LoadSpec, TokenEvent
from tests.conftest import InProc, MakeApp
from tests.fake_engine import FakeEngine, words


async def _run(engine: FakeEngine, tiny_gguf: Path, prompt: str, **options: object) -> tuple[str, DoneEvent]:
    model = await engine.load(LoadSpec(path=tiny_gguf, num_ctx=256, num_parallel=1))
    text, done = "", None
    async for ev in model.complete(CompletionRequest([prompt], dict(options))):
        if isinstance(ev, TokenEvent):
            text += ev.text
        else:
            done = ev
    await model.close()
    assert isinstance(done, DoneEvent)
    return text, done


async def test_echo_num_predict_and_stop(tiny_gguf: Path) -> None:
    engine = FakeEngine()
    assert words("one two  three") == ["one", " two", "  three"]
    text, done = await _run(engine, tiny_gguf, "one two three")
    assert (text, done.done_reason, done.prompt_tokens, done.eval_count) == ("one two three", "stop", 13, 3)
    assert done.prompt_eval_ns > 0 and done.eval_ns > 0
    text, done = await _run(engine, tiny_gguf, "one two three", num_predict=2)
    assert (text, done.done_reason, done.eval_count) == ("one two", "length", 2)
    # A stop string ends the stream and is not emitted, even when it spans tokens.
    text, done = await _run(engine, tiny_gguf, "one two three four", stop=["o th"])
    assert (text, done.done_reason) == ("one tw", "stop")
    # Text held back as a possible stop string comes out when the stream ends another way.
    text, done = await _run(engine, tiny_gguf, "one two", stop=["two!"])
    assert (text, done.done_reason) == ("one two", "stop")
    engine.endless, engine.reply = True, "la"
    text, done = await _run(engine, tiny_gguf, "x", num_predict=5)
    assert (text, done.done_reason, done.eval_count) == ("lalalalala", "length", 5)
    assert len(engine.loads) == len(engine.closes) == 5 and engine.loaded == []
    assert engine.running == 0 and engine.cancelled == 0 and engine.max_running == 1


async def test_through_the_app_counts_and_echoes(inproc: InProc) -> None:
    r = await inproc.generate(prompt="hello fake world", raw=True)
    body = r.json()
    assert r.status_code == 200 and body["response"] == "hello fake world" and body["done_reason"] == "stop"
    assert body["prompt_eval_count"] == len(b"hello fake world") and body["eval_count"] == 3
    assert len(inproc.engine.loads) == 1 and inproc.engine.loaded == inproc.engine.loads
    r = await inproc.client.post("/api/embed", json={"model": "tiny", "input": ["a", "b", "a"]})
    vectors = r.json()["embeddings"]
    assert vectors[0] == vectors[2] != vectors[1] and len(vectors[0]) == inproc.engine.embed_dim


async def test_stream_reads_lines_as_sent(make_app: MakeApp) -> None:
    app = await make_app(engine=FakeEngine(reply="a b c"))
    async with app.stream("/api/generate", {"model": "tiny", "prompt": "x"}) as s:
        assert s.status == 200
        lines = [line async for line in s.json_lines()]
    assert [line["response"] for line in lines] == ["a", " b", " c", ""] and lines[-1]["done"]
