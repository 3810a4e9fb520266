"""Errors once a stream has started, with a fake engine in front of the real app.

A fake engine is the only way to make llama.cpp fail half-way through a
generation on demand; everything above it (service, scheduler, HTTP layer,
error handler) is the real code, run in-process (``make_app`` in conftest).
"""

from __future__ import annotations

import json

from corral.errors import EngineError
from tests.conftest import InProc, MakeApp
from tests.fake_engine import FakeEngine

CRASH = "llama runner crashed: out of memory"


async def _crashing(make_app: MakeApp) -> InProc:
    """Two tokens ("Hello", " world"), then the engine fails."""
    engine = FakeEngine(reply="Hello world")
    engine.fail_after, engine.fail_error = 2, EngineError(CRASH)
    return await make_app(engine=engine)


async def test_error_after_stream_started_is_last_ndjson_line(make_app: MakeApp) -> None:
    app = await _crashing(make_app)
    for path, body in (
        ("/api/generate", {"model": "tiny", "prompt": "hi"}),
        ("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}),
    ):
        r = await app.client.post(path, json=body)
        assert r.status_code == 200
        lines = [json.loads(line) for line in r.text.splitlines()]
        assert len(lines) == 3 and not lines[0]["done"]
        assert lines[-1] == {"error": CRASH}
    # The failed requests gave their slot back: the model still serves.
    app.engine.fail_after = None
    r = await app.generate(prompt="hi")
    assert r.status_code == 200 and r.json()["response"] == "Hello world"


async def test_error_after_stream_started_is_last_sse_event(make_app: MakeApp) -> None:
    app = await _crashing(make_app)
    r = await app.client.post(
        "/v1/chat/completions", json={"model": "tiny", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert json.loads(events[-1])["error"]["message"] == CRASH
    assert [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:2]] == ["Hello", " world"]


async def test_engine_crash_without_stream_is_500(make_app: MakeApp) -> None:
    app = await _crashing(make_app)
    r = await app.generate(prompt="hi")
    assert r.status_code == 500 and r.json() == {"error": CRASH}
    r = await app.client.post(
        "/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    r = await app.client.post("/v1/completions", json={"model": "tiny", "prompt": "x"})
    assert r.status_code == 500 and r.json()["error"]["message"] == CRASH


async def test_engine_failure_before_the_first_token_keeps_its_status(make_app: MakeApp) -> None:
    """Primed before the response starts: a stream that fails at once is a plain error response."""
    app = await make_app()
    app.engine.fail_after, app.engine.fail_error = 0, EngineError(CRASH)
    r = await app.client.post("/api/generate", json={"model": "tiny", "prompt": "hi"})
    assert r.status_code == 500 and r.json() == {"error": CRASH}
    r = await app.client.post(
        "/v1/chat/completions", json={"model": "tiny", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert r.status_code == 500 and r.json()["error"]["message"] == CRASH


async def test_unexpected_exception_mid_stream_ends_the_stream_with_an_error_line(make_app: MakeApp) -> None:
    app = await make_app(engine=FakeEngine(reply="Hello world"))
    app.engine.fail_after, app.engine.fail_error = 1, RuntimeError("kaboom")
    r = await app.client.post("/api/generate", json={"model": "tiny", "prompt": "hi"})
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert r.status_code == 200 and lines[0]["response"] == "Hello"
    assert lines[-1] == {"error": "internal error: kaboom"} and len(lines) == 2
