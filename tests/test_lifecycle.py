"""A real ``corral serve`` process under SIGTERM, kill -9 and huge prompts, watched from /proc.

Each test starts its own server (on the session server's store where it
needs the models) because it signals, kills or measures that process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, SMOLLM, ServerProc, free_port

QUICK = {"temperature": 0, "num_predict": 2}
ENDLESS = {"type": "array", "items": {"type": "integer"}, "minItems": 100000}  # generation that does not end


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS


def still_answers(url: str) -> None:
    r = httpx.post(
        url + "/api/generate", timeout=120, json={"model": SMOLLM, "prompt": "Hi", "stream": False, "options": QUICK}
    )
    assert r.status_code == 200 and r.json()["done"] is True


@pytest.fixture
def shared_env(server: ServerProc) -> dict[str, str]:
    return {"OLLAMA_MODELS": str(server.home / "models"), "CORRAL_STARTER_MODELS": "0"}


# ---- SIGTERM -------------------------------------------------------------------------------------------------


def test_sigterm_ends_open_streams_within_the_grace_with_a_last_error_line_and_exits_0(
    start_server: Callable[..., ServerProc], shared_env: dict[str, str]
) -> None:
    srv = start_server({**shared_env, "OLLAMA_NUM_PARALLEL": "2", "CORRAL_SHUTDOWN_GRACE": "2"})
    still_answers(srv.url)
    bodies: dict[str, list[str]] = {"ollama": [], "openai": []}
    streaming = threading.Barrier(3)

    def stream(kind: str) -> None:
        if kind == "ollama":
            request = (
                "/api/generate",
                {"model": SMOLLM, "prompt": "Count.", "format": ENDLESS, "options": {"num_predict": 100000}},
            )
        else:
            request = (
                "/v1/chat/completions",
                {
                    "model": SMOLLM,
                    "stream": True,
                    "max_tokens": 100000,
                    "messages": [{"role": "user", "content": "Count."}],
                    "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": ENDLESS}},
                },
            )
        with httpx.stream("POST", srv.url + request[0], json=request[1], timeout=60) as r:
            for i, line in enumerate(r.iter_lines()):
                if line:
                    bodies[kind].append(line)
                if i == 3:
                    streaming.wait()

    threads = [threading.Thread(target=stream, args=(kind,)) for kind in bodies]
    for t in threads:
        t.start()
    streaming.wait(timeout=60)
    signalled = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(httpx.ConnectError):  # no longer accepting
        httpx.get(srv.url + "/api/version", timeout=5)
    for t in threads:
        t.join(timeout=30)
    ended = time.monotonic() - signalled
    assert srv.proc.wait(timeout=30) == 0
    assert 2 <= ended < 8  # the 2 s grace, then the streams are ended, not left running
    assert json.loads(bodies["ollama"][-1]) == {"error": "server shutting down"}
    assert json.loads(bodies["ollama"][-2])["done"] is False
    last = json.loads(bodies["openai"][-1].removeprefix("data: "))
    assert last["error"]["message"] == "server shutting down"
    log = srv.log_text()
    assert "SIGTERM: shutting down" in log and "Traceback" not in log


def test_sigterm_when_idle_exits_0_at_once(start_server: Callable[..., ServerProc], tmp_path: Path) -> None:
    srv = start_server({"CORRAL_STARTER_MODELS": "0"}, home=tmp_path / "idle")
    started = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(timeout=20) == 0
    assert time.monotonic() - started < 5


def test_a_port_in_use_exits_3(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "CORRAL_"))}
    env.update(
        {"CORRAL_HOME": str(tmp_path / "busy"), "CORRAL_HOST": f"127.0.0.1:{port}", "CORRAL_STARTER_MODELS": "0"}
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        out = subprocess.run(
            [sys.executable, "-m", "corral", "serve"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert out.returncode == 3, out.stderr[-2000:]
    assert "address already in use" in out.stderr


# ---- kill -9 leftovers -------------------------------------------------------------------------------------------


def test_leftovers_of_a_kill_9_are_removed_at_the_next_start_and_a_recent_partial_pull_is_kept(
    start_server: Callable[..., ServerProc], tmp_path: Path
) -> None:
    home = tmp_path / "crashy"
    env = {"CORRAL_STARTER_MODELS": "0"}
    srv = start_server(env, home=home)
    models = home / "models"
    blobs = models / "blobs"
    # An upload cut off by the crash: a blob POST whose body never ends, and a registry upload session.
    host, port = srv.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        f"POST /api/blobs/sha256:{'ab' * 32} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n".encode()
        + b"x" * 70000
    )
    r = httpx.post(srv.url + "/v2/library/thing/blobs/uploads/", timeout=10)
    assert r.status_code == 202
    httpx.patch(r.headers["location"], content=b"y" * 1000, timeout=10)
    deadline = time.monotonic() + 10
    while not list(blobs.glob(".partial-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    # What an interrupted create and a pull leave: work folders, a manifest temp file, partial pulls.
    (models / "corral-convert-abc123" / "src").mkdir(parents=True)
    (models / "corral-convert-abc123" / "src" / "model.safetensors").write_bytes(b"z" * 1000)
    (models / "corral-quant-def456").mkdir()
    (models / "manifests" / "registry.ollama.ai" / "library" / "x").mkdir(parents=True)
    (models / "manifests" / "registry.ollama.ai" / "library" / "x" / ".tmp-123").write_bytes(b"{}")
    fresh = blobs / ("partial-sha256-" + "1" * 64)
    fresh.write_bytes(b"p" * 5000)
    stale = blobs / ("partial-sha256-" + "2" * 64)
    stale.write_bytes(b"q" * 5000)
    day_and_more = time.time() - 25 * 3600
    os.utime(stale, (day_and_more, day_and_more))

    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(timeout=10)
    sock.close()
    leftovers = sorted(p.name for p in blobs.iterdir())
    assert any(n.startswith(".partial-") for n in leftovers) and any(n.startswith(".upload-") for n in leftovers)

    again = start_server(env, home=home, port=free_port())
    assert httpx.get(again.url + "/api/tags", timeout=10).json() == {"models": []}
    assert sorted(p.name for p in blobs.iterdir()) == [fresh.name]  # only the partial pull a pull can resume
    assert sorted(p.name for p in models.iterdir()) == ["blobs", "manifests"]
    assert not list((models / "manifests").rglob(".tmp-*"))
    assert "removed leftover blobs/" in again.log_text()
    # nothing accumulates: kill it again and start once more
    again.proc.send_signal(signal.SIGKILL)
    again.proc.wait(timeout=10)
    third = start_server(env, home=home, port=free_port())
    assert sorted(p.name for p in blobs.iterdir()) == [fresh.name]
    assert httpx.get(third.url + "/api/version", timeout=10).status_code == 200


# ---- huge prompts and context sizes, with memory read from /proc ----------------------------------------------------


def test_a_50_mb_prompt_is_truncated_to_num_ctx_with_bounded_memory_given_back_afterwards(
    start_server: Callable[..., ServerProc], shared_env: dict[str, str]
) -> None:
    # A context of 512 keeps the prompt evaluation of what is kept short on a shared CPU.
    srv = start_server(
        {**shared_env, "OLLAMA_NUM_PARALLEL": "1", "CORRAL_MAX_BODY": "64MiB", "OLLAMA_CONTEXT_LENGTH": "512"}
    )
    pid = srv.proc.pid
    still_answers(srv.url)
    still_answers(srv.url)
    baseline = status_kib(pid, "VmRSS")
    reset_peak(pid)
    prompt = "The quick brown fox jumps over the lazy dog. " * (50_000_000 // 45)
    started = time.monotonic()
    r = httpx.post(
        srv.url + "/api/generate",
        timeout=120,
        json={"model": SMOLLM, "prompt": prompt, "stream": False, "options": QUICK},
    )
    elapsed = time.monotonic() - started
    del prompt
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["done"] and 0 < answer["prompt_eval_count"] < 512
    assert len(answer["context"]) < 512 + 8
    peak = status_kib(pid, "VmHWM") - baseline
    time.sleep(1)
    after = status_kib(pid, "VmRSS") - baseline
    assert elapsed < 60  # it was a 500 after 61 s
    assert peak < 400 * 1024, f"peak grew by {peak // 1024} MiB for a 50 MB prompt"
    assert after < 64 * 1024, f"{after // 1024} MiB still held after the request"
    assert "truncating input prompt" in srv.log_text()
    still_answers(srv.url)


def test_num_ctx_far_above_the_trained_context_is_clamped_to_it(
    start_server: Callable[..., ServerProc], shared_env: dict[str, str]
) -> None:
    srv = start_server({**shared_env, "OLLAMA_NUM_PARALLEL": "1"})
    still_answers(srv.url)
    baseline = status_kib(srv.proc.pid, "VmRSS")
    r = httpx.post(
        srv.url + "/api/generate",
        timeout=120,
        json={"model": SMOLLM, "prompt": "Hi", "stream": False, "options": {**QUICK, "num_ctx": 10**9}},
    )
    assert r.status_code == 200 and r.json()["done"]
    [running] = httpx.get(srv.url + "/api/ps", timeout=10).json()["models"]
    assert running["context_length"] == 8192  # SmolLM2's trained context
    assert status_kib(srv.proc.pid, "VmRSS") - baseline < 400 * 1024  # an 8k KV cache, not a 10**9 one
    assert "requested context size too large for model" in srv.log_text()
    still_answers(srv.url)
