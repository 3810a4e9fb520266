"""``corral proxy``: the gateway in front of another server, driven by the official clients.

A real ``corral proxy`` process forwards to the session's real Corral (and,
where a test must kill or watch the upstream, to one of its own, or to a
small echo server that shows what arrived upstream).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest
import uvicorn
from openai import OpenAI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from corral.gateway.db import open_database
from corral.gateway.keys import KeyStore
from corral.gateway.listings import LISTING_PATHS, filter_listing
from corral.server.app import api_routes
from corral.server.errors import DialectRoute
from corral.server.fleet_proxy import fleet_routes
from corral.server.proxy import LOCAL_ROUTES, forward_asgi, forwarding_routes
from tests.conftest import ROOT, SMOLLM, ServerProc, free_port
from tests.tiny_gguf import tiny_llama


def launch_proxy(upstream: str, home: Path, *extra: str) -> ServerProc:
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "CORRAL_"))}
    env["CORRAL_HOME"] = str(home)
    log = home / f"proxy-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "corral", "proxy", "--upstream", upstream, "--port", str(port), *extra],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text(errors="replace"))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return ServerProc(url, home, proc, log)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("proxy did not start")


@pytest.fixture
def proxy_to(tmp_path: Path) -> Iterator[Callable[..., ServerProc]]:
    started: list[ServerProc] = []

    def start(upstream: str, *extra: str) -> ServerProc:
        srv = launch_proxy(upstream, tmp_path / f"proxy{len(started)}", *extra)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def test_ollama_client_streams_through_the_proxy_chunk_by_chunk(
    server: ServerProc, proxy_to: Callable[..., ServerProc]
) -> None:
    proxy = proxy_to(server.url)
    client = ollama.Client(host=proxy.url)
    assert [m.model for m in client.list().models] == [m.model for m in ollama.Client(host=server.url).list().models]
    chunks = list(
        client.chat(
            model=SMOLLM,
            messages=[{"role": "user", "content": "Count to ten."}],
            stream=True,
            options={"num_predict": 12, "temperature": 0},
        )
    )
    assert len(chunks) > 3 and chunks[-1].done and chunks[-1].eval_count == 12
    direct = ollama.Client(host=server.url).chat(
        model=SMOLLM,
        messages=[{"role": "user", "content": "Count to ten."}],
        options={"num_predict": 12, "temperature": 0},
    )
    assert "".join(c.message.content for c in chunks) == direct.message.content


def test_openai_client_through_the_proxy(server: ServerProc, proxy_to: Callable[..., ServerProc]) -> None:
    proxy = proxy_to(server.url)
    client = OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model=SMOLLM, messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
    assert reply.choices[0].message.content and reply.usage is not None and reply.usage.completion_tokens <= 8
    pieces = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model=SMOLLM, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True
        )
        if c.choices
    ]
    assert "".join(pieces)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])


def test_unreachable_upstream_is_a_502_naming_it_in_each_dialect(proxy_to: Callable[..., ServerProc]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    proxy = proxy_to(dead)
    r = httpx.post(proxy.url + "/api/chat", json={"model": SMOLLM, "messages": []}, timeout=30)
    assert r.status_code == 502 and r.json()["error"].startswith(f"upstream {dead} is unreachable")
    with pytest.raises(ollama.ResponseError) as err:
        ollama.Client(host=proxy.url).list()
    assert err.value.status_code == 502
    r = httpx.get(proxy.url + "/v1/models", timeout=30)
    assert r.status_code == 502 and r.json()["error"]["message"].startswith(f"upstream {dead}")
    assert r.json()["error"]["type"] == "server_error"


def test_upstream_killed_mid_stream_ends_the_stream_with_an_error_line(
    start_server: Callable[..., ServerProc], proxy_to: Callable[..., ServerProc]
) -> None:
    upstream = start_server({"CORRAL_STARTER_MODELS": "1"})
    proxy = proxy_to(upstream.url)
    lines = []
    with httpx.stream(
        "POST",
        proxy.url + "/api/generate",
        timeout=60,
        json={"model": SMOLLM, "prompt": "Tell me a long story.", "options": {"num_predict": 4000}},
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            lines.append(json.loads(line))
            if len(lines) == 3:
                upstream.kill()
    assert len(lines) > 3 and "error" in lines[-1] and "failed mid-answer" in lines[-1]["error"]
    assert not any(line.get("done") for line in lines)


def test_client_going_away_closes_the_upstream_request(
    start_server: Callable[..., ServerProc], proxy_to: Callable[..., ServerProc]
) -> None:
    upstream = start_server({"OLLAMA_NUM_PARALLEL": "1"})
    proxy = proxy_to(upstream.url)
    with httpx.stream(
        "POST",
        proxy.url + "/api/generate",
        timeout=60,
        json={"model": SMOLLM, "prompt": "Tell me a long story.", "options": {"num_predict": 100000}},
    ) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i == 2:
                break
    # The only slot upstream is free again: the next request is answered at once, not after 100k tokens.
    start = time.monotonic()
    reply = ollama.Client(host=proxy.url, timeout=30).generate(model=SMOLLM, prompt="Hi", options={"num_predict": 4})
    assert reply.done and time.monotonic() - start < 20


def _echo_server() -> tuple[str, uvicorn.Server, threading.Thread]:
    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse(
            {"headers": dict(request.headers), "body": body.decode(), "query": request.url.query},
            headers={"x-upstream": "yes"},
        )

    app = Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST", "DELETE", "HEAD"])])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, thread


def test_headers_and_body_pass_through_except_credentials(proxy_to: Callable[..., ServerProc]) -> None:
    url, echo, thread = _echo_server()
    try:
        plain = proxy_to(url)
        body = {"model": SMOLLM, "messages": [], "stream": False}
        r = httpx.post(
            plain.url + "/api/chat?x=1",
            json=body,
            timeout=30,
            headers={
                "authorization": "Bearer client-secret",
                "x-api-key": "client-secret",
                "x-custom": "kept",
                "user-agent": "probe/1.0",
            },
        )
        assert r.status_code == 200 and r.headers["x-upstream"] == "yes"
        seen = r.json()
        assert json.loads(seen["body"]) == body and seen["query"] == "x=1"
        assert seen["headers"]["x-custom"] == "kept" and seen["headers"]["user-agent"] == "probe/1.0"
        assert "authorization" not in seen["headers"] and "x-api-key" not in seen["headers"]
        keyed = proxy_to(url, "--upstream-key", "upstream-secret")
        seen = httpx.post(
            keyed.url + "/api/show",
            json={"model": SMOLLM},
            timeout=30,
            headers={"authorization": "Bearer client-secret"},
        ).json()
        assert seen["headers"]["authorization"] == "Bearer upstream-secret"
        # A body over the sniffing limit (a blob upload) is streamed on as it arrives, chunked upstream.
        blob = os.urandom(1536 * 1024).hex().encode()  # 3 MiB
        seen = httpx.post(plain.url + "/api/blobs/sha256-" + "0" * 64, content=blob, timeout=60).json()
        assert seen["body"].encode() == blob and seen["headers"]["transfer-encoding"] == "chunked"
    finally:
        echo.should_exit = True
        thread.join(timeout=10)


def test_listings_through_the_proxy_show_a_key_only_its_models(
    server: ServerProc, proxy_to: Callable[..., ServerProc], tmp_path: Path
) -> None:
    upstream_models = sorted(m.model or "" for m in ollama.Client(host=server.url).list().models)
    assert SMOLLM in upstream_models and len(upstream_models) > 1  # else the filter would show nothing
    proxy = proxy_to(server.url)
    store = KeyStore(open_database(proxy.home / "corral.db"))
    _, narrow = store.create("narrow", models=[SMOLLM])
    _, wide = store.create("wide")
    ollama.Client(host=server.url).generate(model=SMOLLM, prompt="Hi", options={"num_predict": 1})  # loaded: in ps

    def listed(key: str) -> tuple[list[str], list[str], list[str]]:
        client = ollama.Client(host=proxy.url, headers={"Authorization": f"Bearer {key}"})
        oai = OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0)
        return (
            sorted(m.model or "" for m in client.list().models),
            sorted(m.model or "" for m in client.ps().models),
            sorted(m.id for m in oai.models.list().data),
        )

    tags, ps, v1 = listed(narrow)
    assert tags == [SMOLLM] and ps == [SMOLLM] and v1 == [SMOLLM]
    tags, ps, v1 = listed(wide)
    assert tags == upstream_models and v1 == upstream_models and SMOLLM in ps
    # The upstream Corral's id and timing headers are not sent twice: the proxy's own replace them.
    body = {"model": SMOLLM, "prompt": "Hi", "stream": False, "options": {"num_predict": 1}}
    r = httpx.post(proxy.url + "/api/generate", json=body, headers={"Authorization": f"Bearer {wide}"}, timeout=60)
    assert r.status_code == 200 and len(r.headers.get_list("x-request-id")) == 1
    assert r.headers["x-upstream-request-id"] not in ("", r.headers["x-request-id"])
    assert len(r.headers.get_list("server-timing")) == len(r.headers.get_list("x-sdl-proxy-timing")) == 1


def test_forwarded_routes_skip_the_inner_layers_unless_cors_needs_them(proxy_to: Callable[..., ServerProc]) -> None:
    routes = [r for r in forwarding_routes(api_routes(), LOCAL_ROUTES) if isinstance(r, DialectRoute)]
    direct = {r.path for r in routes if r.direct is forward_asgi}
    assert {"/api/chat", "/api/generate", "/v1/chat/completions", "/v1/messages", "/api/pull"} <= direct
    assert not direct & ({"/"} | LISTING_PATHS)  # those have endpoints of their own
    assert not any(r.direct for r in LOCAL_ROUTES if isinstance(r, DialectRoute))  # answered here, as routes
    url, echo, thread = _echo_server()
    try:
        proxy = proxy_to(url)
        body = {"model": SMOLLM, "messages": []}
        bare = httpx.post(proxy.url + "/api/chat", json=body, timeout=30)
        origin = "http://localhost:3000"
        browser = httpx.post(proxy.url + "/api/chat", json=body, timeout=30, headers={"Origin": origin})
        assert bare.status_code == browser.status_code == 200 and json.loads(bare.json()["body"]) == body
        assert "access-control-allow-origin" not in bare.headers and "server-timing" in bare.headers
        assert browser.headers["access-control-allow-origin"] == origin
        assert "Server-Timing" in browser.headers["access-control-expose-headers"]
        wrong = httpx.get(proxy.url + "/api/chat", timeout=30)  # not the route's method: Starlette's 405
        assert wrong.status_code == 405 and wrong.json() == {"error": "405 method not allowed"}
    finally:
        echo.should_exit = True
        thread.join(timeout=10)


def test_what_is_not_a_listing_is_never_passed_on_unfiltered() -> None:
    allow = {"a:latest"}.__contains__
    tags = b'{"models":[{"name":"a:latest","model":"a:latest"},{"name":"b:latest","model":"b:latest"}]}'
    assert json.loads(filter_listing(tags, allow) or b"") == {"models": [{"name": "a:latest", "model": "a:latest"}]}
    v1 = b'{"object":"list","data":[{"id":"b:latest"},{"id":"a:latest"},{"oops":1}]}'
    assert json.loads(filter_listing(v1, allow) or b"") == {"object": "list", "data": [{"id": "a:latest"}]}
    for body in (b"", b"not json", b"[]", b'{"error":"x"}', b"\x1f\x8b\x08gzip"):
        assert filter_listing(body, allow) is None  # the proxy answers 502 rather than relay these


@pytest.mark.parametrize("build", [forwarding_routes, fleet_routes])
def test_every_forwarded_route_keeps_the_scope_and_model_source_of_the_route_it_twins(
    build: Callable[..., list[BaseRoute]],
) -> None:
    original = {(r.path, frozenset(r.methods or ())): r for r in api_routes() if isinstance(r, DialectRoute)}
    twins = [r for r in build(api_routes(), LOCAL_ROUTES) if isinstance(r, DialectRoute)]
    assert len(twins) == len(original)
    for route in twins:
        source = original[(route.path, frozenset(route.methods or ()))]
        assert (route.scope, route.model_from, route.dialect) == (source.scope, source.model_from, source.dialect)


def test_a_keyed_proxy_enforces_scopes_and_allowlists_before_forwarding(proxy_to: Callable[..., ServerProc]) -> None:
    url, echo, thread = _echo_server()
    try:
        proxy = proxy_to(url)
        store = KeyStore(open_database(proxy.home / "corral.db"))
        _, user = store.create("user", models=[SMOLLM])
        _, admin = store.create("admin", admin=True)
        assert httpx.get(proxy.url + "/api/version", timeout=30).status_code == 200  # open, as on a server
        assert httpx.get(proxy.url + "/api/tags", timeout=30).status_code == 401
        as_user = ollama.Client(host=proxy.url, headers={"Authorization": f"Bearer {user}"})
        with pytest.raises(ollama.ResponseError) as denied:
            as_user.delete(SMOLLM)  # an admin route: refused here, never forwarded
        assert denied.value.status_code == 403 and "admin" in str(denied.value)
        with pytest.raises(ollama.ResponseError) as other:
            as_user.chat(model="other-model", messages=[{"role": "user", "content": "Hi"}])
        assert other.value.status_code == 403 and "other-model" in str(other.value)
        reached = httpx.post(proxy.url + "/api/chat", json={"model": SMOLLM}, headers=bearer_of(user), timeout=30)
        assert reached.status_code == 200 and json.loads(reached.json()["body"]) == {"model": SMOLLM}
        gone = httpx.request("DELETE", proxy.url + "/api/delete", json={"model": "x"}, headers=bearer_of(admin))
        assert gone.status_code == 200 and gone.json()["body"] == '{"model":"x"}'
    finally:
        echo.should_exit = True
        thread.join(timeout=10)


def bearer_of(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_model_is_created_shown_and_deleted_through_the_proxy(
    server: ServerProc, proxy_to: Callable[..., ServerProc], tmp_path: Path
) -> None:
    proxy = proxy_to(server.url)
    client = ollama.Client(host=proxy.url, timeout=120)
    path = tiny_llama(tmp_path / "tiny.gguf")
    digest = client.create_blob(path)  # HEAD (404: not there yet), then the upload, both forwarded
    assert client.create_blob(path) == digest  # HEAD again: 200, no body, nothing uploaded
    statuses = [s.status for s in client.create(model="via-proxy", files={"tiny.gguf": digest}, stream=True)]
    assert statuses[-1] == "success"
    assert client.show("via-proxy").details.family == "llama"
    assert "via-proxy:latest" in {m.model for m in ollama.Client(host=server.url).list().models}
    client.delete("via-proxy")
    assert "via-proxy:latest" not in {m.model for m in client.list().models}
