"""Two gateway replicas sharing one PostgreSQL, as behind a load balancer: keys, the request log and rate limits.

Two real ``corral proxy --db postgresql://...`` processes, each with its own
``CORRAL_HOME``, forward to the session's Corral. Keys are made and revoked
with ``corral keys ... --db`` (no server involved); each replica must honour
them at once, write its rows into the one log that the other's admin API
reads, and count requests against the same rpm window.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ROOT, SMOLLM, ServerProc
from tests.test_proxy import launch_proxy


def keys_cli(home: Path, db: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "CORRAL_"))}
    env["CORRAL_HOME"] = str(home)
    out = subprocess.run(
        [sys.executable, "-m", "corral", "keys", *args, "--db", db],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def chat(url: str, key: str, agent: str) -> httpx.Response:
    return httpx.post(
        url + "/api/chat",
        headers={"Authorization": f"Bearer {key}", "User-Agent": agent},
        json={
            "model": SMOLLM,
            "messages": [{"role": "user", "content": "Hi"}],
            "stream": False,
            "options": {"num_predict": 2, "temperature": 0},
        },
        timeout=120,
    )


def logged_agents(url: str, admin: str) -> set[Any]:
    r = httpx.get(
        url + "/api/admin/requests", params={"limit": 100}, headers={"Authorization": f"Bearer {admin}"}, timeout=30
    )
    assert r.status_code == 200, r.text
    return {row["user_agent"] for row in r.json()["requests"]}


def test_two_proxies_share_keys_log_and_rate_limits(server: ServerProc, pg_url: str, tmp_path: Path) -> None:
    admin = keys_cli(tmp_path / "cli", pg_url, "create", "root", "--admin")
    limited = keys_cli(tmp_path / "cli", pg_url, "create", "limited", "--rpm", "2")
    a = launch_proxy(server.url, tmp_path / "a", "--db", pg_url)
    b = launch_proxy(server.url, tmp_path / "b", "--db", pg_url)
    try:
        # a key created through the CLI works on both replicas; a made-up one on neither
        first = chat(a.url, limited, "replica-a")
        assert first.status_code == 200, first.text
        assert first.json()["message"]["content"]
        second = chat(b.url, limited, "replica-b")
        assert second.status_code == 200, second.text
        assert httpx.get(b.url + "/api/tags", headers={"Authorization": "Bearer corral-nope"}).status_code == 401

        # rpm=2 spans both: the first request went through A, the second through B, so the third fails on either
        for replica in (a, b):
            held = chat(replica.url, limited, "held")
            assert held.status_code == 429, held.text
            assert 1 <= int(held.headers["retry-after"]) <= 60
            assert "rate limit" in held.json()["error"]

        # one log: each replica's admin API lists the rows both wrote
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            seen = [logged_agents(replica.url, admin) for replica in (a, b)]
            if all({"replica-a", "replica-b"} <= agents for agents in seen):
                break
            time.sleep(0.2)
        assert all({"replica-a", "replica-b", "held"} <= agents for agents in seen), seen

        # a revoke through the CLI closes the key on both at once
        keys_cli(tmp_path / "cli", pg_url, "revoke", "limited")
        for replica in (a, b):
            r = httpx.get(replica.url + "/api/tags", headers={"Authorization": f"Bearer {limited}"})
            assert r.status_code == 401, r.text
        assert not (tmp_path / "a" / "corral.db").exists() and not (tmp_path / "b" / "corral.db").exists()
    finally:
        a.stop()
        b.stop()


def test_serve_and_proxy_refuse_to_start_when_the_database_is_unreachable(tmp_path: Path) -> None:
    """``--db`` reaches both servers' startup: an unreachable PostgreSQL is one clear error line, exit 1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "CORRAL_"))}
    env["CORRAL_HOME"] = str(tmp_path)
    bad = "postgresql://corral:hunter2@127.0.0.1:1/corral"
    for command in (["serve", "--port", "1"], ["proxy", "--port", "1"]):
        out = subprocess.run(
            [sys.executable, "-m", "corral", *command, "--db", bad],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 1, out.stderr
        assert "ERROR corral" in out.stderr and "127.0.0.1" in out.stderr and "Traceback" not in out.stderr
        assert "hunter2" not in out.stderr
    assert not (tmp_path / "corral.db").exists()
