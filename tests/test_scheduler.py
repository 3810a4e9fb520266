"""Scheduler behaviour on real servers: slots, queue, keep_alive, eviction.

Each test starts its own ``corral serve`` with the settings under test and
points ``OLLAMA_MODELS`` at the session server's store (so the starter model
is shared rather than re-imported).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import httpx
import ollama
import pytest

from tests.conftest import SMOLLM, ServerProc

LONG = {"temperature": 0, "num_predict": 100000}


@pytest.fixture
def shared_env(server: ServerProc) -> dict[str, str]:
    return {"OLLAMA_MODELS": str(server.home / "models"), "CORRAL_STARTER_MODELS": "0"}


def test_full_queue_answers_503(start_server: Callable[..., ServerProc], shared_env: dict[str, str]) -> None:
    srv = start_server({**shared_env, "OLLAMA_NUM_PARALLEL": "1", "OLLAMA_MAX_QUEUE": "1"})
    client = ollama.Client(host=srv.url)
    client.generate(model=SMOLLM, prompt="", keep_alive="5m")  # load first
    statuses: list[int] = []
    stop = threading.Event()

    def long_stream() -> None:
        with httpx.stream("POST", srv.url + "/api/generate", timeout=60,
                          json={"model": SMOLLM, "prompt": "Tell a long story.", "options": LONG}) as r:
            statuses.append(r.status_code)
            for _ in r.iter_lines():
                if stop.is_set():
                    break

    threads = [threading.Thread(target=long_stream) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.5)  # one runs, one waits in the queue
    r = httpx.post(srv.url + "/api/generate", json={"model": SMOLLM, "prompt": "hi", "stream": False}, timeout=30)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert r.status_code == 503
    assert "maximum pending requests exceeded" in r.json()["error"]


def test_disconnect_frees_the_slot(start_server: Callable[..., ServerProc], shared_env: dict[str, str]) -> None:
    srv = start_server({**shared_env, "OLLAMA_NUM_PARALLEL": "1"})
    with httpx.stream("POST", srv.url + "/api/generate", timeout=60,
                      json={"model": SMOLLM, "prompt": "Tell a very long story.", "options": LONG}) as r:
        lines = []
        for line in r.iter_lines():
            lines.append(json.loads(line))
            if len(lines) >= 3:
                break
    # The only slot was busy with an endless generation; after the client
    # went away it must be free again well before that generation could end.
    start = time.monotonic()
    out = ollama.Client(host=srv.url, timeout=30).generate(model=SMOLLM, prompt="hi", options={"num_predict": 3})
    assert out.done and time.monotonic() - start < 15


def test_keep_alive_expiry_and_forever(start_server: Callable[..., ServerProc], shared_env: dict[str, str]) -> None:
    srv = start_server(shared_env)
    client = ollama.Client(host=srv.url)
    client.generate(model=SMOLLM, prompt="hi", keep_alive="2s", options={"num_predict": 2})
    assert [m.model for m in client.ps().models] == [SMOLLM]
    deadline = time.monotonic() + 15
    while client.ps().models and time.monotonic() < deadline:
        time.sleep(0.5)
    assert client.ps().models == []
    client.generate(model=SMOLLM, prompt="", keep_alive=-1)
    assert client.ps().models[0].expires_at.year > 2300


def test_default_keep_alive_from_env(start_server: Callable[..., ServerProc], shared_env: dict[str, str]) -> None:
    srv = start_server({**shared_env, "OLLAMA_KEEP_ALIVE": "1s", "CORRAL_KEEP_ALIVE": "1h"})
    client = ollama.Client(host=srv.url)
    client.generate(model=SMOLLM, prompt="")
    expires = client.ps().models[0].expires_at
    # CORRAL_KEEP_ALIVE wins over OLLAMA_KEEP_ALIVE: about an hour from now.
    assert (expires.timestamp() - time.time()) > 3000


def test_max_loaded_models_evicts_lru(start_server: Callable[..., ServerProc], shared_env: dict[str, str],
                                      server: ServerProc) -> None:
    ollama.Client(host=server.url).copy(SMOLLM, "smol-second")
    srv = start_server({**shared_env, "OLLAMA_MAX_LOADED_MODELS": "1"})
    client = ollama.Client(host=srv.url)
    client.generate(model=SMOLLM, prompt="")
    client.generate(model="smol-second", prompt="")
    assert [m.model for m in client.ps().models] == ["smol-second:latest"]


def test_concurrent_streams_are_batched(start_server: Callable[..., ServerProc], shared_env: dict[str, str]) -> None:
    srv = start_server({**shared_env, "OLLAMA_NUM_PARALLEL": "4"})
    client = ollama.Client(host=srv.url)
    client.generate(model=SMOLLM, prompt="")
    spans: dict[int, tuple[float, float]] = {}

    def run(i: int) -> None:
        first = None
        for chunk in ollama.Client(host=srv.url).generate(model=SMOLLM, prompt=f"Story number {i}:", stream=True,
                                                          options={"temperature": 0, "num_predict": 40}):
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


def test_quantized_kv_cache_setting(start_server: Callable[..., ServerProc], shared_env: dict[str, str],
                                    server: ServerProc) -> None:
    # No OLLAMA_FLASH_ATTENTION: a quantized V cache needs it, so Corral turns it on itself.
    srv = start_server({**shared_env, "OLLAMA_KV_CACHE_TYPE": "q8_0"})
    client = ollama.Client(host=srv.url)
    r = client.generate(model=SMOLLM, prompt="Hello", options={"num_predict": 8, "temperature": 0})
    assert r.done and r.eval_count == 8 and r.response
    f16 = ollama.Client(host=server.url)
    f16.generate(model=SMOLLM, prompt="Hello", options={"num_predict": 1})
    size_q8 = next(m.size for m in client.ps().models if m.model == SMOLLM)
    size_f16 = next(m.size for m in f16.ps().models if m.model == SMOLLM)
    # /api/ps counts the KV cache at its real element size: q8_0 is 34 bytes per 32 values.
    assert size_q8 < size_f16
