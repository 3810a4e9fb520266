"""The OpenAPI document, the playground's routes and ``/api/whoami``, against the real route table and server.

The document is generated from the app's routes, so these tests check the two
ways it could still drift: a route with no entry in :mod:`corral.server.apidoc`
(or an entry no route has), and a response model that no longer matches what
the handler writes (real answers from a real server, validated against the
documented models, which forbid unknown fields). The playground's static
routes: the redirect of a browser from ``/``, the page's security headers,
no path escapes the static folder, and asset fetches stay out of the request
log. ``corral proxy`` serves the page and the document itself. The page's
own files stay small, load nothing from elsewhere, and its vendored libraries
match the npm lock file they came from (the browser tests are
``tests/test_playground.py``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel
from starlette.routing import Route

from corral.server import apidoc
from corral.server.app import api_routes, create_app
from corral.server.ollama import types as ollama
from corral.server.openapi import openapi_document, openapi_path
from corral.settings import Settings
from tests.conftest import ROOT, SMOLLM, ServerProc, launch
from tests.test_gateway_auth import bearer, new_key
from tests.test_proxy import launch_proxy

OPTS = {"temperature": 0, "num_predict": 4}
STATIC = ROOT / "corral" / "playground" / "static"


def route_methods(routes: list[object]) -> set[tuple[str, str]]:
    return {(r.path, m) for r in routes if isinstance(r, Route) for m in (r.methods or ())}


@pytest.mark.parametrize("admin_routes", [True, False])
def test_every_route_is_in_the_document_and_documented(admin_routes: bool) -> None:
    routes = api_routes(admin_routes=admin_routes)
    doc = openapi_document(routes)
    for path, method in route_methods(routes):  # type: ignore[arg-type]
        op = doc["paths"][openapi_path(path)][method.lower()]
        assert op["x-corral-route"] == path
        assert not op.get("x-undocumented"), f"{method} {path}: add an entry to corral/server/apidoc.py"
        assert op["summary"] and op["tags"] and op["responses"]
    assert sum(len(v) for v in doc["paths"].values()) == len(route_methods(routes))  # type: ignore[arg-type]


def test_no_doc_entry_outlives_its_route() -> None:
    served = route_methods(api_routes())  # type: ignore[arg-type]
    paths = {p for p, _ in served}
    stale = [
        key for key in apidoc.OPS if not (key in {(m, p) for p, m in served} or (key[0] == "*" and key[1] in paths))
    ]
    assert stale == []


def test_document_shape_scopes_and_schemas(tmp_path: Path) -> None:
    app = create_app(Settings(home=tmp_path, models_dir=tmp_path / "models"), engine=object())  # type: ignore[arg-type]
    doc = openapi_document(app.routes)
    assert doc["openapi"].startswith("3.1")
    assert doc["info"]["x-corral-timing"]["stream_field"] == "corral_timing"
    paths = doc["paths"]
    assert paths["/"]["get"]["x-corral-scope"] == "open" and paths["/"]["get"]["security"] == []
    assert paths["/api/pull"]["post"]["x-corral-scope"] == "admin"
    assert paths["/api/chat"]["post"]["x-corral-stream"] == "ndjson"
    assert paths["/v1/chat/completions"]["post"]["x-corral-stream"] == "sse"
    assert "/v1/models/{model}" in paths and "/playground/{path}" in paths
    generate = paths["/api/generate"]["post"]
    assert generate["requestBody"]["content"]["application/json"]["example"]["model"] == SMOLLM
    schemas = doc["components"]["schemas"]
    prompt = schemas["GenerateRequest"]["properties"]["prompt"]
    assert prompt["description"] == "The prompt to generate a response for"  # the field's own docstring
    assert schemas["GenerateRequest"]["properties"]["options"]["anyOf"][0] == {"$ref": "#/components/schemas/Options"}
    assert schemas["Options"]["properties"]["num_predict"]["default"] == -1
    assert "corral_timing" in schemas["GenerateResponse"]["properties"]
    for ref in _refs(doc):  # every reference resolves
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    json.dumps(doc)


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def check(model: type[BaseModel], body: object) -> None:
    model.model_validate(body)  # the Ollama response models forbid fields they do not document


def test_real_answers_match_the_documented_models(server: ServerProc) -> None:
    with httpx.Client(base_url=server.url, timeout=120) as http:
        check(ollama.VersionResponse, http.get("/api/version").json())
        check(ollama.ListResponse, http.get("/api/tags").json())
        check(ollama.ShowResponse, http.post("/api/show", json={"model": SMOLLM}).json())
        check(
            ollama.GenerateResponse,
            http.post("/api/generate", json={"model": SMOLLM, "prompt": "Hi", "stream": False, "options": OPTS}).json(),
        )
        with http.stream(
            "POST",
            "/api/chat",
            json={"model": SMOLLM, "messages": [{"role": "user", "content": "Hi"}], "options": OPTS},
        ) as r:
            lines = [json.loads(line) for line in r.iter_lines() if line]
        for line in lines:
            check(ollama.ChatResponse, line)
        assert lines[-1]["done"] and lines[-1]["corral_timing"]["total"] > 0
        check(ollama.ProcessResponse, http.get("/api/ps").json())
        check(ollama.EmbedResponse, http.post("/api/embed", json={"model": "all-minilm", "input": ["a", "b"]}).json())
        check(
            ollama.EmbeddingResponse, http.post("/api/embeddings", json={"model": "all-minilm", "prompt": "a"}).json()
        )
        check(ollama.ErrorResponse, http.post("/api/show", json={"model": "no-such-model"}).json())
        check(apidoc.Whoami, http.get("/api/whoami").json())
        served = http.get("/api/openapi.json")
        assert served.status_code == 200
        assert served.json()["servers"] == [{"url": server.url}]


@pytest.fixture(scope="module")
def keyed(server: ServerProc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProc, str, str]]:
    home = tmp_path_factory.mktemp("openapi-keyed")
    admin_key, user_key = new_key(home, "root", admin=True), new_key(home, "alice")
    srv = launch(home, {"OLLAMA_MODELS": str(server.home / "models"), "CORRAL_STARTER_MODELS": "0"})
    yield srv, admin_key, user_key
    srv.stop()


def test_whoami_names_the_key_and_its_scope(keyed: tuple[ServerProc, str, str]) -> None:
    srv, admin_key, user_key = keyed
    with httpx.Client(base_url=srv.url, timeout=30) as http:
        assert http.get("/api/whoami", headers=bearer(admin_key)).json() == {
            "key": "root",
            "scope": "admin",
            "auth": True,
        }
        assert http.get("/api/whoami", headers={"x-api-key": user_key}).json() == {
            "key": "alice",
            "scope": "user",
            "auth": True,
        }
        wrong = http.get("/api/whoami", headers=bearer("corral-wrong"))
        assert wrong.status_code == 401 and wrong.json() == {"error": "invalid API key"}
        assert http.get("/api/whoami").status_code == 401
        # the page and the document need no key
        assert http.get("/api/openapi.json").status_code == 200
        assert http.get("/playground/").status_code == 200


def test_a_browser_is_sent_to_the_playground_and_api_clients_are_not(keyed: tuple[ServerProc, str, str]) -> None:
    srv, admin_key, _ = keyed
    with httpx.Client(base_url=srv.url, timeout=30) as http:
        assert http.get("/").text == "Ollama is running"
        assert http.get("/", headers={"Accept": "application/json"}).text == "Ollama is running"
        browser = http.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
        assert browser.status_code == 302 and browser.headers["location"] == "/playground/"
        assert http.head("/", headers={"Accept": "text/html"}).status_code == 200
        assert http.get("/playground").headers["location"] == "/playground/"
        page = http.get("/playground/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        again = http.get("/playground/", headers={"If-None-Match": page.headers["etag"]})
        assert again.status_code == 304
        js = http.get("/playground/vendor/marked.esm.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        for bad in (
            "/playground/nothing.js",
            "/playground/..%2f..%2fpyproject.toml",
            "/playground/%2e%2e/server/app.py",
            "/playground/js/",
            "/playground/.hidden",
        ):
            assert http.get(bad).status_code == 404, bad
        # page assets are not API calls: no request-log rows for them
        rows = http.get("/api/admin/requests", params={"limit": 500}, headers=bearer(admin_key)).json()["requests"]
        assert not [r for r in rows if r["path"].startswith("/playground/")]


def test_the_proxy_serves_its_own_page_and_document(server: ServerProc, tmp_path: Path) -> None:
    proxy = launch_proxy(server.url, tmp_path / "proxy")
    try:
        with httpx.Client(base_url=proxy.url, timeout=30) as http:
            assert http.get("/").text == "Ollama is running"  # forwarded
            assert http.get("/", headers={"Accept": "text/html"}).headers["location"] == "/playground/"
            assert http.get("/playground/").headers["content-security-policy"]
            doc = http.get("/api/openapi.json").json()
            assert doc["servers"] == [{"url": proxy.url}] and "/api/chat" in doc["paths"]
            assert http.get("/api/tags").json()["models"]  # still forwarded
    finally:
        proxy.stop()


# ---- the page's files ---------------------------------------------------------------------------------


def test_vendored_libraries_match_the_lock_file_and_carry_their_licences() -> None:
    vendor = STATIC / "vendor"
    manifest = json.loads((vendor / "MANIFEST.json").read_text())["files"]
    lock = json.loads((ROOT / "scripts" / "playground-vendor" / "package-lock.json").read_text())["packages"]
    on_disk = {p.relative_to(vendor).as_posix() for p in vendor.rglob("*") if p.is_file()} - {"MANIFEST.json"}
    assert on_disk == set(manifest)
    for rel, entry in manifest.items():
        assert hashlib.sha256((vendor / rel).read_bytes()).hexdigest() == entry["sha256"], rel
        assert lock[f"node_modules/{entry['package']}"]["version"] == entry["version"], rel
    packages = {e["package"] for e in manifest.values()}
    assert packages == {"marked", "dompurify", "uplot", "@highlightjs/cdn-assets"}
    licensed = {e["package"] for rel, e in manifest.items() if rel.startswith("licenses/")}
    assert licensed == packages


def test_page_sources_load_nothing_from_elsewhere_and_stay_small() -> None:
    own = [p for p in STATIC.rglob("*") if p.suffix in (".html", ".js", ".css") and "vendor" not in p.parts]
    assert len(own) > 15
    for path in own:
        text = path.read_text()
        assert len(text.splitlines()) <= 600, path
        assert text.lstrip().startswith(("//", "/*", "<!doctype html>\n<!--")), f"{path}: header comment"
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), f"{path}: loads from another origin"
        assert not re.search(r"""import[^"']*["'](https?:)?//""", text), f"{path}: imports from another origin"
        # HTML strings reach the DOM only through markdown.js's sanitiser, which returns a fragment
        assert not re.search(
            r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write|\beval\(|new Function\(", text
        ), f"{path}: writes HTML or evaluates code"
