"""Metrics: the Prometheus registry behind ``GET /metrics``.

:class:`Metrics` owns a private :class:`prometheus_client.CollectorRegistry`
(nothing goes to the library's global one, so several apps in one process,
as in tests, do not collide). Counters and histograms are updated from each
finished request by :meth:`Metrics.observe`; gauges about the live server
(queue depth, slots, loaded models, the log writer) are read at scrape time
from the callables given to :meth:`Metrics.set_sources`, so nothing has to
push them.

Label values come from clients (the model name), so distinct ``model`` values
are capped at :data:`MAX_MODEL_LABELS`; later ones are counted as ``other``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from corral.gateway.requestlog import RequestRecord

log = logging.getLogger("corral.gateway.metrics")

MAX_MODEL_LABELS = 200
MAX_SERIES_CACHED = 4096  # (route, model, status) combinations remembered; past that, looked up each time
OTHER = "other"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

QueueDepth = Callable[[], dict[str, int]]
Slots = Callable[[], dict[str, tuple[int, int]]]
Loaded = Callable[[], dict[str, int]]
Count = Callable[[], int]
Upstreams = Callable[[], list[dict[str, Any]]]  # corral.fleet.state.FleetState.snapshot()

T = TypeVar("T")


class _Sources:
    queue_depth: QueueDepth | None = None
    slots: Slots | None = None
    loaded: Loaded | None = None
    log_backlog: Count | None = None
    log_dropped: Count | None = None
    upstreams: Upstreams | None = None


def _read(name: str, source: Callable[[], T] | None) -> T | None:
    if source is None:
        return None
    try:
        return source()
    except Exception:  # a failing source must not fail the whole scrape
        log.warning("metrics source %s failed", name, exc_info=True)
        return None


class _LiveCollector(Collector):
    """Gauges read from the server at scrape time."""

    def __init__(self, sources: _Sources) -> None:
        self.sources = sources

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        s = self.sources
        queue_f, busy_f, total_f, loaded_f, backlog_f, dropped_f = self._families()
        for model, depth in sorted((_read("queue_depth", s.queue_depth) or {}).items()):
            queue_f.add_metric([model], depth)
        for model, (busy, total) in sorted((_read("slots", s.slots) or {}).items()):
            busy_f.add_metric([model], busy)
            total_f.add_metric([model], total)
        for model, size in sorted((_read("loaded", s.loaded) or {}).items()):
            loaded_f.add_metric([model], size)
        backlog = _read("log_backlog", s.log_backlog)
        if backlog is not None:
            backlog_f.add_metric([], backlog)
        dropped = _read("log_dropped", s.log_dropped)
        if dropped is not None:
            dropped_f.add_metric([], dropped)
        return iter([queue_f, busy_f, total_f, loaded_f, backlog_f, dropped_f, *self._upstreams()])

    def _upstreams(self) -> list[Metric]:
        """Per fleet upstream: outstanding requests, health, routing decisions by reason, failovers."""
        states = _read("upstreams", self.sources.upstreams)
        if states is None:
            return []
        outstanding = GaugeMetricFamily(
            "corral_upstream_outstanding", "Requests in flight to each upstream", labels=["upstream"]
        )
        healthy = GaugeMetricFamily(
            "corral_upstream_healthy",
            "1 while an upstream's circuit is closed or half-open",
            labels=["upstream", "state"],
        )
        decisions = CounterMetricFamily(
            "corral_upstream_decisions", "Requests routed to each upstream, by reason", labels=["upstream", "reason"]
        )
        failovers = CounterMetricFamily(
            "corral_upstream_failovers",
            "Requests retried elsewhere after this upstream failed before their first byte",
            labels=["upstream"],
        )
        for s in states:
            outstanding.add_metric([s["name"]], s["outstanding"])
            healthy.add_metric([s["name"], s["health"]], 0 if s["health"] == "open" else 1)
            for reason, n in sorted(s["decisions"].items()):
                decisions.add_metric([s["name"], reason], n)
            failovers.add_metric([s["name"]], s["failovers"])
        return [outstanding, healthy, decisions, failovers]

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        CounterMetricFamily,
    ]:
        return (
            GaugeMetricFamily("corral_queue_depth", "Requests waiting for a slot, per model", labels=["model"]),
            GaugeMetricFamily("corral_slots_busy", "Slots generating now, per loaded model", labels=["model"]),
            GaugeMetricFamily("corral_slots_total", "Slots of each loaded model", labels=["model"]),
            GaugeMetricFamily("corral_model_loaded_bytes", "Memory held by each loaded model", labels=["model"]),
            GaugeMetricFamily("corral_log_backlog", "Request-log rows queued for the writer"),
            CounterMetricFamily("corral_log_dropped", "Request-log rows dropped (backlog full or write failed)"),
        )


class _Series(NamedTuple):
    requests: Counter
    duration: Histogram
    ttft: Histogram
    prompt_tokens: Counter
    output_tokens: Counter


class Metrics:
    """Counters, histograms and live gauges in a registry of its own (see module docstring)."""

    def __init__(self, *, max_model_labels: int = MAX_MODEL_LABELS) -> None:
        self.registry = CollectorRegistry()
        self.max_model_labels = max_model_labels
        self._models: set[str] = set()
        self._lock = threading.Lock()
        self._children: dict[tuple[str, str | None, int], _Series] = {}
        self.requests = Counter(
            "corral_requests_total",
            "Requests answered, by route, model and HTTP status",
            ["route", "model", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "corral_request_duration_seconds",
            "Total request time, by route and model",
            ["route", "model"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "corral_time_to_first_token_seconds",
            "Time to first token, by route and model",
            ["route", "model"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "corral_prompt_tokens_total", "Prompt tokens evaluated, by model", ["model"], registry=self.registry
        )
        self.output_tokens = Counter(
            "corral_output_tokens_total", "Output tokens generated, by model", ["model"], registry=self.registry
        )
        self._sources = _Sources()
        self.registry.register(_LiveCollector(self._sources))

    def set_sources(
        self,
        *,
        queue_depth: QueueDepth | None = None,
        slots: Slots | None = None,
        loaded: Loaded | None = None,
        log_backlog: Count | None = None,
        log_dropped: Count | None = None,
        upstreams: Upstreams | None = None,
    ) -> None:
        """Where the scrape-time gauges come from; a source left None is not exported."""
        self._sources.upstreams = upstreams
        self._sources.queue_depth = queue_depth
        self._sources.slots = slots
        self._sources.loaded = loaded
        self._sources.log_backlog = log_backlog
        self._sources.log_dropped = log_dropped

    def _model_label(self, model: str | None) -> str:
        if not model:
            return ""
        with self._lock:
            if model in self._models:
                return model
            if len(self._models) < self.max_model_labels:
                self._models.add(model)
                return model
        return OTHER

    def _series(self, route: str, model: str | None, status: int) -> _Series:
        """The labelled series one request counts in, looked up once per distinct (route, model, status)."""
        key = (route, model, status)
        found = self._children.get(key)
        if found is None:
            label = self._model_label(model)
            found = _Series(
                self.requests.labels(route, label, str(status)),
                self.duration.labels(route, label),
                self.ttft.labels(route, label),
                self.prompt_tokens.labels(label),
                self.output_tokens.labels(label),
            )
            if len(self._children) < MAX_SERIES_CACHED:
                self._children[key] = found
        return found

    def observe(self, rec: RequestRecord) -> None:
        """Count one finished request: status, total time, time to first token, tokens."""
        series = self._series(rec.route or OTHER, rec.model, rec.status)
        series.requests.inc()
        if rec.total_ms is not None:
            series.duration.observe(rec.total_ms / 1000)
        if rec.ttft_ms is not None:
            series.ttft.observe(rec.ttft_ms / 1000)
        if rec.prompt_tokens:
            series.prompt_tokens.inc(rec.prompt_tokens)
        if rec.output_tokens:
            series.output_tokens.inc(rec.output_tokens)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
