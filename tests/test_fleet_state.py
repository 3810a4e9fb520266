"""Per-upstream state: the circuit breaker's transitions on a fake clock, outstanding counts, catalogs."""

from __future__ import annotations

import pytest

from corral.errors import BadRequest
from corral.fleet.config import FleetConfig, UpstreamSpec
from corral.fleet.state import CircuitBreaker, FleetState, model_aliases


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_consecutive_failures_only() -> None:
    clock = Clock()
    b = CircuitBreaker(threshold=3, cooldown=10, clock=clock)
    b.failure()
    b.failure()
    b.success()  # not consecutive: the count restarts
    b.failure()
    b.failure()
    assert b.state == "closed" and b.available()
    b.failure()
    assert b.state == "open" and not b.available() and b.opens == 1


def test_breaker_half_opens_after_cooldown_and_lets_one_probe_through() -> None:
    clock = Clock()
    b = CircuitBreaker(threshold=1, cooldown=10, clock=clock)
    b.failure()
    clock.now += 9.9
    assert b.state == "open"
    b.success()  # a success before the cooldown is over is ignored
    assert b.state == "open"
    clock.now += 0.1
    assert b.state == "half-open" and b.available()
    b.claim()  # the probe is routed
    assert b.state == "half-open" and not b.available()
    b.success()
    assert b.state == "closed" and b.available() and b.failures == 0


def test_a_failed_probe_reopens_for_a_full_cooldown() -> None:
    clock = Clock()
    b = CircuitBreaker(threshold=2, cooldown=5, clock=clock)
    b.failure()
    b.failure()
    clock.now += 5
    b.claim()
    b.failure()
    assert b.state == "open" and b.opens == 2
    clock.now += 4.9
    assert b.state == "open"
    clock.now += 0.1
    assert b.state == "half-open" and b.available()  # the new probe slot is free
    b.failure()  # an active health check failing while half-open reopens too
    assert b.state == "open"


def test_claim_in_closed_state_takes_nothing() -> None:
    b = CircuitBreaker(threshold=1, cooldown=5, clock=Clock())
    b.claim()
    assert b.available() and not b.probing


def fleet(*specs: UpstreamSpec, clock: Clock | None = None) -> FleetState:
    return FleetState(FleetConfig(upstreams=specs, failure_threshold=2, cooldown=5), clock=clock or Clock())


def test_track_counts_outstanding_however_the_block_ends() -> None:
    state = fleet(UpstreamSpec("a", "http://a:1", weight=2)).get("a")
    with state.track():
        with state.track():
            assert state.outstanding == 2 and state.load == 1.0
        with pytest.raises(RuntimeError), state.track():
            raise RuntimeError("boom")
        assert state.outstanding == 1
    assert state.outstanding == 0 and state.requests == 3


def test_failures_eject_and_say_why_in_the_snapshot() -> None:
    clock = Clock()
    fs = fleet(UpstreamSpec("a", "http://a:1"), UpstreamSpec("b", "http://b:1"), clock=clock)
    a = fs.get("a")
    a.failed("connection refused")
    a.failed("connection refused")
    fs.note_failover("a")
    snap = {s["name"]: s for s in fs.snapshot()}
    assert snap["a"]["health"] == "open" and snap["a"]["ejections"] == 1 and snap["a"]["failovers"] == 1
    assert snap["a"]["last_error"] == "connection refused" and snap["a"]["failures"] == 2
    assert snap["b"]["health"] == "closed"
    clock.now += 5
    a.succeeded()
    assert a.breaker.state == "closed"


def test_catalog_matching_and_the_models_restriction() -> None:
    fs = fleet(UpstreamSpec("a", "http://a:1"), UpstreamSpec("b", "http://b:1", models=("llama3", "qwen:7b")))
    a, b = fs.get("a"), fs.get("b")
    tags = [
        {"name": "llama3:latest", "model": "llama3:latest"},
        {"name": "qwen:7b", "model": "qwen:7b"},
        {"name": "phi:2b", "model": "phi:2b"},
    ]
    a.set_catalog(tags, 1.0)
    b.set_catalog(tags, 1.0)
    a.set_running([{"name": "phi:2b", "model": "phi:2b"}], 1.0)
    b.set_running([{"name": "phi:2b", "model": "phi:2b"}, {"name": "qwen:7b", "model": "qwen:7b"}], 1.0)
    assert a.serves("llama3") and a.serves("llama3:latest") and a.serves("phi:2b") and not a.serves("phi")
    assert [t["name"] for t in b.tags] == ["llama3:latest", "qwen:7b"]  # listing filtered by models
    assert b.served == {"llama3", "qwen:7b"} and b.serves("llama3:latest") and not b.serves("phi:2b")
    assert [r["name"] for r in b.running] == ["qwen:7b"] and b.has_loaded("qwen:7b")
    assert a.has_loaded("phi:2b") and not a.has_loaded("llama3")
    a.note_loaded("llama3")
    assert a.has_loaded("llama3:latest")
    assert [s.name for s in fs.serving("llama3:latest")] == ["a", "b"]
    assert [s.name for s in fs.serving("phi:2b")] == ["a"]


def test_a_configured_model_list_is_served_before_discovery() -> None:
    state = fleet(UpstreamSpec("v", "http://v:1", kind="openai", models=("Qwen/Qwen2.5-7B",))).get("v")
    assert not state.discovered and state.serves("Qwen/Qwen2.5-7B")


def test_model_aliases_and_unknown_upstreams() -> None:
    assert model_aliases("llama3") == ("llama3", "llama3:latest")
    assert model_aliases("llama3:latest") == ("llama3:latest", "llama3")
    assert model_aliases("hf.co/org/model:Q4") == ("hf.co/org/model:Q4",)
    assert model_aliases("host:5000/model") == ("host:5000/model", "host:5000/model:latest")
    with pytest.raises(BadRequest, match="no upstream is named 'z'"):
        fleet(UpstreamSpec("a", "http://a:1")).get("z")
