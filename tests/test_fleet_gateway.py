"""The fleet gateway end to end: ``corral proxy --fleet`` in front of real servers, driven by the official clients.

Upstreams: three Corral servers (the session's, and two of this module's;
the third also holds a model, ``solo``, that no other has) and llama.cpp's
own llama-server as an OpenAI-compatible upstream (as ``bench/`` starts it).
Failover, ejection and recovery get a small fleet of their own, since they
kill upstreams.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from corral.gateway.db import open_database
from corral.gateway.keys import KeyStore
from corral.store.starters import smollm2_gguf
from tests.conftest import ROOT, SMOLLM, ServerProc, launch
from tests.test_proxy import launch_proxy

OPTS = {"temperature": 0, "num_predict": 6}


def write_fleet(path: Path, upstreams: list[tuple[str, str, str]], **settings: Any) -> Path:
    lines = [
        f"{k} = {json.dumps(v)}"
        for k, v in {
            "refresh_interval": 1.0,
            "health_interval": 0.5,
            "failure_threshold": 2,
            "cooldown": 2.0,
            **settings,
        }.items()
    ]
    for name, url, kind in upstreams:
        lines += ["", "[[upstream]]", f'name = "{name}"', f'url = "{url}"', f'kind = "{kind}"']
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    model = smollm2_gguf()
    assert model is not None
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.llama_server_proc",
            str(model),
            "--ctx-per-slot",
            "2048",
            "--parallel",
            "1",
            "--threads",
            "1",
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert line.startswith("LISTENING "), line
    yield line.split()[1]
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def fleet(server: ServerProc, llama_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("fleet")
    u2 = launch(base / "u2", {"CORRAL_NUM_THREADS": "1"})
    u3 = launch(base / "u3", {"CORRAL_NUM_THREADS": "1"})
    assert httpx.post(u3.url + "/api/copy", json={"source": SMOLLM, "destination": "solo"}).status_code == 200
    oa_model = httpx.get(llama_server + "/v1/models").json()["data"][0]["id"]
    config = write_fleet(
        base / "fleet.toml",
        [
            ("u1", server.url, "corral"),
            ("u2", u2.url, "corral"),
            ("u3", u3.url, "corral"),
            ("oa", llama_server, "openai"),
        ],
    )
    gw = launch_proxy("unused", base / "gw", "--fleet", str(config))
    yield {"gw": gw, "u1": server, "u2": u2, "u3": u3, "oa_model": oa_model}
    gw.stop()
    u2.stop()
    u3.stop()


def _chat(url: str, model: str, messages: list[dict[str, str]], **extra: Any) -> httpx.Response:
    return httpx.post(
        url + "/api/chat",
        timeout=120,
        json={"model": model, "messages": messages, "stream": False, "options": OPTS, **extra},
    )


def test_tags_merge_every_upstream_and_name_who_serves_each_model(fleet: dict[str, Any]) -> None:
    models = ollama.Client(host=fleet["gw"].url).list().models
    names = {m.model for m in models}
    assert {SMOLLM, "solo:latest", fleet["oa_model"]} <= names
    raw = {m["model"]: m for m in httpx.get(fleet["gw"].url + "/api/tags").json()["models"]}
    assert raw["solo:latest"]["upstreams"] == ["u3"]
    assert set(raw[SMOLLM]["upstreams"]) == {"u1", "u2", "u3"}
    assert raw[fleet["oa_model"]]["upstream"] == "oa"
    ids = {m.id for m in OpenAI(base_url=fleet["gw"].url + "/v1", api_key="x").models.list().data}
    assert {SMOLLM, "solo:latest", fleet["oa_model"]} <= ids


def test_a_model_only_one_upstream_has_is_routed_there(fleet: dict[str, Any]) -> None:
    for _ in range(3):
        r = _chat(fleet["gw"].url, "solo", [{"role": "user", "content": "Hi"}])
        assert r.status_code == 200 and r.headers["x-corral-upstream"] == "u3"
        assert r.json()["done"] and r.json()["message"]["content"]
    r = _chat(fleet["gw"].url, "no-such-model", [{"role": "user", "content": "Hi"}])
    assert r.status_code == 404 and "no-such-model" in r.json()["error"]


def test_ollama_client_chats_through_an_openai_compatible_upstream(fleet: dict[str, Any]) -> None:
    client = ollama.Client(host=fleet["gw"].url)
    messages = [{"role": "user", "content": "Say hello."}]
    reply = client.chat(model=fleet["oa_model"], messages=messages, options=OPTS)
    assert reply.done and reply.message.content and reply.eval_count and reply.eval_count <= 6
    chunks = list(client.chat(model=fleet["oa_model"], messages=messages, options=OPTS, stream=True))
    assert chunks[-1].done and "".join(c.message.content for c in chunks)
    r = _chat(fleet["gw"].url, fleet["oa_model"], messages)
    assert r.headers["x-corral-upstream"] == "oa"
    # OpenAI's own calls pass straight through to it.
    oai = OpenAI(base_url=fleet["gw"].url + "/v1", api_key="x", max_retries=0)
    done = oai.chat.completions.create(model=fleet["oa_model"], messages=messages, max_tokens=6)  # type: ignore[arg-type]
    assert done.choices[0].message.content


def test_the_turns_of_a_conversation_stay_on_one_upstream(fleet: dict[str, Any]) -> None:
    system = {"role": "system", "content": "You are a patient tutor. " + "Explain things step by step. " * 40}
    seen = []
    for conversation in range(3):
        messages = [system, {"role": "user", "content": f"Conversation {conversation}: what is a prime?"}]
        ups = []
        for turn in range(3):
            r = _chat(fleet["gw"].url, SMOLLM, messages)
            assert r.status_code == 200
            ups.append(r.headers["x-corral-upstream"])
            messages += [r.json()["message"], {"role": "user", "content": f"And then {turn}?"}]
        assert len(set(ups)) == 1, ups
        seen.append(ups[0])
    assert set(seen) <= {"u1", "u2", "u3"}


def test_model_management_goes_to_the_named_upstream_only(fleet: dict[str, Any]) -> None:
    r = httpx.post(fleet["gw"].url + "/api/copy?upstream=u2", json={"source": SMOLLM, "destination": "only-u2"})
    assert r.status_code == 200 and r.headers["x-corral-upstream"] == "u2"
    assert "only-u2:latest" in {m["model"] for m in httpx.get(fleet["u2"].url + "/api/tags").json()["models"]}
    assert "only-u2:latest" not in {m["model"] for m in httpx.get(fleet["u3"].url + "/api/tags").json()["models"]}
    r = httpx.request("DELETE", fleet["gw"].url + "/api/delete?upstream=u2", json={"model": "only-u2"})
    assert r.status_code == 200
    r = httpx.post(fleet["gw"].url + "/api/copy?upstream=nope", json={"source": SMOLLM, "destination": "x"})
    assert r.status_code == 400 and "nope" in r.json()["error"]


def _metric(url: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


@pytest.fixture
def small_fleet(tmp_path: Path) -> Iterator[Callable[[], dict[str, Any]]]:
    made: list[ServerProc] = []

    def make() -> dict[str, Any]:
        a = launch(tmp_path / "a", {"CORRAL_NUM_THREADS": "1"})
        b = launch(tmp_path / "b", {"CORRAL_NUM_THREADS": "1"})
        # No active health checks in the window of a test: failures are found by the requests themselves.
        config = write_fleet(
            tmp_path / "fleet.toml",
            [("a", a.url, "corral"), ("b", b.url, "corral")],
            routing="round-robin",
            health_interval=600.0,
            refresh_interval=600.0,
        )
        gw = launch_proxy("unused", tmp_path / "gw", "--fleet", str(config))
        made.extend([gw, a, b])
        return {"gw": gw, "a": a, "b": b}

    yield make
    for srv in made:
        srv.stop()


def test_failover_ejection_and_recovery(small_fleet: Callable[[], dict[str, Any]], tmp_path: Path) -> None:
    f = small_fleet()
    gw = f["gw"].url
    port_b = int(f["b"].url.rsplit(":", 1)[1])
    f["b"].kill()
    # Every request still succeeds: those routed to the dead upstream are retried once on the other.
    for _ in range(4):
        r = _chat(gw, SMOLLM, [{"role": "user", "content": "Hi"}])
        assert r.status_code == 200 and r.headers["x-corral-upstream"] == "a"
    assert _metric(gw, "corral_upstream_failovers_total", upstream="b") >= 1
    assert _metric(gw, "corral_upstream_healthy", upstream="b", state="open") == 0  # ejected
    # Back on its port: after the cool-down one request probes it (half-open), succeeds, and it is back.
    f["b"] = launch(tmp_path / "b", {"CORRAL_NUM_THREADS": "1"}, port=port_b)
    time.sleep(2.5)
    ups = [_chat(gw, SMOLLM, [{"role": "user", "content": "Hi"}]).headers["x-corral-upstream"] for _ in range(4)]
    assert "b" in ups, ups
    assert _metric(gw, "corral_upstream_healthy", upstream="b", state="closed") == 1
    f["b"].stop()


def test_an_upstream_dying_mid_stream_ends_the_stream_with_an_error(small_fleet: Callable[[], dict[str, Any]]) -> None:
    f = small_fleet()
    lines = []
    with httpx.stream(
        "POST",
        f["gw"].url + "/api/generate",
        timeout=60,
        json={"model": SMOLLM, "prompt": "Tell me a long story.", "options": {"num_predict": 4000}},
    ) as r:
        assert r.status_code == 200
        victim = f[r.headers["x-corral-upstream"]]
        for line in r.iter_lines():
            lines.append(json.loads(line))
            if len(lines) == 3:
                victim.kill()
    assert "error" in lines[-1] and not any(line.get("done") for line in lines)


def test_fleet_request_log_names_the_upstream_and_why(fleet: dict[str, Any]) -> None:
    _chat(fleet["gw"].url, "solo", [{"role": "user", "content": "Hi"}])
    deadline = time.monotonic() + 10
    while True:  # the log writer batches rows off the request path
        rows = httpx.get(fleet["gw"].url + "/api/admin/requests", params={"model": "solo"}).json()["requests"]
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert rows and all(row["upstream"] in ("u3:only", "u3:loaded", "u3:prefix", "u3:least-loaded") for row in rows)


def test_merged_listings_show_a_key_only_its_models(fleet: dict[str, Any], tmp_path: Path) -> None:
    config = write_fleet(
        tmp_path / "fleet.toml", [("u1", fleet["u1"].url, "corral"), ("u3", fleet["u3"].url, "corral")]
    )
    gw = launch_proxy("unused", tmp_path / "gw", "--fleet", str(config))
    try:
        store = KeyStore(open_database(gw.home / "corral.db"))
        _, narrow = store.create("narrow", models=["solo"])
        _, wide = store.create("wide")
        headers = {"Authorization": f"Bearer {narrow}"}
        deadline = time.monotonic() + 30  # until discovery has read both upstreams' catalogs
        while time.monotonic() < deadline:
            wide_tags = {
                m.model for m in ollama.Client(host=gw.url, headers={"Authorization": f"Bearer {wide}"}).list().models
            }
            if {SMOLLM, "solo:latest"} <= wide_tags:
                break
            time.sleep(0.2)
        assert {SMOLLM, "solo:latest"} <= wide_tags
        assert [m.model for m in ollama.Client(host=gw.url, headers=headers).list().models] == ["solo:latest"]
        oai = OpenAI(base_url=gw.url + "/v1", api_key=narrow, max_retries=0)
        assert [m.id for m in oai.models.list().data] == ["solo:latest"]
        loaded = {SMOLLM, "solo"}
        for model in loaded:  # both loaded upstream (through the wide key), so ps has both to hide one of
            body = {"model": model, "prompt": "Hi", "stream": False, "options": {"num_predict": 1}}
            wide_headers = {"Authorization": f"Bearer {wide}"}
            assert httpx.post(gw.url + "/api/generate", json=body, headers=wide_headers, timeout=120).is_success
        deadline = time.monotonic() + 30  # until the health check has read both upstreams' ps
        while time.monotonic() < deadline:
            wide_ps = httpx.get(gw.url + "/api/ps", headers=wide_headers, timeout=30).json()["models"]
            if {SMOLLM, "solo:latest"} <= {m["model"] for m in wide_ps}:
                break
            time.sleep(0.2)
        ps = httpx.get(gw.url + "/api/ps", headers=headers, timeout=30).json()["models"]
        assert [m["model"] for m in ps] == ["solo:latest"]
        with pytest.raises(openai.PermissionDeniedError):
            oai.chat.completions.create(model=SMOLLM, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    finally:
        gw.stop()
