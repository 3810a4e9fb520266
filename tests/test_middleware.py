"""The gateway seam: hooks see every request, reject in the route's dialect, and see 500s too.

The real app runs in-process with Starlette's TestClient; a stand-in backend
answers the catalog routes (or crashes on demand), so no engine is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.testclient import TestClient
from starlette.types import Scope

from corral.errors import Unauthorized
from corral.server.app import create_app
from corral.server.middleware import RequestContext
from corral.settings import Settings


class Recorder:
    def __init__(self, reject: set[str]) -> None:
        self.reject = reject
        self.seen: list[RequestContext] = []

    async def before(self, ctx: RequestContext, scope: Scope) -> None:
        if ctx.path in self.reject:
            raise Unauthorized("missing API key")

    def on_start(self, ctx: RequestContext, headers: list[tuple[bytes, bytes]]) -> None:
        headers.append((b"x-hooked", ctx.dialect.encode()))

    async def after(self, ctx: RequestContext) -> None:
        self.seen.append(ctx)


class CrashingBackend:
    async def models(self) -> list[Any]:
        raise RuntimeError("disk on fire")


def _client(tmp_path: Path, hook: Recorder) -> TestClient:
    app = create_app(
        Settings(home=tmp_path, models_dir=tmp_path / "models"),
        engine=object(),  # type: ignore[arg-type]
        hooks=[hook],
    )
    app.state.backend = CrashingBackend()
    return TestClient(app, raise_server_exceptions=False)


def test_rejection_is_answered_in_the_dialect_of_the_route(tmp_path: Path) -> None:
    hook = Recorder({"/api/tags", "/v1/models", "/v2/library/x/manifests/latest"})
    client = _client(tmp_path, hook)
    ollama = client.get("/api/tags")
    assert ollama.status_code == 401 and ollama.json() == {"error": "missing API key"}
    openai = client.get("/v1/models")
    assert openai.status_code == 401
    assert openai.json()["error"]["type"] == "authentication_error"
    assert openai.json()["error"]["message"] == "missing API key"
    registry = client.get("/v2/library/x/manifests/latest")
    assert registry.status_code == 401
    assert registry.json() == {"errors": [{"code": "UNAUTHORIZED", "message": "missing API key"}]}
    assert registry.headers["docker-distribution-api-version"] == "registry/2.0"
    assert [c.dialect for c in hook.seen] == ["ollama", "openai", "registry"]
    assert [c.route for c in hook.seen] == ["/api/tags", "/v1/models", "/v2/{namespace}/{model}/manifests/{reference}"]
    assert all(c.status == 401 for c in hook.seen)


def test_hooks_see_headers_status_and_bytes_of_a_normal_answer(tmp_path: Path) -> None:
    hook = Recorder(set())
    client = _client(tmp_path, hook)
    r = client.get("/api/version")
    assert r.status_code == 200 and r.headers["x-hooked"] == "ollama"
    assert len(r.headers["x-request-id"]) == 16
    ctx = hook.seen[-1]
    assert ctx.id == r.headers["x-request-id"] and ctx.status == 200
    assert ctx.bytes_out == len(r.content) and ctx.first_byte is not None


def test_an_unexpected_crash_goes_through_the_seam_as_a_500(tmp_path: Path) -> None:
    hook = Recorder(set())
    client = _client(tmp_path, hook)
    r = client.get("/api/tags")
    assert r.status_code == 500 and r.json() == {"error": "internal error: disk on fire"}
    assert r.headers["x-hooked"] == "ollama"
    r = client.get("/v1/models")
    assert r.status_code == 500 and r.json()["error"]["type"] == "api_error"
    assert [c.status for c in hook.seen] == [500, 500]


def test_unknown_paths_answer_in_the_shape_of_the_route_that_claims_them(tmp_path: Path) -> None:
    client = _client(tmp_path, Recorder(set()))
    assert client.get("/api/nothing").json() == {"error": "404 page not found"}
    body = client.post("/v1/nothing").json()
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"] == "404 page not found"
