"""``corral keys``, ``corral logs`` and ``corral stats`` as an operator runs them: real processes, no server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corral.gateway.db import open_database
from corral.gateway.keys import KeyStore
from corral.gateway.requestlog import RequestLog, RequestRecord

ROOT = Path(__file__).resolve().parent.parent


def corral(home: Path, *args: str, timeout: int = 60, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "CORRAL_"))}
    env["CORRAL_HOME"] = str(home)
    env.update(extra_env)
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        check=False,
    )


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    out = corral(tmp_path, "keys", "create", "ci-bot", "--models", "smollm2:135m,all-minilm", "--rpm", "60")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    secret = lines[-1]
    assert secret.startswith("corral-") and " " not in secret and len(secret) >= 50
    assert "ci-bot" in lines[0] and secret not in "\n".join(lines[:-1])
    assert (tmp_path / "corral.db").is_file()
    # a process that opened the database before the CLI ran (a server) accepts the key
    store = KeyStore(open_database(tmp_path / "corral.db"))
    found = store.verify(secret)
    assert found is not None and found.name == "ci-bot" and found.rpm == 60

    admin = corral(tmp_path, "keys", "create", "root", "--admin")
    assert admin.returncode == 0, admin.stderr
    listed = corral(tmp_path, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.strip().splitlines()
    assert header.split() == ["NAME", "SCOPE", "PREFIX", "CREATED", "LAST", "USED", "MODELS", "RPM", "TPM"]
    ci_row = next(r for r in rows if r.startswith("ci-bot")).split()
    assert ci_row[1:3] == ["user", secret[:15]]
    assert "smollm2:135m,all-minilm" in ci_row and "60" in ci_row
    assert next(r for r in rows if r.startswith("root")).split()[1] == "admin"
    assert secret not in listed.stdout and secret[15:] not in listed.stdout

    dup = corral(tmp_path, "keys", "create", "ci-bot")
    assert dup.returncode == 1 and "already exists" in dup.stderr and dup.stdout == ""

    revoked = corral(tmp_path, "keys", "revoke", "ci-bot")
    assert revoked.returncode == 0, revoked.stderr
    assert store.verify(secret) is None
    unknown = corral(tmp_path, "keys", "revoke", "ci-bot")
    assert unknown.returncode == 1 and 'no active key named "ci-bot"' in unknown.stderr
    after = corral(tmp_path, "keys", "list")
    assert "ci-bot" not in after.stdout and "root" in after.stdout


def test_keys_create_rejects_a_bad_name(tmp_path: Path) -> None:
    out = corral(tmp_path, "keys", "create", "bad name")
    assert out.returncode == 1 and "invalid key name" in out.stderr


@pytest.fixture
def logged(tmp_path: Path) -> Path:
    now = time.time()
    log = RequestLog(open_database(tmp_path / "corral.db"))
    log.db.migrate()
    log.start()
    for i in range(10):
        log.submit(
            RequestRecord(
                id=f"ok{i}",
                ts=now - 100 + i,
                key_name="alice",
                method="POST",
                path="/api/chat",
                route="/api/chat",
                model="smollm2:135m",
                status=200,
                total_ms=100.0 * (i + 1),
                ttft_ms=20.0,
                prompt_tokens=5,
                output_tokens=7,
            )
        )
    log.submit(
        RequestRecord(
            id="boom",
            ts=now - 5,
            key_name="bob",
            method="POST",
            path="/api/generate",
            route="/api/generate",
            model="smollm2:135m",
            status=500,
            error="engine crashed",
            total_ms=60.0,
        )
    )
    log.submit(RequestRecord(id="old", ts=now - 3 * 86400, method="GET", path="/api/tags", status=200))
    log.record_beacon({"event": "chat_turn", "model": "smollm2:135m"}, "alice")
    log.close()
    return tmp_path


def test_logs_table_and_filters(logged: Path) -> None:
    out = corral(logged, "logs", "-n", "3")
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.strip().splitlines()
    assert header.split()[:4] == ["TIME", "KEY", "METHOD", "PATH"]
    assert len(rows) == 3
    assert "engine crashed" in rows[-1] and "500" in rows[-1].split()  # newest last
    failed = corral(logged, "logs", "--status", "5xx").stdout.splitlines()[1:]
    assert len(failed) == 1 and "500" in failed[0].split() and "/api/generate" in failed[0]
    recent = corral(logged, "logs", "--since", "1h", "--key", "alice", "--json")
    rows_json = [json.loads(line) for line in recent.stdout.splitlines()]
    assert [r["id"] for r in rows_json] == [f"ok{i}" for i in range(10)]
    assert rows_json[-1]["total_ms"] == 1000.0 and rows_json[-1]["stream"] is False
    bad = corral(logged, "logs", "--status", "teapot")
    assert bad.returncode == 1 and "invalid status filter" in bad.stderr


def test_logs_follow_prints_new_rows(logged: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "CORRAL_"))}
    env["CORRAL_HOME"] = str(logged)
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral", "logs", "-f", "--json", "-n", "1", "--follow-seconds", "6"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["id"] == "boom"  # the newest existing row, then it follows
        log = RequestLog(open_database(logged / "corral.db"))
        log.submit(RequestRecord(id="live1", ts=time.time(), method="POST", path="/api/chat", status=200))
        log.submit(RequestRecord(id="live2", ts=time.time(), method="POST", path="/api/chat", status=404))
        log.close()
        followed = [json.loads(proc.stdout.readline())["id"] for _ in range(2)]
        assert followed == ["live1", "live2"]
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stats(logged: Path) -> None:
    out = corral(logged, "stats")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["MODEL", "TURNS", "OK", "AVG", "P50", "P95", "PROMPT", "Σ", "REPLY", "Σ"]
    # ten OK turns of 100..1000 ms and one 60 ms failure: nearest-rank p50 = 500 ms, p95 = 1000 ms
    assert lines[1].split() == ["smollm2:135m", "11", "10", "505ms", "500ms", "1.00s", "50", "70"]
    status_at = lines.index(next(line for line in lines if line.startswith("STATUS")))
    assert [line.split() for line in lines[status_at + 1 : status_at + 3]] == [["200", "10"], ["500", "1"]]
    assert any(line.startswith("Beacons: 1") for line in lines)
    week = json.loads(corral(logged, "stats", "--since", "7d", "--json").stdout)
    assert week["statuses"] == {"200": 11, "500": 1}
    assert week["models"][0]["p95_ms"] == 1000.0


def test_keys_logs_and_stats_on_postgres(tmp_path: Path, pg_url: str) -> None:
    """``--db URL`` and ``CORRAL_DB`` point every gateway command at PostgreSQL; nothing goes to CORRAL_HOME."""
    created = corral(tmp_path, "keys", "create", "ci", "--rpm", "5", "--db", pg_url)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip().splitlines()[-1]
    found = KeyStore(open_database(pg_url)).verify(secret)
    assert found is not None and found.name == "ci" and found.rpm == 5
    listed = corral(tmp_path, "keys", "list", CORRAL_DB=pg_url)
    assert listed.returncode == 0 and listed.stdout.splitlines()[1].split()[:2] == ["ci", "user"]
    log = RequestLog(open_database(pg_url))
    log.submit(
        RequestRecord(
            id="pg1",
            ts=time.time() - 5,
            key_name="ci",
            method="POST",
            path="/api/chat",
            model="smollm2:135m",
            status=200,
            total_ms=250.0,
            prompt_tokens=3,
            output_tokens=4,
        )
    )
    log.close()
    rows = corral(tmp_path, "logs", "--json", "--db", pg_url)
    assert [json.loads(line)["id"] for line in rows.stdout.splitlines()] == ["pg1"], rows.stderr
    stats = json.loads(corral(tmp_path, "stats", "--json", CORRAL_DB=pg_url).stdout)
    assert stats["statuses"] == {"200": 1} and stats["models"][0]["p95_ms"] == 250.0
    assert corral(tmp_path, "keys", "revoke", "ci", "--db", pg_url).returncode == 0
    assert KeyStore(open_database(pg_url)).verify(secret) is None
    assert not (tmp_path / "corral.db").exists()
    down = corral(tmp_path, "keys", "list", "--db", "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    assert down.returncode == 1 and down.stderr.startswith("Error: ") and "Traceback" not in down.stderr
