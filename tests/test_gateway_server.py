"""The gateway on a real server: request-log rows and phases, timing headers and stream markers,
/metrics, the admin log/stats API, analytics beacons, ``corral logs``/``corral stats``, and SIGTERM.

One keyed server (an admin key and a user key) answers most tests; it has one
slot per model (``OLLAMA_NUM_PARALLEL=1``) so that concurrent requests queue.
Rows are read back from the server's own SQLite file, as an operator would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral.gateway.db import open_database
from corral.gateway.keys import KeyStore
from corral.gateway.requestlog import RequestLog
from corral.gateway.timing import PHASES, STREAM_TIMING_FIELD
from tests.conftest import ROOT, SMOLLM, ServerProc, launch

OPTS = {"temperature": 0, "num_predict": 8}
TIMING = r"(\w+);dur=(\d+\.\d)"


@dataclass
class Gw:
    srv: ServerProc
    admin: str
    user: str

    @property
    def url(self) -> str:
        return self.srv.url

    def log(self) -> RequestLog:
        return RequestLog(open_database(self.srv.home / "corral.db"))

    def row(self, request_id: str, timeout: float = 10) -> dict[str, Any]:
        """The log row of one request, once the writer has flushed it."""
        deadline = time.monotonic() + timeout
        log = self.log()
        while time.monotonic() < deadline:
            rows = [r for r in log.query(limit=200) if r["id"] == request_id]
            if rows:
                return rows[0]
            time.sleep(0.1)
        raise AssertionError(f"no log row for request {request_id}")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def gw(server: ServerProc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    home = tmp_path_factory.mktemp("gw-home")
    db = open_database(home / "corral.db")
    db.migrate()
    keys = KeyStore(db)
    admin, user = keys.create("root", admin=True)[1], keys.create("alice")[1]
    srv = launch(
        home, {"OLLAMA_MODELS": str(server.home / "models"), "CORRAL_STARTER_MODELS": "0", "OLLAMA_NUM_PARALLEL": "1"}
    )
    yield Gw(srv, admin, user)
    srv.stop()


class Captured:
    """httpx event hook: the headers of every response an official client received."""

    def __init__(self) -> None:
        self.responses: list[httpx.Response] = []

    def __call__(self, response: httpx.Response) -> None:
        self.responses.append(response)

    @property
    def last(self) -> httpx.Response:
        return self.responses[-1]


def parse_timing(value: str) -> dict[str, float]:
    import re

    parts = [p.strip() for p in value.split(",")]
    found = [re.fullmatch(TIMING, p) for p in parts]
    assert all(found), value
    names = [m.group(1) for m in found if m]
    assert names == [p for p in PHASES if p in names], f"phases out of order: {value}"
    return {m.group(1): float(m.group(2)) for m in found if m}


# ---- request log rows --------------------------------------------------------------------------


def test_log_rows_and_phases_for_each_kind_of_request(gw: Gw) -> None:
    seen = Captured()
    client = ollama.Client(host=gw.url, headers=bearer(gw.user), event_hooks={"response": [seen]})
    out = client.generate(model=SMOLLM, prompt="Say hi", options=OPTS)
    gen = gw.row(seen.last.headers["x-request-id"])
    assert gen["key_name"] == "alice" and gen["client"] == "127.0.0.1" and "ollama-python" in gen["user_agent"]
    assert (gen["method"], gen["path"], gen["route"], gen["dialect"]) == (
        "POST",
        "/api/generate",
        "/api/generate",
        "ollama",
    )
    assert gen["model"] == SMOLLM and gen["status"] == 200 and gen["error"] is None and gen["stream"] is False
    assert gen["done_reason"] == out.done_reason
    assert (gen["prompt_tokens"], gen["output_tokens"]) == (out.prompt_eval_count, out.eval_count)
    assert gen["bytes_in"] > 20 and gen["bytes_out"] == len(seen.last.content)
    for phase in ("auth", "queue", "load", "prompt_eval", "ttft", "generation", "client_io", "total"):
        assert gen[f"{phase}_ms"] is not None and gen[f"{phase}_ms"] >= 0, phase
    assert gen["upstream_ms"] is None
    assert gen["prompt_eval_ms"] <= gen["ttft_ms"] <= gen["total_ms"]
    assert abs(gen["generation_ms"] - (out.eval_duration or 0) / 1e6) < 0.01

    chunks = list(client.chat(model=SMOLLM, messages=[{"role": "user", "content": "Hi"}], stream=True, options=OPTS))
    chat = gw.row(seen.last.headers["x-request-id"])
    assert chat["path"] == "/api/chat" and chat["stream"] is True and chat["status"] == 200
    assert chat["output_tokens"] == chunks[-1].eval_count and chat["ttft_ms"] <= chat["total_ms"]
    assert chat["bytes_out"] > 0 and chat["done_reason"] == chunks[-1].done_reason

    client.embed(model="all-minilm", input=["one", "two"])
    emb = gw.row(seen.last.headers["x-request-id"])
    assert emb["model"] == "all-minilm" and emb["prompt_tokens"] > 0 and emb["queue_ms"] is not None
    assert emb["load_ms"] is not None

    oai_seen = Captured()
    oai = openai.OpenAI(
        base_url=gw.url + "/v1",
        api_key=gw.user,
        max_retries=0,
        http_client=httpx.Client(event_hooks={"response": [oai_seen]}),
    )
    reply = oai.chat.completions.create(model=SMOLLM, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    v1 = gw.row(oai_seen.last.headers["x-request-id"])
    assert (v1["dialect"], v1["route"], v1["model"], v1["status"]) == ("openai", "/v1/chat/completions", SMOLLM, 200)
    assert reply.usage is not None and v1["output_tokens"] == reply.usage.completion_tokens
    assert v1["key_name"] == "alice" and v1["generation_ms"] is not None

    with pytest.raises(ollama.ResponseError):
        client.generate(model="no-such-model", prompt="hi")
    failed = gw.row(seen.last.headers["x-request-id"])
    assert failed["status"] == 404 and failed["model"] == "no-such-model"
    assert failed["error"] == 'model "no-such-model" not found'

    rejected = httpx.get(gw.url + "/api/tags")
    denied = gw.row(rejected.headers["x-request-id"])
    assert denied["status"] == 401 and denied["key_name"] is None and "missing API key" in denied["error"]


# ---- timing on the wire ------------------------------------------------------------------------


def test_timing_headers_on_every_response_and_exposed_to_browsers(gw: Gw) -> None:
    r = httpx.post(
        gw.url + "/api/generate",
        headers=bearer(gw.user),
        timeout=120,
        json={"model": SMOLLM, "prompt": "Hi", "stream": False, "options": OPTS},
    )
    assert r.headers["server-timing"] == r.headers["x-sdl-proxy-timing"]
    whole = parse_timing(r.headers["server-timing"])
    assert {"auth", "queue", "load", "prompt_eval", "ttft", "generation", "total"} <= set(whole)
    assert r.json()[STREAM_TIMING_FIELD]["generation"] == whole["generation"]

    with httpx.stream(
        "POST",
        gw.url + "/api/generate",
        headers=bearer(gw.user),
        timeout=120,
        json={"model": SMOLLM, "prompt": "Hi", "options": OPTS},
    ) as s:
        at_start = parse_timing(s.headers["x-sdl-proxy-timing"])
        lines = [json.loads(line) for line in s.iter_lines() if line]
    assert {"auth", "queue", "load", "ttft"} <= set(at_start) and "total" not in at_start  # known when it began
    assert lines[-1][STREAM_TIMING_FIELD]["total"] >= at_start["ttft"]

    for response in (
        httpx.get(gw.url + "/api/tags"),
        httpx.get(gw.url + "/"),
        httpx.get(gw.url + "/api/tags", headers=bearer(gw.user)),
    ):
        assert "total" in parse_timing(response.headers["server-timing"])
        assert response.headers["x-sdl-proxy-timing"] == response.headers["server-timing"]

    cors = httpx.get(gw.url + "/api/version", headers={"Origin": "http://localhost:8080"})
    exposed = {h.strip().lower() for h in cors.headers["access-control-expose-headers"].split(",")}
    assert {"server-timing", "x-sdl-proxy-timing", "x-request-id"} <= exposed


def test_done_objects_carry_the_stream_marker(gw: Gw) -> None:
    # The official client reads these answers unchanged (it ignores the extra field) ...
    client = ollama.Client(host=gw.url, headers=bearer(gw.user))
    assert list(client.generate(model=SMOLLM, prompt="Hi", stream=True, options=OPTS))[-1].done
    assert client.chat(model=SMOLLM, messages=[{"role": "user", "content": "Hi"}], options=OPTS).done
    # ... and the marker is in the final done object of each, streamed or not, as the raw NDJSON shows.
    for path, body in (
        ("/api/generate", {"prompt": "Hi"}),
        ("/api/chat", {"messages": [{"role": "user", "content": "Hi"}]}),
    ):
        for stream in (True, False):
            r = httpx.post(
                gw.url + path,
                headers=bearer(gw.user),
                timeout=120,
                json={"model": SMOLLM, "stream": stream, "options": OPTS, **body},
            )
            objects = [json.loads(line) for line in r.text.splitlines() if line]
            assert all(STREAM_TIMING_FIELD not in o for o in objects[:-1])
            done = objects[-1]
            assert done["done"] is True
            marker = done[STREAM_TIMING_FIELD]
            assert list(marker) == [p for p in PHASES if p in marker]
            assert {"auth", "queue", "load", "prompt_eval", "ttft", "generation", "total"} <= set(marker)
            assert marker["generation"] == round(done["eval_duration"] / 1e6, 1)


# ---- /metrics ------------------------------------------------------------------------------------


def scrape(gw: Gw) -> dict[str, Any]:
    r = httpx.get(gw.url + "/metrics", headers=bearer(gw.admin))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def samples(family: Any, name: str, **labels: str) -> list[float]:
    return [s.value for s in family.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def test_metrics_parse_and_count_requests(gw: Gw) -> None:
    assert httpx.get(gw.url + "/metrics", headers=bearer(gw.user)).status_code == 403
    assert httpx.get(gw.url + "/metrics").status_code == 401
    ollama.Client(host=gw.url, headers=bearer(gw.user)).generate(model=SMOLLM, prompt="Hi", options=OPTS)
    time.sleep(0.2)
    families = scrape(gw)
    assert (
        samples(
            families["corral_requests"], "corral_requests_total", route="/api/generate", model=SMOLLM, status="200"
        )[0]
        >= 1
    )
    assert (
        samples(
            families["corral_request_duration_seconds"],
            "corral_request_duration_seconds_count",
            route="/api/generate",
            model=SMOLLM,
        )[0]
        >= 1
    )
    assert (
        samples(
            families["corral_time_to_first_token_seconds"],
            "corral_time_to_first_token_seconds_count",
            route="/api/generate",
            model=SMOLLM,
        )[0]
        >= 1
    )
    assert samples(families["corral_prompt_tokens"], "corral_prompt_tokens_total", model=SMOLLM)[0] > 0
    assert samples(families["corral_output_tokens"], "corral_output_tokens_total", model=SMOLLM)[0] > 0
    assert samples(families["corral_model_loaded_bytes"], "corral_model_loaded_bytes", model=SMOLLM)[0] > 50e6
    assert samples(families["corral_slots_total"], "corral_slots_total", model=SMOLLM) == [1.0]
    assert samples(families["corral_log_backlog"], "corral_log_backlog")[0] >= 0
    assert samples(families["corral_log_dropped"], "corral_log_dropped_total") == [0.0]


def test_queue_depth_rises_under_concurrent_load(gw: Gw) -> None:
    client = ollama.Client(host=gw.url, headers=bearer(gw.user))
    client.generate(model=SMOLLM, prompt="", keep_alive="5m")  # loaded, so the wait below is for the one slot
    stop = threading.Event()

    def long_stream() -> None:
        with httpx.stream(
            "POST",
            gw.url + "/api/generate",
            headers=bearer(gw.user),
            timeout=120,
            json={"model": SMOLLM, "prompt": "Tell a long story.", "options": {"temperature": 0, "num_predict": 400}},
        ) as r:
            for _ in r.iter_lines():
                if stop.is_set():
                    break  # closing the stream frees the slot for the next one

    threads = [threading.Thread(target=long_stream) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        depth, busy = 0.0, 0.0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (depth >= 2 and busy == 1):
            families = scrape(gw)
            depth = max(samples(families["corral_queue_depth"], "corral_queue_depth", model=SMOLLM) or [0.0])
            busy = max(samples(families["corral_slots_busy"], "corral_slots_busy", model=SMOLLM) or [0.0])
            time.sleep(0.1)
        assert depth >= 2 and busy == 1
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not samples(scrape(gw)["corral_queue_depth"], "corral_queue_depth", model=SMOLLM):
            break
        time.sleep(0.2)
    assert not samples(scrape(gw)["corral_queue_depth"], "corral_queue_depth", model=SMOLLM)


# ---- admin API and beacons ----------------------------------------------------------------------------


def test_admin_api_shows_all_rows_to_admin_and_own_rows_to_a_user(gw: Gw) -> None:
    httpx.get(gw.url + "/api/ps", headers=bearer(gw.admin))
    assert httpx.get(gw.url + "/api/ps").status_code == 401  # a 4xx row
    for _ in range(3):  # rows that name a model, for the paging check
        assert httpx.post(gw.url + "/api/show", json={"model": SMOLLM}, headers=bearer(gw.user)).status_code == 200
    time.sleep(0.6)
    everyone = httpx.get(gw.url + "/api/admin/requests", params={"limit": 500}, headers=bearer(gw.admin)).json()
    assert {"root", "alice"} <= {r["key_name"] for r in everyone["requests"]}
    own = httpx.get(gw.url + "/api/admin/requests", params={"limit": 500}, headers=bearer(gw.user)).json()
    assert own["requests"] and {r["key_name"] for r in own["requests"]} == {"alice"}
    other = httpx.get(gw.url + "/api/admin/requests", params={"key": "root"}, headers=bearer(gw.user))
    assert other.status_code == 403
    # paging, over rows that no request of this test adds to (the admin API's own calls name no model)
    by_model = httpx.get(
        gw.url + "/api/admin/requests", params={"model": SMOLLM, "limit": 500}, headers=bearer(gw.admin)
    ).json()["requests"]
    assert len(by_model) >= 3 and all(r["model"] == SMOLLM for r in by_model)
    page = httpx.get(
        gw.url + "/api/admin/requests",
        params={"model": SMOLLM, "limit": 2, "offset": 1, "since": "1h"},
        headers=bearer(gw.admin),
    ).json()
    assert (page["limit"], page["offset"]) == (2, 1)
    assert [r["id"] for r in page["requests"]] == [r["id"] for r in by_model[1:3]]
    errors = httpx.get(
        gw.url + "/api/admin/requests", params={"status": "4xx", "limit": 500}, headers=bearer(gw.admin)
    ).json()["requests"]
    assert errors and all(400 <= r["status"] < 500 for r in errors)
    assert (
        httpx.get(gw.url + "/api/admin/requests", params={"since": "soon"}, headers=bearer(gw.admin)).status_code == 400
    )

    stats = httpx.get(gw.url + "/api/admin/stats", headers=bearer(gw.admin)).json()
    assert stats["requests"] >= len(everyone["requests"]) - 1 and stats["statuses"]["401"] >= 1
    mine = httpx.get(gw.url + "/api/admin/stats", params={"since": "1h"}, headers=bearer(gw.user)).json()
    assert mine["key_name"] == "alice" and mine["requests"] < stats["requests"]


def test_analytics_beacons_validated_capped_and_counted(gw: Gw) -> None:
    event = {
        "event": "chat_turn",
        "model": SMOLLM,
        "timings": {"ttft": 80.5, "total": 900.0},
        "status": 200,
        "clientProfile": {"userAgent": "Mozilla/5.0", "screen": "1920x1080", "timezone": "UTC", "language": "en"},
    }
    url = gw.url + "/api/playground/analytics"
    assert httpx.post(url, json=event).status_code == 401  # the API's auth
    ok = httpx.post(url, json=event, headers=bearer(gw.user))
    assert ok.status_code == 202
    failed = httpx.post(url, json={**event, "status": 500, "error": "boom"}, headers=bearer(gw.user))
    assert failed.status_code == 202

    big = {**event, "padding": "x" * (64 * 1024)}
    too_big = httpx.post(url, json=big, headers=bearer(gw.user))
    assert too_big.status_code == 413 and "limit" in too_big.json()["error"]
    chunked = httpx.post(
        url,
        content=iter([json.dumps(big).encode()[i : i + 8192] for i in range(0, 70000, 8192)]),
        headers=bearer(gw.user),
    )
    assert chunked.status_code == 413  # no Content-Length: counted while reading
    bad_json = httpx.post(url, content=b'{"event": "chat_turn",', headers=bearer(gw.user))
    assert bad_json.status_code == 400 and "invalid JSON" in bad_json.json()["error"]
    bad_field = httpx.post(url, json={"model": SMOLLM}, headers=bearer(gw.user))
    assert bad_field.status_code == 400 and "event" in bad_field.json()["error"]

    time.sleep(0.6)
    beacons = httpx.get(gw.url + "/api/admin/stats", headers=bearer(gw.admin)).json()["beacons"]
    assert beacons["by_event"]["chat_turn"] >= 2 and beacons["errors"] >= 1
    stored = gw.log().beacons(limit=10)
    assert stored[0]["key_name"] == "alice" and stored[0]["data"]["clientProfile"]["timezone"] == "UTC"


# ---- corral logs / corral stats against the server's database ---------------------------------------------


def corral(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "CORRAL_"))}
    env["CORRAL_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_logs_and_stats_commands_read_the_running_servers_rows(gw: Gw) -> None:
    client = ollama.Client(host=gw.url, headers=bearer(gw.user))
    client.generate(model=SMOLLM, prompt="Hi", options=OPTS)
    with pytest.raises(ollama.ResponseError):
        client.chat(model="missing-model", messages=[{"role": "user", "content": "hi"}])
    time.sleep(0.6)

    table = corral(gw.srv.home, "logs", "-n", "5")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:6] == ["TIME", "KEY", "METHOD", "PATH", "MODEL", "STATUS"]
    assert any("/api/generate" in r and SMOLLM in r and "alice" in r for r in rows)
    assert 'model "missing-model" not found' in rows[-1]

    as_json = corral(gw.srv.home, "logs", "--json", "--model", SMOLLM, "--key", "alice", "-n", "3")
    parsed = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert parsed and all(r["model"] == SMOLLM and r["key_name"] == "alice" for r in parsed)
    assert corral(gw.srv.home, "logs", "--status", "4xx", "--json").stdout.count('"status":4') >= 1

    stats = corral(gw.srv.home, "stats", "--since", "1h")
    assert stats.returncode == 0, stats.stderr
    lines = stats.stdout.splitlines()
    assert lines[0].split() == ["MODEL", "TURNS", "OK", "AVG", "P50", "P95", "PROMPT", "Σ", "REPLY", "Σ"]
    smol = next(line.split() for line in lines if line.startswith(SMOLLM))
    assert int(smol[1]) >= 1 and int(smol[2]) >= 1 and int(smol[6]) > 0
    assert any(line.split()[:1] == ["404"] for line in lines)


# ---- SIGTERM under load ---------------------------------------------------------------------------------


def test_sigterm_under_load_loses_no_log_rows(server: ServerProc, start_server: Callable[..., ServerProc]) -> None:
    # A long shutdown grace: on a loaded machine the queued generations still finish and are logged as 200.
    srv = start_server(
        {
            "OLLAMA_MODELS": str(server.home / "models"),
            "CORRAL_STARTER_MODELS": "0",
            "OLLAMA_NUM_PARALLEL": "2",
            "CORRAL_SHUTDOWN_GRACE": "60",
        }
    )
    httpx.post(srv.url + "/api/generate", json={"model": SMOLLM, "keep_alive": "5m"}, timeout=120)
    answered: dict[str, int] = {}  # request id -> status the client got
    lock = threading.Lock()

    def one() -> None:
        try:
            with httpx.Client(timeout=120) as http:  # a connection of its own
                r = http.post(
                    srv.url + "/api/generate",
                    json={"model": SMOLLM, "prompt": "Count to ten", "stream": False, "options": {"num_predict": 16}},
                )
        except httpx.HTTPError:
            return  # refused or cut before it was read: never answered
        with lock:
            answered[r.headers["x-request-id"]] = r.status_code

    threads = []
    for _ in range(8):
        t = threading.Thread(target=one)
        t.start()
        threads.append(t)
        time.sleep(0.15)
    srv.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=180)
    # The requests in flight finish, the lifespan's shutdown runs, and the process exits 0.
    assert srv.proc.wait(timeout=120) == 0
    assert "unloaded smollm2:135m" in srv.log_text()
    assert answered, "nothing was answered before the server stopped"
    rows = RequestLog(open_database(srv.home / "corral.db")).query(limit=1000)
    # Every answer the clients got is a row with the same status: generations that finished within the
    # shutdown grace (200) and any still waiting when it ran out (503, "server shutting down").
    logged = {r["id"]: r["status"] for r in rows if r["path"] == "/api/generate" and r["model"] == SMOLLM}
    assert {i: logged.get(i) for i in answered} == answered
    assert 200 in answered.values()
    assert len([r for r in rows if r["path"] == "/api/generate"]) == len(answered) + 1  # plus the load request
