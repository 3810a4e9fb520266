"""``Metrics.render()`` parsed back with prometheus-client's own parser."""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from corral.gateway.metrics import Metrics
from corral.gateway.requestlog import RequestRecord


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def chat(
    model: str,
    status: int,
    total_ms: float | None,
    ttft_ms: float | None = None,
    prompt: int | None = None,
    output: int | None = None,
    route: str = "/api/chat",
) -> RequestRecord:
    return RequestRecord(
        id="r",
        ts=0.0,
        route=route,
        model=model,
        status=status,
        total_ms=total_ms,
        ttft_ms=ttft_ms,
        prompt_tokens=prompt,
        output_tokens=output,
    )


def test_requests_latency_and_tokens() -> None:
    m = Metrics()
    m.observe(chat("smollm2:135m", 200, 412.9, ttft_ms=61.2, prompt=12, output=30))
    m.observe(chat("smollm2:135m", 200, 2000.0, ttft_ms=700.0, prompt=8, output=100))
    m.observe(chat("smollm2:135m", 500, 5.0))
    m.observe(RequestRecord(id="t", ts=0.0, route="/api/tags", status=200, total_ms=1.0))
    s = samples(m)
    chat_labels = (("model", "smollm2:135m"), ("route", "/api/chat"))
    assert s[("corral_requests_total", (*chat_labels, ("status", "200")))] == 2
    assert s[("corral_requests_total", (*chat_labels, ("status", "500")))] == 1
    assert s[("corral_requests_total", (("model", ""), ("route", "/api/tags"), ("status", "200")))] == 1
    assert s[("corral_request_duration_seconds_count", chat_labels)] == 3
    assert abs(s[("corral_request_duration_seconds_sum", chat_labels)] - 2.4179) < 1e-9
    assert s[("corral_request_duration_seconds_bucket", (("le", "0.5"), *chat_labels))] == 2
    assert s[("corral_request_duration_seconds_bucket", (("le", "+Inf"), *chat_labels))] == 3
    assert s[("corral_time_to_first_token_seconds_count", chat_labels)] == 2
    assert s[("corral_time_to_first_token_seconds_bucket", (("le", "0.1"), *chat_labels))] == 1
    assert s[("corral_prompt_tokens_total", (("model", "smollm2:135m"),))] == 20
    assert s[("corral_output_tokens_total", (("model", "smollm2:135m"),))] == 130


def test_live_gauges_are_read_at_scrape_time() -> None:
    m = Metrics()
    depth = {"smollm2:135m": 3}
    backlog = [7]
    m.set_sources(
        queue_depth=lambda: dict(depth),
        slots=lambda: {"smollm2:135m": (1, 4)},
        loaded=lambda: {"smollm2:135m": 98_000_000, "all-minilm": 45_000_000},
        log_backlog=lambda: backlog[0],
        log_dropped=lambda: 2,
    )
    s = samples(m)
    model = (("model", "smollm2:135m"),)
    assert s[("corral_queue_depth", model)] == 3
    assert s[("corral_slots_busy", model)] == 1 and s[("corral_slots_total", model)] == 4
    assert s[("corral_model_loaded_bytes", model)] == 98_000_000
    assert s[("corral_model_loaded_bytes", (("model", "all-minilm"),))] == 45_000_000
    assert s[("corral_log_backlog", ())] == 7
    assert s[("corral_log_dropped_total", ())] == 2
    depth["smollm2:135m"] = 9
    backlog[0] = 0
    s = samples(m)
    assert s[("corral_queue_depth", model)] == 9 and s[("corral_log_backlog", ())] == 0


def test_a_failing_source_does_not_break_the_scrape() -> None:
    m = Metrics()

    def broken() -> dict[str, int]:
        raise RuntimeError("scheduler gone")

    m.set_sources(queue_depth=broken, log_backlog=lambda: 1)
    m.observe(chat("a", 200, 10.0))
    s = samples(m)
    assert s[("corral_log_backlog", ())] == 1
    assert not any(name == "corral_queue_depth" for name, _ in s)
    assert s[("corral_requests_total", (("model", "a"), ("route", "/api/chat"), ("status", "200")))] == 1


def test_private_registries_do_not_collide_or_touch_the_global_one() -> None:
    a, b = Metrics(), Metrics()
    a.observe(chat("x", 200, 1.0))
    assert ("corral_requests_total", (("model", "x"), ("route", "/api/chat"), ("status", "200"))) in samples(a)
    assert not any(name == "corral_requests_total" for name, _ in samples(b))
    assert (
        REGISTRY.get_sample_value("corral_requests_total", {"route": "/api/chat", "model": "x", "status": "200"})
        is None
    )


def test_model_label_values_are_capped() -> None:
    m = Metrics(max_model_labels=2)
    for name in ("a", "b", "c", "d"):
        m.observe(chat(name, 404, 1.0))
    s = samples(m)
    models = {dict(labels)["model"] for name, labels in s if name == "corral_requests_total"}
    assert models == {"a", "b", "other"}
    assert s[("corral_requests_total", (("model", "other"), ("route", "/api/chat"), ("status", "404")))] == 2
