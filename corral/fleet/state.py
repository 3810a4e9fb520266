"""Live state of each upstream: what it serves and has loaded, its load, its health, its counters.

Owns :class:`CircuitBreaker` (passive and active health), :class:`UpstreamState`
(one upstream: catalog from discovery, outstanding requests, breaker,
counters for ``/metrics``) and :class:`FleetState` (all of them, in config
order). Nothing here does I/O; :mod:`corral.fleet.discovery` fills the
catalog, :mod:`corral.fleet.routing` reads it, and the gateway reports each
request's outcome. Time comes from an injectable clock (``time.monotonic``
by default) so tests can move it.

Circuit breaker::

    closed --(failure_threshold consecutive failures)--> open
    open   --(cooldown elapsed)--> half-open: one probe request may go
    half-open --success--> closed        half-open --failure--> open (cooldown restarts)

A success while open, before the cooldown is over, is ignored (the cooldown
is served in full); after it, any success (a routed probe, or an active
health check from discovery) closes the circuit.

Model names match as Ollama's do: ``llama3`` and ``llama3:latest`` are the
same model; anything else (``Qwen/Qwen2.5-7B``) matches exactly.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from corral.fleet.config import FleetConfig, UpstreamSpec

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Health = Literal["closed", "open", "half-open"]


def model_aliases(name: str) -> tuple[str, ...]:
    """The spellings of one model name: with and without an implicit ``:latest`` tag."""
    base = name.rsplit("/", 1)[-1]
    if ":" not in base:
        return name, name + ":latest"
    if name.endswith(":latest"):
        return name, name[: -len(":latest")]
    return (name,)


def _matches(model: str, names: Iterable[str]) -> bool:
    pool = names if isinstance(names, (set, frozenset)) else set(names)
    return any(alias in pool for alias in model_aliases(model))


class CircuitBreaker:
    """Consecutive-failure circuit breaker with a cooldown and a single half-open probe (see module docstring)."""

    def __init__(self, threshold: int, cooldown: float, clock: Clock = time.monotonic) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self.failures = 0  # consecutive, while closed
        self.opened_at: float | None = None
        self.probing = False  # the half-open probe is in flight
        self.opens = 0  # times the circuit opened (for metrics)

    @property
    def state(self) -> Health:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.cooldown else "open"

    def available(self) -> bool:
        """May a request be routed here now? Closed: yes; half-open: only if its probe is not taken."""
        state = self.state
        return state == "closed" or (state == "half-open" and not self.probing)

    def claim(self) -> None:
        """A request was routed here; in half-open state it is the probe, and no other may follow until it ends."""
        if self.state == "half-open":
            self.probing = True

    def success(self) -> None:
        state = self.state
        if state == "open":
            return
        if state == "half-open":
            log.info("circuit closed after a successful probe")
        self.failures = 0
        self.opened_at = None
        self.probing = False

    def failure(self) -> None:
        state = self.state
        if state == "open":
            return
        if state == "half-open":
            self._open()
            return
        self.failures += 1
        if self.failures >= self.threshold:
            self._open()

    def _open(self) -> None:
        self.opened_at = self.clock()
        self.failures = 0
        self.probing = False
        self.opens += 1


@dataclass
class UpstreamState:
    """One upstream, as the router and the merged listings see it.

    ``tags`` and ``running`` hold the upstream's catalog in Ollama's wire
    shape (``/api/tags`` and ``/api/ps`` entries; an ``openai`` upstream's
    ``/v1/models`` is translated into that shape by discovery). ``served``
    is what routing may send here: the spec's ``models`` when configured,
    else every name in ``tags``.
    """

    spec: UpstreamSpec
    breaker: CircuitBreaker
    tags: list[dict[str, Any]] = field(default_factory=list)
    running: list[dict[str, Any]] = field(default_factory=list)
    loaded: frozenset[str] = frozenset()
    discovered: bool = False  # one discovery succeeded at least once
    last_refresh: float | None = None
    last_error: str | None = None
    outstanding: int = 0
    requests: int = 0
    failures: int = 0
    failovers: int = 0  # requests that failed here and were retried on another upstream
    decisions: Counter[str] = field(default_factory=Counter)
    _listed: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def served(self) -> frozenset[str]:
        return frozenset(self.spec.models) if self.spec.models is not None else self._listed

    @property
    def load(self) -> float:
        """Outstanding requests per unit of weight: what least-loaded minimises."""
        return self.outstanding / self.spec.weight

    def serves(self, model: str) -> bool:
        return _matches(model, self.served)

    def has_loaded(self, model: str) -> bool:
        return _matches(model, self.loaded)

    def available(self) -> bool:
        return self.breaker.available()

    # ---- discovery ------------------------------------------------------------------
    def set_catalog(self, tags: list[dict[str, Any]], now: float) -> None:
        """Models listed by the upstream (Ollama ``/api/tags`` entries), filtered by the spec's ``models``."""
        if self.spec.models is not None:
            tags = [t for t in tags if _matches(_entry_name(t), self.spec.models)]
        self.tags = tags
        self._listed = frozenset(_entry_name(t) for t in tags)
        self.discovered = True
        self.last_refresh = now
        self.last_error = None

    def set_running(self, running: list[dict[str, Any]], now: float) -> None:
        """Models loaded on the upstream (Ollama ``/api/ps`` entries), filtered by the spec's ``models``."""
        if self.spec.models is not None:
            running = [r for r in running if _matches(_entry_name(r), self.spec.models)]
        self.running = running
        self.loaded = frozenset(_entry_name(r) for r in running)
        self.last_refresh = now
        self.last_error = None

    def note_loaded(self, model: str) -> None:
        """The upstream just served ``model``, so it has it loaded now (until the next discovery says otherwise)."""
        if not self.has_loaded(model):
            self.loaded = self.loaded | {model}

    # ---- requests -------------------------------------------------------------------
    @contextmanager
    def track(self) -> Iterator[UpstreamState]:
        """Count one request as outstanding for the duration of the block (however it ends).

        Health is not judged here: the caller reports :meth:`succeeded` or
        :meth:`failed`, since only it knows which errors are the upstream's.
        """
        self.outstanding += 1
        self.requests += 1
        try:
            yield self
        finally:
            self.outstanding -= 1

    def succeeded(self) -> None:
        self.breaker.success()

    def failed(self, reason: str) -> None:
        """The upstream failed a request or a check (unreachable, timed out, 5xx): counts toward ejection."""
        before = self.breaker.state
        self.failures += 1
        self.last_error = reason
        self.breaker.failure()
        if before != "open" and self.breaker.state == "open":
            log.warning("upstream %s ejected for %.0fs: %s", self.name, self.breaker.cooldown, reason)

    def snapshot(self) -> dict[str, Any]:
        """Plain values for ``/metrics`` and status pages."""
        return {
            "name": self.name,
            "url": self.spec.url,
            "kind": self.spec.kind,
            "weight": self.spec.weight,
            "health": self.breaker.state,
            "outstanding": self.outstanding,
            "requests": self.requests,
            "failures": self.failures,
            "failovers": self.failovers,
            "ejections": self.breaker.opens,
            "decisions": dict(self.decisions),
            "models": sorted(self.served),
            "loaded": sorted(self.loaded),
            "last_error": self.last_error,
        }


def _entry_name(entry: dict[str, Any]) -> str:
    return str(entry.get("model") or entry.get("name") or "")


class FleetState:
    """Every upstream's state, in config order; one per gateway process."""

    def __init__(self, config: FleetConfig, clock: Clock = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.upstreams: dict[str, UpstreamState] = {
            spec.name: UpstreamState(spec, CircuitBreaker(config.failure_threshold, config.cooldown, clock))
            for spec in config.upstreams
        }

    def __iter__(self) -> Iterator[UpstreamState]:
        return iter(self.upstreams.values())

    def __len__(self) -> int:
        return len(self.upstreams)

    def get(self, name: str) -> UpstreamState:
        """The state of the upstream called ``name`` (a :class:`BadRequest` naming the fleet if unknown)."""
        state = self.upstreams.get(name)
        if state is None:
            self.config.upstream(name)  # raises the error that lists the names
            raise AssertionError(name)
        return state

    def serving(self, model: str) -> list[UpstreamState]:
        """Upstreams that serve ``model``, whatever their health."""
        return [s for s in self if s.serves(model)]

    def note_failover(self, failed: str) -> None:
        """A request failed on ``failed`` before its first byte and is being retried elsewhere."""
        self.get(failed).failovers += 1

    def snapshot(self) -> list[dict[str, Any]]:
        return [s.snapshot() for s in self]
