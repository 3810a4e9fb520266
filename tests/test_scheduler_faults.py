"""The scheduler stays consistent whatever raises while a request holds a model.

A fake engine fails on demand at each step of load, use and release (the
only way to make llama.cpp fail at a chosen point); everything above it
(scheduler, backend, HTTP layer) is the real code, run in-process. After
each failure the model must hold no reference, ``keep_alive: 0`` must
unload it (it leaves ``/api/ps``), and a load with other options must
complete rather than wait forever for a reference nobody will give back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.backend import scheduler as scheduler_module
from corral.engine.base import CompletionRequest, DoneEvent, Event, LoadSpec, TokenEvent
from corral.errors import EngineError
from corral.server.app import create_app
from corral.settings import Settings
from corral.store.create import CreateSpec, create_model
from corral.store.store import Store
from tests.tiny_gguf import tiny_llama

STEP_TIMEOUT = 10  # seconds; a hang (a reference never given back) fails the test instead of blocking it


class Faults:
    """Failures still to inject, by step."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def arm(self, step: str, times: int = 1) -> None:
        self.counts[step] = times

    def hit(self, step: str) -> None:
        if self.counts.get(step, 0) > 0:
            self.counts[step] -= 1
            raise EngineError(f"injected failure at {step}")


class FakeModel:
    def __init__(self, spec: LoadSpec, faults: Faults) -> None:
        self.spec = spec
        self.faults = faults
        self.n_ctx_per_slot = spec.num_ctx
        self.size_bytes = 1
        self.closed = False

    async def complete(self, request: CompletionRequest) -> AsyncIterator[Event]:
        self.faults.hit("complete-start")
        yield TokenEvent("Hello")
        await asyncio.sleep(0)
        self.faults.hit("complete-middle")
        yield TokenEvent(" world")
        yield DoneEvent("stop", prompt_tokens=3, prompt_eval_ns=1000, eval_count=2, eval_ns=2000)

    async def embed(self, inputs: list[Any], *, normalize: bool = True) -> tuple[list[list[float]], int]:
        self.faults.hit("embed")
        return [[1.0, 0.0] for _ in inputs], len(inputs)

    async def tokenize(self, text: str, *, special: bool = True, add_special: bool = False) -> list[int]:
        self.faults.hit("tokenize")
        return list(text.encode())

    async def detokenize(self, tokens: list[int]) -> str:
        return bytes(tokens).decode(errors="replace")

    async def slots(self) -> list[dict[str, Any]]:
        return []

    async def close(self) -> None:
        self.closed = True
        self.faults.hit("close")


class FakeEngine:
    name = "fake"

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.loaded: list[FakeModel] = []

    async def load(self, spec: LoadSpec) -> FakeModel:
        await asyncio.sleep(0.01)
        self.faults.hit("load")
        model = FakeModel(spec, self.faults)
        self.loaded.append(model)
        return model


@pytest.fixture
def store_settings(tmp_path: Path) -> Iterator[Settings]:
    settings = Settings.from_env({"CORRAL_HOME": str(tmp_path), "CORRAL_STARTER_MODELS": "0"})
    store = Store(settings.models_dir)
    digest, _ = store.import_file(tiny_llama(tmp_path / "tiny.gguf"))
    for _ in create_model(store, CreateSpec(name="tiny", files={"tiny.gguf": digest})):
        pass
    yield settings


@asynccontextmanager
async def running(settings: Settings, engine: FakeEngine) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(settings, engine=engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://corral") as client:
            yield client, app.state.backend.scheduler


async def post(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
    return await asyncio.wait_for(client.post(path, json=body), STEP_TIMEOUT)


async def still_consistent(client: httpx.AsyncClient, scheduler: Any, engine: FakeEngine) -> None:
    """No reference is left; keep_alive 0 unloads; other load options reload; the model answers again."""
    assert all(r.refs == 0 for r in scheduler.runners.values()), {k: r.refs for k, r in scheduler.runners.items()}
    r = await post(client, "/api/generate", {"model": "tiny", "keep_alive": 0})
    assert r.status_code == 200 and r.json()["done_reason"] == "unload"
    assert (await client.get("/api/ps")).json()["models"] == []
    assert all(m.closed for m in engine.loaded)
    for options in ({"num_batch": 64}, {}):  # a reload with other load options, then back
        r = await post(client, "/api/generate", {"model": "tiny", "prompt": "hi", "stream": False, "options": options})
        assert r.status_code == 200, r.text
        assert r.json()["response"] == "Hello world"
    ps = (await client.get("/api/ps")).json()["models"]
    assert [m["name"] for m in ps] == ["tiny:latest"]
    assert all(r.refs == 0 for r in scheduler.runners.values())


GENERATE = {"model": "tiny", "prompt": "hi", "stream": False}


@pytest.mark.parametrize("step", ["load", "complete-start", "complete-middle", "tokenize", "embed"])
async def test_a_failure_while_a_model_is_held_leaves_the_scheduler_consistent(
    store_settings: Settings, step: str
) -> None:
    faults = Faults()
    engine = FakeEngine(faults)
    async with running(store_settings, engine) as (client, scheduler):
        if step != "load":  # the model is loaded and warm when the step fails
            assert (await post(client, "/api/generate", GENERATE)).status_code == 200
        faults.arm(step)
        if step == "embed":
            r = await post(client, "/api/embed", {"model": "tiny", "input": "hi"})
        else:
            r = await post(client, "/api/generate", GENERATE)
        assert r.status_code == 500 and r.json() == {"error": f"injected failure at {step}"}
        await still_consistent(client, scheduler, engine)


async def test_a_failure_mid_stream_releases_the_model(store_settings: Settings) -> None:
    faults = Faults()
    engine = FakeEngine(faults)
    async with running(store_settings, engine) as (client, scheduler):
        faults.arm("complete-middle")
        r = await post(client, "/api/generate", {"model": "tiny", "prompt": "hi"})
        assert r.status_code == 200
        assert r.text.splitlines()[-1] == '{"error":"injected failure at complete-middle"}'
        await still_consistent(client, scheduler, engine)


@pytest.mark.parametrize("when", ["acquire", "release"])
async def test_keep_alive_clock_failing_leaves_no_reference(
    store_settings: Settings, when: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clock of keep_alive is restarted as a model is taken and as it is given back; a failure
    there (once an overflow of a huge keep_alive) must not leave a reference behind."""
    faults = Faults()
    engine = FakeEngine(faults)
    real_expiry = scheduler_module.expiry
    calls = {"n": 0, "fail_at": 0}

    def flaky_expiry(keep_alive: float) -> Any:
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise OverflowError("date value out of range")
        return real_expiry(keep_alive)

    monkeypatch.setattr(scheduler_module, "expiry", flaky_expiry)
    async with running(store_settings, engine) as (client, scheduler):
        assert (await post(client, "/api/generate", GENERATE)).status_code == 200
        calls["fail_at"] = calls["n"] + (1 if when == "acquire" else 2)
        r = await post(client, "/api/generate", GENERATE)
        assert r.status_code == 500
        await still_consistent(client, scheduler, engine)


async def test_a_model_that_fails_to_close_is_still_unloaded(store_settings: Settings) -> None:
    faults = Faults()
    engine = FakeEngine(faults)
    async with running(store_settings, engine) as (client, scheduler):
        assert (await post(client, "/api/generate", GENERATE)).status_code == 200
        faults.arm("close")
        r = await post(client, "/api/generate", {"model": "tiny", "keep_alive": 0})
        assert r.status_code == 200 and r.json()["done_reason"] == "unload"
        assert (await client.get("/api/ps")).json()["models"] == []
        faults.arm("close")  # and when a reload with other options has to close the old one
        assert (await post(client, "/api/generate", GENERATE)).status_code == 200
        r = await post(client, "/api/generate", {**GENERATE, "options": {"num_batch": 64}})
        assert r.status_code == 200
        await still_consistent(client, scheduler, engine)


async def test_a_load_abandoned_by_its_client_still_completes_and_is_tracked(store_settings: Settings) -> None:
    faults = Faults()
    engine = FakeEngine(faults)
    async with running(store_settings, engine) as (client, scheduler):
        task = asyncio.ensure_future(client.post("/api/generate", json=GENERATE))
        await asyncio.sleep(0.002)  # the load (10 ms) has started
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)
        assert [m.closed for m in engine.loaded] == [False]
        assert list(scheduler.runners) == ["tiny:latest"]
        await still_consistent(client, scheduler, engine)
