"""Pull and push against a Corral that has API keys, with the key from ``CORRAL_REGISTRY_KEYS``.

The registry is a real ``corral serve`` with an admin and a user key and the
tiny GGUF model in its store. A second real server configured with the admin
key pulls the model and pushes copies back (one with new blobs, so the whole
upload flow carries the key). In-process servers (the real app, real
loopback to the registry) cover the failures: no key configured (401 naming
the registry and the setting), a key for another host (never sent), a wrong
key, a user key pushing (403). Neither server's log nor any answer ever
holds the key text. Against mock hosts, the key goes to its registry's
origin alone: not to a redirect elsewhere, an upload location on another
host, a token realm, or an http-to-https upgrade; the Docker token flow
still works next to a key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import ollama
import pytest

from corral.errors import Unauthorized
from corral.gateway.db import open_database
from corral.gateway.keys import KeyStore
from corral.registry.remote import Registry
from corral.store.create import CreateSpec, create_model
from corral.store.names import ModelName
from corral.store.store import Store
from tests.conftest import MakeApp, ServerProc, launch

NO_STARTERS = {"CORRAL_STARTER_MODELS": "0"}


@dataclass
class KeyedRegistry:
    srv: ServerProc
    host: str  # 127.0.0.1:<port>, as a model name writes it
    admin: str
    user: str

    def model(self, name: str = "tiny:latest") -> str:
        return f"{self.host}/library/{name}"

    def keys_absent_from(self, *texts: str) -> None:
        for text in (self.srv.log_text(), *texts):
            assert self.admin not in text and self.user not in text


@pytest.fixture(scope="module")
def keyed_registry(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[KeyedRegistry]:
    home = tmp_path_factory.mktemp("keyed-registry")
    store = Store(home / "models")
    store.ensure()
    digest, _ = store.import_file(tiny_gguf)
    for _ in create_model(store, CreateSpec(name="tiny", files={"tiny.gguf": digest})):
        pass
    db = open_database(home / "corral.db")
    db.migrate()
    keys = KeyStore(db)
    admin, user = keys.create("puller-admin", admin=True)[1], keys.create("puller")[1]
    srv = launch(home, NO_STARTERS)
    yield KeyedRegistry(srv, srv.url.removeprefix("http://"), admin, user)
    srv.stop()


def test_registry_401_challenges_in_its_own_dialect(keyed_registry: KeyedRegistry) -> None:
    url = keyed_registry.srv.url
    r = httpx.get(url + "/v2/library/tiny/manifests/latest")
    assert r.status_code == 401 and r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert r.headers["www-authenticate"] == 'Bearer realm="corral"'  # no token realm: send the key itself
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"
    auth = {"Authorization": f"Bearer {keyed_registry.user}"}
    assert httpx.get(url + "/v2/library/tiny/manifests/latest", headers=auth).status_code == 200
    r = httpx.put(url + "/v2/library/tiny/manifests/latest", headers=auth, content=b"{}")
    assert r.status_code == 403 and r.json()["errors"][0]["code"] == "DENIED"


def test_pull_and_push_with_the_configured_admin_key(
    keyed_registry: KeyedRegistry, start_server: Callable[..., ServerProc]
) -> None:
    reg = keyed_registry
    env = {**NO_STARTERS, "CORRAL_REGISTRY_KEYS": f"other.example={reg.user},{reg.host}={reg.admin}"}
    b = start_server({**env, "OLLAMA_DEBUG": "1"})  # debug: the HTTP client's own log lines too
    client = ollama.Client(host=b.url, timeout=120)
    name = reg.model()

    events = list(client.pull(name, insecure=True, stream=True))
    assert events[0].status == "pulling manifest" and events[-1].status == "success"
    assert (b.home / "models" / "manifests" / reg.host / "library" / "tiny" / "latest").is_file()

    client.copy(name, reg.model("tiny-copy:latest"))  # every blob already there: only the manifest PUT
    assert [e.status for e in client.push(reg.model("tiny-copy:latest"), insecure=True, stream=True)][-1] == "success"
    derived = reg.model("tiny-terse:v1")  # new blobs: POST, PATCH and PUT of the upload flow
    list(client.create(model=derived, from_=name, system="Be terse.", stream=True))
    pushed = list(client.push(derived, insecure=True, stream=True))
    assert pushed[-1].status == "success"

    listed = httpx.get(reg.srv.url + "/api/tags", headers={"Authorization": f"Bearer {reg.admin}"}).json()
    assert {"tiny-copy:latest", "tiny-terse:v1"} <= {m["name"] for m in listed["models"]}
    b.stop()  # flush its log
    reg.keys_absent_from(b.log_text(), repr(events), repr(pushed))


async def test_pull_without_a_key_is_a_401_naming_the_registry(
    keyed_registry: KeyedRegistry, make_app: MakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    reg = keyed_registry
    port = int(reg.host.rsplit(":", 1)[1])
    body = {"model": reg.model(), "insecure": True, "stream": False}
    seen = []
    # no key at all, and a key for the same address on another port (never sent here)
    for env in ({}, {"CORRAL_REGISTRY_KEYS": f"127.0.0.1:{port + 1}={reg.admin}"}):
        app = await make_app(env, models=())
        for stream in (False, True):
            r = await app.client.post("/api/pull", json={**body, "stream": stream})
            assert r.status_code == 401, r.text
            error = r.json()["error"]
            assert error.startswith("pull model manifest: unauthorized: registry " + reg.host), error
            assert f"CORRAL_REGISTRY_KEYS={reg.host}=<key>" in error and "UNAUTHORIZED: missing API key" in error
            assert "www-authenticate" not in r.headers  # the registry refused, not this server
            seen.append(r.text)
        assert not list(app.store.manifests.rglob("latest"))

    app = await make_app({"CORRAL_REGISTRY_KEYS": f"{reg.host}={reg.user[:-3]}xyz"}, models=())
    r = await app.client.post("/api/pull", json=body)
    assert r.status_code == 401
    assert r.json()["error"] == (
        f"pull model manifest: unauthorized: registry {reg.host} refused the key configured for it"
        " in CORRAL_REGISTRY_KEYS (UNAUTHORIZED: invalid API key)"
    )
    reg.keys_absent_from(caplog.text, r.text, *seen)


async def test_a_user_key_pulls_but_cannot_push(
    keyed_registry: KeyedRegistry, make_app: MakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    reg = keyed_registry
    app = await make_app({"CORRAL_REGISTRY_KEYS": f"{reg.host}={reg.user}"}, models=())
    pulled = await app.client.post("/api/pull", json={"model": reg.model(), "insecure": True, "stream": False})
    assert pulled.status_code == 200 and pulled.json() == {"status": "success"}, pulled.text
    r = await app.client.post("/api/copy", json={"source": reg.model(), "destination": reg.model("user-copy:1")})
    assert r.status_code == 200
    r = await app.client.post("/api/push", json={"model": reg.model("user-copy:1"), "insecure": True, "stream": False})
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error.startswith(f"pushing manifest: forbidden by registry {reg.host}: DENIED: "), error
    assert 'key "puller" has user scope' in error
    assert not (reg.srv.home / "models" / "manifests" / "registry.ollama.ai" / "library" / "user-copy").exists()
    reg.keys_absent_from(caplog.text, pulled.text, r.text)


# ---- where the key may go: mock hosts ----------------------------------------------------------

SECRET = "corral-registry-secret-xyz"


class Hosts:
    """A mock transport: what each host saw, and scripted answers."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answer = answer
        self.seen: list[tuple[str, str | None]] = []  # (scheme://host:port path, Authorization)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        port = url.port or {"http": 80, "https": 443}[url.scheme]
        self.seen.append((f"{url.scheme}://{url.host}:{port}{url.path}", request.headers.get("authorization")))
        return self.answer(request)

    def auth_at(self, host: str) -> set[str | None]:
        return {auth for where, auth in self.seen if host in where}


def registry(hosts: Hosts, name: str = "reg.example:5000/library/m:1", insecure: bool = True) -> Registry:
    return Registry(ModelName.parse(name), insecure, httpx.MockTransport(hosts), SECRET)


async def test_the_key_goes_to_its_registry_origin_only() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        host, path = request.url.host, request.url.path
        if host == "reg.example" and path.endswith("/manifests/1"):
            return httpx.Response(307, headers={"Location": "http://cdn.example/manifest"})
        if host == "reg.example" and path.endswith("/blobs/uploads/"):
            return httpx.Response(202, headers={"Location": "http://uploads.example/session/1"})
        if host == "reg.example" and path.endswith("/back"):
            return httpx.Response(302, headers={"Location": "http://other.example/bounce"})
        if host == "other.example":
            return httpx.Response(302, headers={"Location": "http://reg.example:5000/v2/ok"})
        return httpx.Response(200, json={})

    hosts = Hosts(answer)
    reg = registry(hosts)
    try:
        await reg.request("GET", reg.url("manifests", "1"), what="manifest")  # redirected to a CDN
        resp = await reg.request("POST", f"{reg.base}/v2/{reg.repo}/blobs/uploads/", what="upload")
        await reg.request("PATCH", resp.headers["location"], what="upload", content=b"x")  # another host
        await reg.request("GET", f"{reg.base}/v2/back", what="bounce")  # away, then back home
        await reg.request("GET", "http://reg.example:5001/v2/", what="other port")
    finally:
        await reg.aclose()
    assert hosts.auth_at("reg.example:5000") == {f"Bearer {SECRET}"}
    for elsewhere in ("cdn.example", "uploads.example", "other.example", "reg.example:5001"):
        assert hosts.auth_at(elsewhere) == {None}, elsewhere
    assert [where for where, _ in hosts.seen][-3:-1] == [
        "http://other.example:80/bounce",
        "http://reg.example:5000/v2/ok",
    ]


async def test_no_key_over_an_https_upgrade_and_token_flow_still_works() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme == "http":
            return httpx.Response(301, headers={"Location": str(url.copy_with(scheme="https"))})
        if url.host == "auth.example":
            return httpx.Response(200, json={"token": "anon-token"})
        if request.headers.get("authorization") != "Bearer anon-token":
            challenge = 'Bearer realm="https://auth.example/token",service="reg",scope="repository:library/m:pull"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge}, json={"errors": []})
        return httpx.Response(200, json={})

    hosts = Hosts(answer)
    reg = registry(hosts, "reg.example/library/m:1")  # plain http, upgraded to https by the registry
    try:
        await reg.request("GET", reg.url("manifests", "1"), what="manifest")
    finally:
        await reg.aclose()
    assert hosts.seen[0] == ("http://reg.example:80/v2/library/m/manifests/1", f"Bearer {SECRET}")
    assert SECRET not in str(hosts.auth_at("https://reg.example")) and SECRET not in str(hosts.auth_at("auth.example"))
    assert hosts.seen[-1] == ("https://reg.example:443/v2/library/m/manifests/1", "Bearer anon-token")


async def test_a_refused_key_never_shows_in_the_error() -> None:
    def answer(request: httpx.Request) -> httpx.Response:  # a registry that echoes what it was sent
        echo = {"errors": [{"code": "UNAUTHORIZED", "message": f"bad {request.headers['authorization']}"}]}
        return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="corral"'}, json=echo)

    hosts = Hosts(answer)
    reg = registry(hosts, insecure=False)
    try:
        with pytest.raises(Unauthorized) as err:
            await reg.request("GET", reg.url("manifests", "1"), what="pull model manifest")
    finally:
        await reg.aclose()
    assert err.value.status == 401
    assert str(err.value) == (
        "pull model manifest: unauthorized: registry reg.example:5000 refused the key configured for it"
        " in CORRAL_REGISTRY_KEYS (UNAUTHORIZED: bad Bearer <key>)"
    )
    assert hosts.seen == [("https://reg.example:5000/v2/library/m/manifests/1", f"Bearer {SECRET}")]
