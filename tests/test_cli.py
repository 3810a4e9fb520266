"""The real ``corral`` CLI against the session server, as a user runs it."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import ROOT, SMOLLM, ServerProc


def corral(
    server: ServerProc, *args: str, stdin: str | None = None, env: dict[str, str] | None = None, timeout: int = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "CORRAL_"))}
    full_env["CORRAL_HOST"] = server.url.removeprefix("http://")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        cwd=ROOT,
        env=full_env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_list_prints_ollama_columns(server: ServerProc) -> None:
    out = corral(server, "list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    row = next(line for line in lines if line.startswith(SMOLLM))
    assert "98 MB" in row


def test_run_with_prompt_streams_answer(server: ServerProc) -> None:
    # A copy of the model whose answers are bounded, so a rambling sample cannot outlast the timeout.
    r = httpx.post(
        f"{server.url}/api/create",
        json={"model": "smollm-brief", "from": SMOLLM, "stream": False, "parameters": {"num_predict": 32}},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    try:
        out = corral(server, "run", "smollm-brief", "Say hello in one word.")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip()
    finally:
        httpx.request("DELETE", f"{server.url}/api/delete", json={"model": "smollm-brief"}, timeout=60)


def test_run_interactive_until_bye(server: ServerProc) -> None:
    """Interactive mode needs a terminal: drive it through a pseudo-terminal."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "CORRAL_"))}
    env["CORRAL_HOST"] = server.url.removeprefix("http://")
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral", "run", SMOLLM],
        cwd=ROOT,
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    seen = b""

    def read_until(marker: bytes, count: int) -> None:
        nonlocal seen
        deadline = time.monotonic() + 180
        while seen.count(marker) < count and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    return

    read_until(b">>> ", 1)
    os.write(master, b"/set parameter num_predict 12\n")
    read_until(b">>> ", 2)
    assert b"Set parameter 'num_predict' to '12'" in seen
    # Greedy: at the default temperature SmolLM2 now and then answers with newlines only.
    os.write(master, b"/set parameter temperature 0\n")
    read_until(b">>> ", 3)
    assert b"Set parameter 'temperature' to '0'" in seen
    os.write(master, b"Hello there!\n")
    read_until(b">>> ", 4)
    os.write(master, b"/bye\n")
    assert proc.wait(timeout=30) == 0
    os.close(master)
    text = seen.decode(errors="replace")
    assert text.count(">>> ") >= 4
    reply = text.split(">>> ")[3].replace("Hello there!", "")
    assert reply.strip()


def test_ps_and_stop(server: ServerProc) -> None:
    # Load without generating: an unbounded answer at the default temperature sometimes runs for
    # minutes (it once outlasted the 120 s timeout), and generation is not what this test is about.
    r = httpx.post(f"{server.url}/api/generate", json={"model": SMOLLM, "keep_alive": "5m"}, timeout=120)
    assert r.status_code == 200 and r.json()["done_reason"] == "load"
    out = corral(server, "ps")
    assert out.returncode == 0 and SMOLLM in out.stdout and "CONTEXT" in out.stdout.splitlines()[0]
    assert corral(server, "stop", SMOLLM).returncode == 0
    assert SMOLLM not in corral(server, "ps").stdout


def test_ollama_host_is_honoured(server: ServerProc) -> None:
    env = {"OLLAMA_HOST": server.url.removeprefix("http://")}
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "CORRAL_"))}
    full_env.update(env)
    out = subprocess.run(
        [sys.executable, "-m", "corral", "list"],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0 and SMOLLM in out.stdout


def test_missing_model_error_and_exit_code(server: ServerProc) -> None:
    out = corral(server, "run", "does-not-exist", "hi")
    assert out.returncode == 1
    assert 'model "does-not-exist" not found' in out.stderr


def test_no_server_gives_clear_error(server: ServerProc) -> None:
    out = corral(server, "list", env={"CORRAL_HOST": "127.0.0.1:1"})
    assert out.returncode == 1 and "could not connect" in out.stderr


def test_create_from_modelfile(server: ServerProc, tmp_path: Path) -> None:
    gguf = next((server.home / "models" / "blobs").glob("sha256-*"), None)
    assert gguf is not None
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {SMOLLM}\nPARAMETER temperature 0.1\nPARAMETER stop <|im_end|>\nSYSTEM You are terse.\n")
    out = corral(server, "create", "terse", "-f", str(mf))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "success"
    shown = corral(server, "show", "terse", "--parameters")
    assert "temperature" in shown.stdout and "0.1" in shown.stdout
    assert corral(server, "show", "terse", "--system").stdout.strip() == "You are terse."
    assert corral(server, "rm", "terse").returncode == 0
    assert "terse" not in corral(server, "list").stdout


def test_create_bad_modelfiles(server: ServerProc, tmp_path: Path) -> None:
    broken = tmp_path / "Broken"
    broken.write_text(f"FROM {SMOLLM}\nPARAMETER temperature 0.1\nFORM oops\n")
    out = corral(server, "create", "broken", "-f", str(broken))
    assert out.returncode == 1 and "line 3" in out.stderr
    missing = tmp_path / "Missing"
    missing.write_text("FROM ./does-not-exist.gguf\n")
    out = corral(server, "create", "missing", "-f", str(missing))
    assert out.returncode == 1 and "does-not-exist.gguf" in out.stderr
    assert "broken" not in corral(server, "list").stdout


def test_create_from_safetensors_folder_with_quantize(server: ServerProc, tmp_path: Path) -> None:
    from corral.store.starters import minilm_folder

    folder = minilm_folder()
    assert folder is not None
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {folder}\n")
    out = corral(server, "create", "minilm-cli", "-f", str(mf), "-q", "q8_0", timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "converting model" in lines and any("quantizing" in line for line in lines) and lines[-1] == "success"
    shown = corral(server, "show", "minilm-cli")
    assert "bert" in shown.stdout and "Q8_0" in shown.stdout and "embedding" in shown.stdout
