"""API keys on real servers: every route's access, key lifecycle, allowlists, rate limits, the public-bind refusal.

Keys are made the way an operator makes them (``corral keys`` in a separate
process, or the same ``KeyStore`` on the server's database file) while the
server runs; the server must see them without a restart. Requests go through
the official ``ollama`` and ``openai`` clients where those have something to
say (their exception classes), and through httpx where the test needs the raw
status and headers.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from starlette.routing import Route

from corral.gateway.db import open_database
from corral.gateway.keys import KeyStore
from corral.server.app import create_app
from corral.server.errors import route_scope
from corral.settings import Settings
from tests.conftest import ROOT, SMOLLM, ServerProc, free_port, launch

OPTS = {"temperature": 0, "num_predict": 4}

# The policy, written out: any route not named here must be a user route.
OPEN = {
    ("/", "GET"),
    ("/", "HEAD"),
    ("/api/version", "GET"),
    ("/api/version", "HEAD"),
    # the API description and the playground page (a browser cannot send a key for a page or a script)
    ("/api/openapi.json", "GET"),
    ("/api/openapi.json", "HEAD"),
    ("/playground", "GET"),
    ("/playground", "HEAD"),
    ("/playground/{path:path}", "GET"),
    ("/playground/{path:path}", "HEAD"),
}
ADMIN_PATHS = {"/api/create", "/api/copy", "/api/delete", "/api/blobs/{digest}", "/api/pull", "/api/push", "/metrics"}
V2_READS = {"/v2/", "/v2", "/v2/{namespace}/{model}/manifests/{reference}", "/v2/{namespace}/{model}/blobs/{digest}"}


def expected_scope(path: str, method: str) -> str:
    if (path, method) in OPEN:
        return "open"
    if path in ADMIN_PATHS:
        return "admin"
    if path.startswith("/v2"):  # Corral's own registry: reads are a user's pull, writes an admin's push
        return "user" if path in V2_READS and method in ("GET", "HEAD") else "admin"
    return "user"


PARAMS = {
    "digest": "sha256:" + "0" * 64,
    "namespace": "library",
    "model": "smollm2",
    "reference": "latest",
    "upload_id": "no-such-upload",
    "path": "nothing",
    "response_id": "resp_nothing",
}


def concrete(route: Route) -> str:
    path = route.path
    for name in route.param_convertors:
        path = re.sub(r"\{" + name + r"(:[a-z]+)?\}", PARAMS[name], path)
    return path


def app_routes(tmp_path: Path) -> list[tuple[Route, str]]:
    """(route, method) for every route of the real app, as ``corral serve`` builds it."""
    app = create_app(Settings(home=tmp_path, models_dir=tmp_path / "models"), engine=object())  # type: ignore[arg-type]
    out = []
    for route in app.routes:
        assert isinstance(route, Route), f"unexpected route kind {route!r}: give it a scope and cover it here"
        assert route.methods, route.path
        out += [(route, method) for method in sorted(route.methods)]
    return out


def new_key(home: Path, name: str, **kw: object) -> str:
    db = open_database(home / "corral.db")
    db.migrate()
    return KeyStore(db).create(name, **kw)[1]  # type: ignore[arg-type]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keyed(server: ServerProc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProc, str, str]]:
    """A server whose database has an admin key and a user key; the store is the session server's."""
    home = tmp_path_factory.mktemp("keyed-home")
    admin_key, user_key = new_key(home, "root", admin=True), new_key(home, "alice")
    srv = launch(home, {"OLLAMA_MODELS": str(server.home / "models"), "CORRAL_STARTER_MODELS": "0"})
    yield srv, admin_key, user_key
    srv.stop()


# ---- every route -----------------------------------------------------------------------------


def test_every_route_declares_the_scope_the_policy_gives_it(tmp_path: Path) -> None:
    routes = app_routes(tmp_path)
    assert len(routes) > 30
    wrong = [
        (r.path, m, route_scope(r), expected_scope(r.path, m))
        for r, m in routes
        if route_scope(r) != expected_scope(r.path, m)
    ]
    assert wrong == []


def test_every_route_enforces_its_scope(keyed: tuple[ServerProc, str, str], tmp_path: Path) -> None:
    srv, admin_key, user_key = keyed
    seen = []
    with httpx.Client(base_url=srv.url, timeout=60) as http:
        for route, method in app_routes(tmp_path):
            path, scope = concrete(route), route_scope(route)
            body = b"{}" if method in ("POST", "PUT", "PATCH", "DELETE") else None

            def call(
                headers: dict[str, str], path: str = path, method: str = method, body: bytes | None = body
            ) -> httpx.Response:
                return http.request(method, path, content=body, headers=headers)

            anonymous, as_user, as_admin = call({}), call(bearer(user_key)), call({"x-api-key": admin_key})
            where = f"{method} {path} ({scope})"
            if scope == "open":
                assert anonymous.status_code not in (401, 403), where
                assert as_user.status_code not in (401, 403), where
            else:
                assert anonymous.status_code == 401, where
                if method != "HEAD":  # the error is in the route's own dialect
                    err = anonymous.json()
                    if path.startswith("/v1"):
                        assert err["error"]["type"] == "authentication_error", where
                    elif path.startswith("/v2"):
                        assert err["errors"][0]["code"] == "UNAUTHORIZED", where
                    else:
                        assert "missing API key" in err["error"], where
                if scope == "admin":
                    assert as_user.status_code == 403, where
                else:
                    assert as_user.status_code not in (401, 403), where
            assert as_admin.status_code not in (401, 403), where
            seen.append((route.path, method))
        # a path no route claims needs a key too; a CORS preflight never does
        assert http.get("/api/nothing").status_code == 401
        assert http.get("/api/nothing", headers=bearer(user_key)).status_code == 404
        preflight = http.options(
            "/api/chat",
            headers={
                "Origin": "http://localhost:3000",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 200
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert len(seen) == len(set(seen)) > 30


# ---- key lifecycle -------------------------------------------------------------------------------


def corral_cli(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "CORRAL_"))}
    full["CORRAL_HOME"] = str(home)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_key_lifecycle_through_the_cli_on_a_running_server(
    server: ServerProc, start_server: Callable[..., ServerProc]
) -> None:
    srv = start_server({"OLLAMA_MODELS": str(server.home / "models"), "CORRAL_STARTER_MODELS": "0"})
    home, url = srv.home, srv.url
    assert httpx.get(url + "/api/tags").status_code == 200  # no key yet, loopback: open, as Ollama
    assert httpx.get(url + "/api/tags", headers=bearer("corral-whatever")).status_code == 200

    made = corral_cli(home, "keys", "create", "ci-bot")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    r = httpx.get(url + "/api/tags")  # the server saw the new key without a restart
    assert r.status_code == 401 and "missing API key" in r.json()["error"]
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(url + "/api/version").status_code == 200 and httpx.get(url + "/").status_code == 200
    assert httpx.get(url + "/api/tags", headers=bearer(key)).status_code == 200
    assert httpx.get(url + "/api/tags", headers={"x-api-key": key}).status_code == 200  # Anthropic SDK style
    bad = httpx.get(url + "/api/tags", headers=bearer(key[:-2] + "xx"))
    assert bad.status_code == 401 and bad.json() == {"error": "invalid API key"}
    assert httpx.post(url + "/api/copy", json={}, headers=bearer(key)).status_code == 403
    store = KeyStore(open_database(home / "corral.db"))
    deadline = time.monotonic() + 10
    while (found := store.get("ci-bot")) is not None and found.last_used_at is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert found is not None and found.last_used_at is not None  # `corral keys list` shows when it was used

    # the CLI's own client sends CORRAL_API_KEY (or OLLAMA_API_KEY) as a Bearer token
    cli_env = {"CORRAL_HOST": url.removeprefix("http://")}
    denied = corral_cli(home, "list", env=cli_env)
    assert denied.returncode == 1 and "missing API key" in denied.stderr
    for var in ("CORRAL_API_KEY", "OLLAMA_API_KEY"):
        listed = corral_cli(home, "list", env={**cli_env, var: key})
        assert listed.returncode == 0 and SMOLLM in listed.stdout, listed.stderr

    assert corral_cli(home, "keys", "create", "keeper").returncode == 0
    assert corral_cli(home, "keys", "revoke", "ci-bot").returncode == 0
    gone = httpx.get(url + "/api/tags", headers=bearer(key))  # revoked, effective at once
    assert gone.status_code == 401 and gone.json() == {"error": "invalid API key"}
    assert "ci-bot" not in corral_cli(home, "keys", "list").stdout
    assert corral_cli(home, "keys", "revoke", "keeper").returncode == 0
    assert httpx.get(url + "/api/tags").status_code == 200  # no key left, loopback: open again, as Ollama
    # no key ever reaches the server's log or its database file in the clear
    time.sleep(0.5)
    assert key not in srv.log_text()
    assert key.encode() not in (home / "corral.db").read_bytes()


def test_official_clients_raise_their_own_errors_for_401_and_403(keyed: tuple[ServerProc, str, str]) -> None:
    srv, _, user_key = keyed
    with pytest.raises(ollama.ResponseError) as no_key:
        ollama.Client(host=srv.url).list()
    assert no_key.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=srv.url + "/v1", api_key="corral-not-a-real-key-at-all", max_retries=0).models.list()
    with pytest.raises(ollama.ResponseError) as forbidden:
        ollama.Client(host=srv.url, headers=bearer(user_key)).delete("nothing")
    assert forbidden.value.status_code == 403 and "admin key" in forbidden.value.error


# ---- allowlists and limits -------------------------------------------------------------------------


def test_model_allowlist_answers_403_in_each_dialect(keyed: tuple[ServerProc, str, str]) -> None:
    srv, admin, _ = keyed
    key = new_key(srv.home, "embed-only", models=["all-minilm"])
    client = ollama.Client(host=srv.url, headers=bearer(key))
    with pytest.raises(ollama.ResponseError) as exc:
        client.generate(model=SMOLLM, prompt="hi", options=OPTS)
    assert exc.value.status_code == 403 and 'may not use model "smollm2:135m"' in exc.value.error
    with pytest.raises(ollama.ResponseError) as exc:
        client.show(SMOLLM)
    assert exc.value.status_code == 403
    oai = openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        oai.chat.completions.create(model=SMOLLM, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    with pytest.raises(openai.PermissionDeniedError):
        oai.models.retrieve(SMOLLM)  # the model named in the path
    # the allowed model works, with or without its tag, and the body reached the endpoint intact
    assert client.embed(model="all-minilm:latest", input="hello").embeddings
    assert oai.embeddings.create(model="all-minilm", input=["hello"]).data[0].embedding
    # the listings show the key only its models; a key without an allowlist sees them all
    assert [m.model for m in client.list().models] == ["all-minilm:latest"]
    assert [m.id for m in oai.models.list().data] == ["all-minilm:latest"]
    assert [m.model for m in client.ps().models] == ["all-minilm:latest"]  # smollm2 may be loaded too: hidden
    everyone = {m.model for m in ollama.Client(host=srv.url, headers=bearer(admin)).list().models}
    assert {"all-minilm:latest", SMOLLM} <= everyone


def test_requests_per_minute_answers_429_with_retry_after(keyed: tuple[ServerProc, str, str]) -> None:
    srv, _, _ = keyed
    key = new_key(srv.home, "slow-bot", rpm=2)
    client = ollama.Client(host=srv.url, headers=bearer(key))
    client.list()
    client.ps()
    with pytest.raises(ollama.ResponseError) as exc:
        client.list()
    assert exc.value.status_code == 429 and "rate limit" in exc.value.error
    r = httpx.get(srv.url + "/v1/models", headers=bearer(key))
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
    assert r.json()["error"]["type"] == "rate_limit_error"
    with pytest.raises(openai.RateLimitError) as oai_exc:
        openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0).models.list()
    assert 1 <= int(oai_exc.value.response.headers["retry-after"]) <= 60


def test_tokens_per_minute_count_prompt_and_output(keyed: tuple[ServerProc, str, str]) -> None:
    srv, _, _ = keyed
    key = new_key(srv.home, "token-bot", tpm=10)
    client = ollama.Client(host=srv.url, headers=bearer(key))
    first = client.chat(model=SMOLLM, messages=[{"role": "user", "content": "Hello there"}], options=OPTS)
    assert (first.prompt_eval_count or 0) + (first.eval_count or 0) > 10
    with pytest.raises(ollama.ResponseError) as exc:
        client.chat(model=SMOLLM, messages=[{"role": "user", "content": "Again"}], options=OPTS)
    assert exc.value.status_code == 429
    oai = openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(model=SMOLLM, messages=[{"role": "user", "content": "hi"}], max_tokens=4)


# ---- the public-bind refusal ----------------------------------------------------------------------------


def serve(home: Path, *args: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "CORRAL_"))}
    env.update({"CORRAL_HOME": str(home), "CORRAL_HOST": f"0.0.0.0:{port}", "CORRAL_STARTER_MODELS": "0"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral", "serve", *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return proc, port


def test_public_bind_without_keys_refuses_to_start(tmp_path: Path) -> None:
    proc, _ = serve(tmp_path)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "corral keys create NAME --admin" in out and "--no-auth" in out


def test_public_bind_starts_with_no_auth_and_serve_flags(tmp_path: Path) -> None:
    proc, port = serve(tmp_path, "--no-auth", "--origins", "https://play.example", "--log-retention", "7d")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(
                    f"http://127.0.0.1:{port}/api/tags", timeout=1, headers={"Origin": "https://play.example"}
                )
            except httpx.HTTPError:
                time.sleep(0.3)
                continue
            assert r.status_code == 200  # open on purpose, with no key
            assert r.headers["access-control-allow-origin"] == "https://play.example"
            assert "Server-Timing" in r.headers["access-control-expose-headers"]
            # --no-auth lifts the refusal to start, not the keys: once one exists, it is required.
            key = new_key(tmp_path, "late")
            assert httpx.get(f"http://127.0.0.1:{port}/api/tags", timeout=5).status_code == 401
            assert httpx.get(f"http://127.0.0.1:{port}/api/tags", timeout=5, headers=bearer(key)).status_code == 200
            return
        pytest.fail(f"server did not start (exit {proc.poll()})")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
