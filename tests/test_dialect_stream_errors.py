"""Errors once a stream has started, in the agent dialects (/v1/responses, /v1/messages), with a failing engine.

A fake engine is the only way to make llama.cpp fail half-way through a
generation on demand; everything above it is the real code, run in-process
with Starlette's TestClient.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from corral.engine.base import CompletionRequest, Event, LoadSpec, TokenEvent
from corral.errors import EngineError
from corral.server.app import create_app
from corral.settings import Settings
from corral.store.create import CreateSpec, create_model
from corral.store.store import Store
from tests.tiny_gguf import tiny_llama


class FailingModel:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.n_ctx_per_slot = spec.num_ctx
        self.size_bytes = 1

    async def complete(self, request: CompletionRequest) -> AsyncIterator[Event]:
        yield TokenEvent("Hello")
        yield TokenEvent(" world")
        raise EngineError("llama runner crashed: out of memory")

    async def embed(self, inputs: list[Any], *, normalize: bool = True) -> tuple[list[list[float]], int]:
        raise EngineError("no embeddings here")

    async def tokenize(self, text: str, *, special: bool = True, add_special: bool = False) -> list[int]:
        return list(text.encode())

    async def detokenize(self, tokens: list[int]) -> str:
        return bytes(tokens).decode(errors="replace")

    async def slots(self) -> list[dict[str, Any]]:
        return []

    async def close(self) -> None:
        return None


class FailingEngine:
    name = "failing"

    async def load(self, spec: LoadSpec) -> FailingModel:
        return FailingModel(spec)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings.from_env({"CORRAL_HOME": str(tmp_path), "CORRAL_STARTER_MODELS": "0"})
    store = Store(settings.models_dir)
    digest, _ = store.import_file(tiny_llama(tmp_path / "tiny.gguf"))
    for _ in create_model(store, CreateSpec(name="tiny", files={"tiny.gguf": digest})):
        pass
    with TestClient(create_app(settings, engine=FailingEngine())) as c:
        yield c


def _sse_blocks(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name or "", decoded data) for each SSE event."""
    out = []
    for block in filter(None, text.split("\n\n")):
        lines = block.split("\n")
        name = lines[0][len("event: ") :] if lines[0].startswith("event: ") else ""
        out.append((name, json.loads(lines[-1][len("data: ") :])))
    return out


def test_error_after_responses_stream_started(client: TestClient) -> None:
    """/v1/responses: the text so far, a response.failed event, then the OpenAI error the SDK raises."""
    r = client.post("/v1/responses", json={"model": "tiny", "input": "hi", "stream": True})
    assert r.status_code == 200
    events = _sse_blocks(r.text)
    kinds = [data.get("type") for _, data in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert [data["delta"] for name, data in events if name == "response.output_text.delta"] == ["Hello", " world"]
    name, failed = events[-2]
    assert name == failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {"code": "server_error", "message": "llama runner crashed: out of memory"}
    assert events[-1] == (
        "",
        {
            "error": {
                "message": "llama runner crashed: out of memory",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        },
    )
    # A failed response is not stored.
    rid = events[0][1]["response"]["id"]
    assert client.get(f"/v1/responses/{rid}").status_code == 404


def test_error_after_messages_stream_started(client: TestClient) -> None:
    """/v1/messages: Anthropic's `event: error` ends the stream."""
    r = client.post(
        "/v1/messages",
        json={"model": "tiny", "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 200
    events = _sse_blocks(r.text)
    assert [name for name, _ in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "error",
    ]
    assert events[-1][1] == {
        "type": "error",
        "error": {"type": "api_error", "message": "llama runner crashed: out of memory"},
    }
    r = client.post(
        "/v1/messages", json={"model": "tiny", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert r.status_code == 500 and r.json() == {
        "type": "error",
        "error": {"type": "api_error", "message": "llama runner crashed: out of memory"},
    }
