"""Discovery over real HTTP (the scripted upstream on loopback), and the merged listings built from it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from corral.fleet.config import FleetConfig, UpstreamSpec
from corral.fleet.discovery import Discovery, check, merged_openai_models, merged_ps, merged_tags, refresh
from corral.fleet.state import FleetState
from tests.conftest import free_port
from tests.fleet_upstream import FakeUpstream


def tag(name: str, digest: str = "d1", size: int = 10) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": "2025-01-02T03:04:05.123456789Z",
        "size": size,
        "digest": digest,
        "details": {"format": "gguf"},
    }


def ps(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "size": 10,
        "digest": "d1",
        "details": {},
        "size_vram": 10,
        "expires_at": "2025-01-02T03:09:05Z",
        "context_length": 4096,
    }


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream(key="k").start()
    server.tags = [tag("llama3:latest"), tag("qwen:7b")]
    server.ps = [ps("qwen:7b")]
    yield server
    server.stop()


def fleet_of(*specs: UpstreamSpec, **settings: Any) -> FleetState:
    return FleetState(FleetConfig(upstreams=specs, **settings))


async def test_refresh_reads_tags_and_ps_of_an_ollama_upstream(upstream: FakeUpstream) -> None:
    fleet = fleet_of(UpstreamSpec("gpu1", upstream.url, key="k"))
    state = fleet.get("gpu1")
    async with aiohttp.ClientSession() as session:
        assert await refresh(session, state, timeout=5, now=42.0)
    assert state.served == {"llama3:latest", "qwen:7b"} and state.serves("llama3")
    assert state.loaded == {"qwen:7b"} and state.discovered and state.last_refresh == 42.0
    assert [(m, p, h.get("Authorization")) for m, p, h, _ in upstream.requests] == [
        ("GET", "/api/tags", "Bearer k"),
        ("GET", "/api/ps", "Bearer k"),
    ]


async def test_an_openai_upstream_is_discovered_from_v1_models_with_everything_loaded(upstream: FakeUpstream) -> None:
    state = fleet_of(
        UpstreamSpec("vllm", upstream.url, kind="openai", key="k", models=("chat-model", "tool-model")),
    ).get("vllm")
    async with aiohttp.ClientSession() as session:
        assert await refresh(session, state, timeout=5, now=1.0)
    assert [t["name"] for t in state.tags] == ["chat-model", "tool-model"]  # filtered by the spec's models
    assert state.tags[1]["details"]["format"] == "openai" and state.tags[1]["size"] == 123456
    assert state.loaded == {"chat-model", "tool-model"}
    assert state.running[0]["expires_at"].startswith("9999-12-31") and state.running[0]["context_length"] == 4096
    assert [p for _, p, _, _ in upstream.requests] == ["/v1/models"]


async def test_failed_discovery_counts_toward_ejection_and_keeps_the_last_catalog(upstream: FakeUpstream) -> None:
    fleet = fleet_of(UpstreamSpec("gpu1", upstream.url, key="k"), failure_threshold=2)
    state = fleet.get("gpu1")
    async with aiohttp.ClientSession() as session:
        assert await refresh(session, state, timeout=5, now=1.0)
        upstream.fail_with = 500
        assert not await refresh(session, state, timeout=5, now=2.0)
        assert state.breaker.state == "closed" and state.last_error == "GET /api/tags answered 500"
        assert not await check(session, state, timeout=5, now=3.0)  # an active check failing counts too
        assert state.breaker.state == "open" and state.serves("llama3")
        dead = fleet_of(UpstreamSpec("dead", f"http://127.0.0.1:{free_port()}")).get("dead")
        assert not await refresh(session, dead, timeout=5, now=1.0)
        assert dead.last_error is not None and dead.last_error.startswith("GET /api/tags: Cannot connect")
        wrong_key = fleet_of(UpstreamSpec("w", upstream.url, key="nope")).get("w")
        upstream.fail_with = None
        assert not await refresh(session, wrong_key, timeout=5, now=1.0)
        assert wrong_key.last_error == "GET /api/tags answered 401"


async def test_the_health_check_reads_only_ps_once_discovered(upstream: FakeUpstream) -> None:
    state = fleet_of(UpstreamSpec("gpu1", upstream.url, key="k")).get("gpu1")
    async with aiohttp.ClientSession() as session:
        assert await check(session, state, timeout=5, now=1.0)  # never discovered: a full refresh
        upstream.ps = [ps("llama3:latest")]
        upstream.requests.clear()
        assert await check(session, state, timeout=5, now=2.0)
    assert [p for _, p, _, _ in upstream.requests] == ["/api/ps"] and state.loaded == {"llama3:latest"}


async def test_discovery_keeps_refreshing_until_closed(upstream: FakeUpstream) -> None:
    fleet = fleet_of(
        UpstreamSpec("a", upstream.url, key="k"),
        UpstreamSpec("b", upstream.url, key="wrong"),
        refresh_interval=0.05,
        health_interval=0.05,
    )
    discovery = Discovery(fleet)
    await discovery.start()
    try:
        assert fleet.get("a").loaded == {"qwen:7b"} and fleet.get("b").last_error is not None
        upstream.ps = []
        for _ in range(100):
            if not fleet.get("a").loaded:
                break
            await asyncio.sleep(0.02)
        assert fleet.get("a").loaded == frozenset()
    finally:
        await discovery.close()
    count = len(upstream.requests)
    await asyncio.sleep(0.2)
    assert len(upstream.requests) == count


def merged_fleet() -> FleetState:
    fleet = fleet_of(
        UpstreamSpec("gpu1", "http://a:1"),
        UpstreamSpec("gpu2", "http://b:1"),
        UpstreamSpec("vllm", "http://c:1", kind="openai"),
        UpstreamSpec("down", "http://d:1"),
        failure_threshold=1,
    )
    fleet.get("gpu1").set_catalog([tag("llama3:latest", "d1"), tag("qwen:7b")], 0)
    fleet.get("gpu1").set_running([ps("llama3:latest")], 0)
    fleet.get("gpu2").set_catalog([tag("llama3:latest", "d2", 99), tag("phi:2b")], 0)
    fleet.get("gpu2").set_running([ps("llama3:latest")], 0)
    fleet.get("vllm").set_catalog([{**tag("Qwen/Qwen2.5-7B"), "modified_at": "2023-11-14T22:13:20Z"}], 0)
    fleet.get("down").set_catalog([tag("secret:1b")], 0)
    fleet.get("down").set_running([ps("secret:1b")], 0)
    fleet.get("down").failed("refused")
    return fleet


def test_merged_tags_one_entry_per_model_first_upstream_wins() -> None:
    models = merged_tags(merged_fleet())["models"]
    assert [(m["name"], m["upstream"], m["upstreams"]) for m in models] == [
        ("llama3:latest", "gpu1", ["gpu1", "gpu2"]),
        ("qwen:7b", "gpu1", ["gpu1"]),
        ("phi:2b", "gpu2", ["gpu2"]),
        ("Qwen/Qwen2.5-7B", "vllm", ["vllm"]),
    ]  # "down" is ejected: its model is not offered
    assert models[0]["digest"] == "d1" and models[0]["size"] == 10 and models[0]["details"] == {"format": "gguf"}


def test_merged_ps_lists_each_loaded_copy_with_its_upstream() -> None:
    assert [(m["name"], m["upstream"]) for m in merged_ps(merged_fleet())["models"]] == [
        ("llama3:latest", "gpu1"),
        ("llama3:latest", "gpu2"),
    ]


def test_merged_v1_models_name_the_upstream_as_owner() -> None:
    answer = merged_openai_models(merged_fleet())
    assert answer["object"] == "list"
    assert answer["data"][0] == {
        "id": "llama3:latest",
        "object": "model",
        "created": 1735787045,
        "owned_by": "gpu1",
        "upstream": "gpu1",
        "upstreams": ["gpu1", "gpu2"],
    }
    assert answer["data"][-1]["created"] == 1_700_000_000 and answer["data"][-1]["owned_by"] == "vllm"
