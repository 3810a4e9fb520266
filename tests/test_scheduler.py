"""Scheduler behaviour: slots, queue, keep_alive, eviction, reloads, /api/ps.

Most of it is the scheduler's own logic, so it runs in-process (``make_app``
in conftest): the real app and settings with a fake engine that holds a slot
for as long as a test wants (``engine.hold()``) and counts loads and closes.
The last tests need llama.cpp itself and run on real servers: a client
hanging up must stop llama.cpp's generation too, concurrent streams must be
batched by it, and a quantized KV cache must load and be sized as such.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import ollama
import openai
import pytest

from corral.errors import EngineError
from tests.conftest import SMOLLM, TINY, MakeApp, ServerProc
from tests.fake_engine import FakeEngine, wait_until

LONG = {"temperature": 0, "num_predict": 100000}


def _expires(entry: dict[str, Any]) -> float:
    """Seconds from now until a /api/ps entry's expires_at."""
    return datetime.fromisoformat(entry["expires_at"]).timestamp() - time.time()


async def _settle() -> None:
    """Let requests started as tasks run until they block (in-process there is no I/O to wait for)."""
    for _ in range(3):
        await asyncio.sleep(0.02)


# ---- queue and slots ---------------------------------------------------------------------------


async def test_full_queue_answers_503(make_app: MakeApp) -> None:
    """OLLAMA_NUM_PARALLEL=1, OLLAMA_MAX_QUEUE=1: one request runs, one waits, the next is refused, in both dialects."""
    app = await make_app({"OLLAMA_NUM_PARALLEL": "1", "OLLAMA_MAX_QUEUE": "1"}, engine=FakeEngine(reply="a b c d e"))
    assert (await app.generate(prompt="", keep_alive="5m")).json()["done_reason"] == "load"
    gate = app.engine.hold()
    first = asyncio.ensure_future(app.generate(prompt="Tell a long story."))
    await wait_until(lambda: app.engine.running == 1, what="the first request to hold the slot")
    second = asyncio.ensure_future(
        app.client.post("/v1/completions", json={"model": TINY, "prompt": "Once upon a time", "max_tokens": 4})
    )
    await _settle()
    assert not second.done() and app.engine.running == 1  # queued behind the first

    r = await app.generate(prompt="hi")
    assert r.status_code == 503 and r.json() == {
        "error": "server busy, please try again.  maximum pending requests exceeded"
    }
    sdk = openai.AsyncOpenAI(base_url="http://corral.test/v1", api_key="x", max_retries=0, http_client=app.client)
    with pytest.raises(openai.InternalServerError) as err:
        await sdk.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert err.value.status_code == 503 and err.value.type == "server_error"
    assert "maximum pending requests exceeded" in err.value.message
    with pytest.raises(openai.InternalServerError):
        await sdk.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "hi"}], stream=True)
    assert app.engine.running == 1 and len(app.engine.requests) == 1  # the refused ones never reached the engine

    gate.set()
    assert (await first).json()["response"] == "a b c d e"
    assert (await second).json()["choices"][0]["finish_reason"] == "length"
    assert app.engine.max_running == 1
    assert (await app.generate(prompt="hi")).status_code == 200  # the queue is free again


async def test_waiting_for_a_load_counts_in_the_queue(make_app: MakeApp) -> None:
    app = await make_app({"OLLAMA_MAX_QUEUE": "1"}, engine=FakeEngine(load_delay=0.3))
    loading = asyncio.ensure_future(app.generate())
    await _settle()
    assert not loading.done()
    assert (await app.generate()).status_code == 503
    assert (await loading).status_code == 200 and len(app.engine.loads) == 1


async def test_failed_load_is_500_and_frees_its_queue_place(make_app: MakeApp) -> None:
    app = await make_app({"OLLAMA_MAX_QUEUE": "1"})
    app.engine.fail_load = EngineError("llama runner failed to load model: boom")
    for _ in range(3):
        r = await app.generate()
        assert r.status_code == 500 and r.json() == {"error": "llama runner failed to load model: boom"}
    r = await app.client.post(
        "/v1/chat/completions", json={"model": TINY, "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.status_code == 500 and r.json()["error"]["message"] == "llama runner failed to load model: boom"
    assert await app.ps() == []
    app.engine.fail_load = None
    assert (await app.generate()).status_code == 200  # no queue place leaked by the failures
    assert len(app.engine.loads) == 1


async def test_num_parallel_slots_bound_concurrency(make_app: MakeApp) -> None:
    app = await make_app({"OLLAMA_NUM_PARALLEL": "2"})
    gate = app.engine.hold()
    tasks = [asyncio.ensure_future(app.generate(prompt=f"story {i}")) for i in range(3)]
    await wait_until(lambda: app.engine.running == 2, what="two running")
    await _settle()
    assert app.engine.running == 2 and not any(t.done() for t in tasks)
    gate.set()
    assert [(await t).json()["response"] for t in tasks] == ["story 0", "story 1", "story 2"]
    assert app.engine.max_running == 2 and len(app.engine.loads) == 1
    assert app.engine.loads[0].num_parallel == 2


async def test_concurrent_first_requests_load_the_model_once(make_app: MakeApp) -> None:
    app = await make_app(engine=FakeEngine(load_delay=0.2))
    results = await asyncio.gather(*(app.generate(prompt=f"q{i}") for i in range(3)))
    assert all(r.status_code == 200 for r in results) and len(app.engine.loads) == 1
    loads = sorted(r.json()["load_duration"] for r in results)
    # As Ollama's, load_duration runs from arrival to the runner being ready: each of the three waited
    # for the one load, so each reports at least its 0.2 s.
    assert loads[0] >= 0.2e9


@pytest.mark.parametrize(
    "path, body",
    [
        ("/api/generate", {"prompt": "Tell a very long story."}),
        ("/api/chat", {"messages": [{"role": "user", "content": "Tell a very long story."}]}),
        ("/v1/chat/completions", {"stream": True, "messages": [{"role": "user", "content": "Tell a long story."}]}),
        ("/v1/completions", {"stream": True, "prompt": "Tell a very long story."}),
    ],
)
async def test_disconnect_frees_the_slot(make_app: MakeApp, path: str, body: dict[str, Any]) -> None:
    app = await make_app({"OLLAMA_NUM_PARALLEL": "1"}, engine=FakeEngine(endless=True, token_delay=0.001))
    async with app.stream(path, {"model": TINY, **body}) as stream:
        assert stream.status == 200
        lines = []
        async for line in stream.lines():
            lines.append(line)
            if len(lines) >= 3:
                break
        await stream.disconnect()
    # The endless generation was closed when the client went away, and the only slot is free.
    assert app.engine.cancelled == 1 and app.engine.running == 0
    r = await asyncio.wait_for(app.generate(prompt="hi", options={"num_predict": 3}), 5)
    assert r.json()["done"] and r.json()["eval_count"] == 3


# ---- keep_alive and unloading -----------------------------------------------------------------


async def test_keep_alive_expiry_and_forever(make_app: MakeApp) -> None:
    app = await make_app()
    await app.generate(keep_alive="500ms", options={"num_predict": 2})
    assert [m["model"] for m in await app.ps()] == ["tiny:latest"]
    await wait_until(lambda: app.engine.loaded == [], timeout=5, what="keep_alive to expire")
    assert await app.ps() == [] and len(app.engine.closes) == 1
    await app.generate(prompt="", keep_alive=-1)
    (entry,) = await app.ps()
    assert datetime.fromisoformat(entry["expires_at"]).year > 2300
    await app.generate(keep_alive="10m")
    assert 590 < _expires((await app.ps())[0]) <= 600  # each request sets its own keep_alive


async def test_default_keep_alive_from_env(make_app: MakeApp) -> None:
    # CORRAL_KEEP_ALIVE wins over OLLAMA_KEEP_ALIVE: about an hour from now.
    app = await make_app({"OLLAMA_KEEP_ALIVE": "1s", "CORRAL_KEEP_ALIVE": "1h"})
    await app.generate(prompt="")
    assert 3590 < _expires((await app.ps())[0]) <= 3600
    # OLLAMA_KEEP_ALIVE alone is the default; a request's keep_alive overrides it.
    app = await make_app({"OLLAMA_KEEP_ALIVE": "0"})
    await app.generate()
    assert await app.ps() == [] and len(app.engine.closes) == 1
    await app.generate(keep_alive="2m")
    assert 110 < _expires((await app.ps())[0]) <= 120


async def test_load_unload_and_ps(make_app: MakeApp) -> None:
    """Empty prompt/messages/input only load; keep_alive 0 unloads. Through the official async client."""
    app = await make_app()
    client = ollama.AsyncClient(host="http://corral.test", transport=httpx.ASGITransport(app=app.app))
    r = await client.generate(model=TINY, prompt="", keep_alive="10m")
    assert r.done and r.done_reason == "load" and r.response == ""
    (entry,) = (await client.ps()).models
    assert entry.model == "tiny:latest"
    assert entry.size > 0 and entry.size_vram == 0 and entry.expires_at and entry.context_length == 4096
    assert entry.details.family == "llama" and entry.details.quantization_level == "F32"
    r = await client.chat(model=TINY, messages=[], keep_alive=0)
    assert r.done and r.done_reason == "unload" and r.message.content == ""
    assert (await client.ps()).models == [] and len(app.engine.closes) == 1
    # Unloading what is not loaded is not an error.
    assert (await client.generate(model=TINY, prompt="", keep_alive=0)).done_reason == "unload"
    # The embedding routes load on an empty input too.
    r2 = await app.client.post("/api/embed", json={"model": TINY, "input": []})
    assert r2.json() == {"model": "tiny:latest", "embeddings": []}
    assert r2.status_code == 200 and [m["model"] for m in await app.ps()] == ["tiny:latest"]
    assert (await app.client.post("/api/embeddings", json={"model": TINY, "prompt": ""})).json() == {"embedding": []}
    assert len(app.engine.loads) == 2 and app.engine.requests == [] and app.engine.embeds == []
    with pytest.raises(ollama.ResponseError) as err:
        await client.generate(model="nope", prompt="", keep_alive=0)
    assert err.value.status_code == 404


async def test_keep_alive_zero_unloads_once_the_request_ends(make_app: MakeApp) -> None:
    app = await make_app()
    r = await app.generate(prompt="bye now", keep_alive=0)
    assert r.json()["response"] == "bye now" and await app.ps() == [] and len(app.engine.closes) == 1
    # An unload asked for while a request runs waits for it, then happens.
    gate = app.engine.hold()
    busy = asyncio.ensure_future(app.generate(prompt="still going", keep_alive="1h"))
    await wait_until(lambda: app.engine.running == 1, what="the request to start")
    assert (await app.generate(prompt="", keep_alive=0)).json()["done_reason"] == "unload"
    assert len(app.engine.closes) == 1 and [m["model"] for m in await app.ps()] == ["tiny:latest"]
    gate.set()
    assert (await busy).json()["response"] == "still going"
    assert await app.ps() == [] and len(app.engine.closes) == 2


# ---- eviction and reloads ----------------------------------------------------------------------


async def test_max_loaded_models_evicts_lru(make_app: MakeApp) -> None:
    app = await make_app({"OLLAMA_MAX_LOADED_MODELS": "1"}, models=(TINY, "tiny-second"))
    await app.generate(TINY, prompt="")
    await app.generate("tiny-second", prompt="")
    assert [m["model"] for m in await app.ps()] == ["tiny-second:latest"]
    assert len(app.engine.loads) == 2 and len(app.engine.closes) == 1 and app.engine.max_loaded == 1
    # With room for two, the least recently used one makes room for a third.
    app = await make_app({"OLLAMA_MAX_LOADED_MODELS": "2"}, models=("a", "b", "c"))
    for name in ("a", "b", "a", "c"):
        assert (await app.generate(name)).status_code == 200
    assert [m["model"] for m in await app.ps()] == ["c:latest", "a:latest"]  # most recently used first; b was evicted
    assert len(app.engine.loads) == 3 and app.engine.max_loaded == 2


async def test_a_busy_model_is_not_evicted_the_request_waits(make_app: MakeApp) -> None:
    app = await make_app({"OLLAMA_MAX_LOADED_MODELS": "1"}, models=(TINY, "other"))
    gate = app.engine.hold()
    busy = asyncio.ensure_future(app.generate(TINY, prompt="first"))
    await wait_until(lambda: app.engine.running == 1, what="the first model to be busy")
    waiting = asyncio.ensure_future(app.generate("other", prompt="second"))
    await _settle()
    assert not waiting.done() and len(app.engine.loads) == 1 and [m["model"] for m in await app.ps()] == ["tiny:latest"]
    gate.set()
    assert (await busy).json()["response"] == "first" and (await waiting).json()["response"] == "second"
    assert [m["model"] for m in await app.ps()] == ["other:latest"] and app.engine.max_loaded == 1


async def test_changed_load_options_reload_the_model(make_app: MakeApp) -> None:
    app = await make_app()
    await app.generate(options={"num_ctx": 512})
    assert [m["context_length"] for m in await app.ps()] == [512]
    await app.generate(options={"num_ctx": 512, "temperature": 0.1, "num_predict": 2})  # sampling: no reload
    assert len(app.engine.loads) == 1
    await app.generate()  # back to the default context: reloaded
    assert [m["context_length"] for m in await app.ps()] == [4096]
    await app.generate(options={"num_batch": 64})  # any load option counts
    assert [(s.num_ctx, s.num_batch) for s in app.engine.loads] == [(512, 512), (4096, 512), (4096, 64)]
    assert len(app.engine.closes) == 2 and app.engine.max_loaded == 1
    # A model's own PARAMETER num_ctx is a load option as well.
    app.add_model("tiny-ctx", from_=TINY, parameters={"num_ctx": 1024})
    await app.generate("tiny-ctx")
    assert {m["model"]: m["context_length"] for m in await app.ps()}["tiny-ctx:latest"] == 1024


async def test_reload_waits_for_the_running_request(make_app: MakeApp) -> None:
    app = await make_app()
    gate = app.engine.hold()
    busy = asyncio.ensure_future(app.generate(prompt="old context"))
    await wait_until(lambda: app.engine.running == 1, what="the first request to run")
    other = asyncio.ensure_future(app.generate(prompt="new context", options={"num_ctx": 1024}))
    await _settle()
    assert not other.done() and len(app.engine.loads) == 1 and app.engine.closes == []
    gate.set()
    assert (await busy).json()["response"] == "old context" and (await other).json()["response"] == "new context"
    assert [s.num_ctx for s in app.engine.loads] == [4096, 1024] and app.engine.max_loaded == 1


async def test_ps_entries(make_app: MakeApp) -> None:
    app = await make_app({"OLLAMA_NUM_PARALLEL": "2"}, models=("a", "b"))
    assert await app.ps() == []
    await app.generate("a", keep_alive="1m")
    await app.generate("b", options={"num_ctx": 2048})
    entries = await app.ps()
    assert [m["model"] for m in entries] == ["b:latest", "a:latest"]  # most recently used first
    b, a = entries
    assert set(b) == {"name", "model", "size", "digest", "details", "expires_at", "size_vram", "context_length"}
    assert b["name"] == b["model"] == "b:latest" and b["size_vram"] == 0 and b["context_length"] == 2048
    assert b["digest"] == a["digest"] == app.store.get("a").digest and len(b["digest"]) == 64
    tiny_size = app.engine.loads[0].path.stat().st_size
    assert b["size"] == tiny_size + 2048 * 2 and a["size"] == tiny_size + 4096 * 2  # the engine's own figure
    assert b["details"]["family"] == "llama" and b["details"]["format"] == "gguf"
    assert 50 < _expires(a) <= 60 and 290 < _expires(b) <= 300  # OLLAMA_KEEP_ALIVE's default: 5m
    assert b["expires_at"].endswith("Z")
    # /api/delete unloads the model it deletes.
    assert (await app.client.request("DELETE", "/api/delete", json={"model": "b"})).status_code == 200
    assert [m["model"] for m in await app.ps()] == ["a:latest"] and len(app.engine.closes) == 1
    # A model removed from the store behind the server's back stays listed, without details.
    app.store.delete("a")
    assert [(m["model"], m["details"]) for m in await app.ps()] == [("a:latest", {})]


# ---- on llama.cpp ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def q8_server(server: ServerProc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """One slot and a q8_0 KV cache, on the session server's store (the starter model is shared, not re-imported).

    No OLLAMA_FLASH_ATTENTION: a quantized V cache needs it, so Corral turns it on itself.
    """
    from tests.conftest import launch

    srv = launch(
        tmp_path_factory.mktemp("q8-home"),
        {
            "OLLAMA_MODELS": str(server.home / "models"),
            "CORRAL_STARTER_MODELS": "0",
            "OLLAMA_NUM_PARALLEL": "1",
            "OLLAMA_KV_CACHE_TYPE": "q8_0",
        },
    )
    yield srv
    srv.stop()


def test_disconnect_stops_llama_cpp(q8_server: ServerProc) -> None:
    """The client hanging up must stop llama.cpp too: its only slot is free for the next request at once."""
    with httpx.stream(
        "POST",
        q8_server.url + "/api/generate",
        timeout=60,
        json={"model": SMOLLM, "prompt": "Tell a very long story.", "options": LONG},
    ) as r:
        lines = []
        for line in r.iter_lines():
            lines.append(json.loads(line))
            if len(lines) >= 3:
                break
    # The only slot was busy with an endless generation; after the client
    # went away it must be free again well before that generation could end.
    start = time.monotonic()
    out = ollama.Client(host=q8_server.url, timeout=30).generate(model=SMOLLM, prompt="hi", options={"num_predict": 3})
    assert out.done and time.monotonic() - start < 15


def test_quantized_kv_cache_setting(q8_server: ServerProc, server: ServerProc) -> None:
    client = ollama.Client(host=q8_server.url)
    r = client.generate(model=SMOLLM, prompt="Hello", options={"num_predict": 8, "temperature": 0})
    assert r.done and r.eval_count == 8 and r.response
    f16 = ollama.Client(host=server.url)
    f16.generate(model=SMOLLM, prompt="Hello", options={"num_predict": 1})
    size_q8 = next(m.size for m in client.ps().models if m.model == SMOLLM)
    size_f16 = next(m.size for m in f16.ps().models if m.model == SMOLLM)
    # /api/ps counts the KV cache at its real element size: q8_0 is 34 bytes per 32 values.
    assert size_q8 < size_f16


def test_concurrent_streams_are_batched(server: ServerProc) -> None:
    """On the session server (OLLAMA_NUM_PARALLEL=4): llama.cpp batches the four streams."""
    client = ollama.Client(host=server.url)
    client.generate(model=SMOLLM, prompt="")
    spans: dict[int, tuple[float, float]] = {}

    def run(i: int) -> None:
        first = None
        for chunk in ollama.Client(host=server.url).generate(
            model=SMOLLM, prompt=f"Story number {i}:", stream=True, options={"temperature": 0, "num_predict": 40}
        ):
            if first is None:
                first = time.monotonic()
        spans[i] = (first or 0.0, time.monotonic())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(spans) == 4
    # Continuous batching: every stream had started before any of them finished.
    assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values())
