"""Pull and push between two real Corral servers over the registry v2 protocol.

Server A (starter models) serves its store as a registry; server B (empty
store) pulls ``127.0.0.1:<A>/library/smollm2:135m`` through the official
``ollama`` client, runs it, and pushes copies back. A pull interrupted by
killing B mid-download leaves no manifest and no invalid blob, and the next
pull resumes from the partial file (checked through a byte-counting proxy).
Bad names, unknown models, a dead registry and wrong upload digests fail
cleanly.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from corral.store.store import Store
from tests.conftest import SMOLLM, ServerProc, free_port, launch

NO_STARTERS = {"CORRAL_STARTER_MODELS": "0"}


@pytest.fixture(scope="module")
def registry_a(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    srv = launch(tmp_path_factory.mktemp("registry-a"))
    yield srv
    srv.stop()


def port_of(srv: ServerProc) -> int:
    return int(srv.url.rsplit(":", 1)[1])


def model_layer(srv: ServerProc) -> dict[str, int | str]:
    manifest = httpx.get(srv.url + "/v2/library/smollm2/manifests/135m").json()
    return next(layer for layer in manifest["layers"] if layer["mediaType"].endswith(".model"))


def snapshot(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if not p.name.startswith("server-")}


def check_no_invalid_blob(models: Path) -> None:
    for blob in (models / "blobs").glob("sha256-*"):
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name[len("sha256-") :], blob


class CountingProxy:
    """TCP proxy in front of a server: counts (and can throttle) bytes sent back."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.rate: float | None = None  # bytes per second back to the client
        self.downstream = 0
        self.live: list[socket.socket] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.live += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, back: bool) -> None:
        try:
            while data := src.recv(64 * 1024):
                if back:
                    self.downstream += len(data)
                    if self.rate:
                        time.sleep(len(data) / self.rate)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() thread
        except OSError:
            pass
        self.sock.close()

    def cut(self) -> None:
        """The registry vanishes: stop listening and drop every open connection."""
        self.close()
        for s in self.live:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# ---- the round trip through the official client ---------------------------------------


def test_pull_run_and_push_back(registry_a: ServerProc, start_server: Callable[..., ServerProc]) -> None:
    b = start_server(NO_STARTERS)
    pa = port_of(registry_a)
    name = f"127.0.0.1:{pa}/library/{SMOLLM}"
    client = ollama.Client(host=b.url, timeout=300)
    layer = model_layer(registry_a)

    events = list(client.pull(name, insecure=True, stream=True))
    statuses = [e.status for e in events]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert statuses.index("verifying sha256 digest") < statuses.index("writing manifest") < statuses.index("success")
    big = [e for e in events if e.digest == layer["digest"]]
    assert (
        big[0].status == f"pulling {str(layer['digest'])[7:19]}" and big[-1].completed == big[-1].total == layer["size"]
    )
    assert len(big) >= 3, "several progress updates for the model layer"
    assert (b.home / "models" / "manifests" / f"127.0.0.1:{pa}" / "library" / "smollm2" / "135m").is_file()
    check_no_invalid_blob(b.home / "models")
    assert not list((b.home / "models" / "blobs").glob("partial-*"))

    assert name in {m.model for m in client.list().models}
    assert client.show(name).details.family == "llama"
    out = client.generate(model=name, prompt="Say hi.", options={"temperature": 0, "num_predict": 4})
    assert out.done and out.eval_count and out.eval_count > 0

    # A second pull is all cache hits; stream=false answers only the final status.
    r = httpx.post(b.url + "/api/pull", json={"model": name, "insecure": True, "stream": False}, timeout=60)
    assert r.status_code == 200 and r.json() == {"status": "success"}

    # Copy under A's host and push back: every blob is already there.
    copy = f"127.0.0.1:{pa}/library/smol-copy:latest"
    client.copy(name, copy)
    pushed = [e.status for e in client.push(copy, insecure=True, stream=True)]
    assert pushed[0] == "retrieving manifest" and pushed[-2:] == ["pushing manifest", "success"]
    assert any(s.startswith("pushing ") and s != "pushing manifest" for s in pushed)

    # A derived model has new blobs (system layer, config): those go through POST/PATCH/PUT.
    derived = f"127.0.0.1:{pa}/library/smol-terse:v1"
    list(client.create(model=derived, from_=name, system="You are terse.", stream=True))
    events = list(client.push(derived, insecure=True, stream=True))
    assert events[-1].status == "success"
    assert any(e.digest and 0 < (e.completed or 0) == e.total and e.digest != layer["digest"] for e in events)

    a = ollama.Client(host=registry_a.url)
    listed = {m.model for m in a.list().models}
    assert {"smol-copy:latest", "smol-terse:v1"} <= listed
    shown = httpx.post(registry_a.url + "/api/show", json={"model": "smol-terse:v1"}).json()
    assert shown["system"] == "You are terse." and shown["details"]["family"] == "llama"
    check_no_invalid_blob(registry_a.home / "models")


# ---- interrupted pull: crash safety and resume -------------------------------------------


def test_killed_pull_leaves_no_manifest_and_resumes(
    registry_a: ServerProc, start_server: Callable[..., ServerProc]
) -> None:
    proxy = CountingProxy(port_of(registry_a))
    proxy.rate = 8_000_000
    try:
        b = start_server(NO_STARTERS)
        models = b.home / "models"
        layer = model_layer(registry_a)
        digest, total = str(layer["digest"]), int(layer["size"])
        partial = models / "blobs" / f"partial-{digest.replace(':', '-')}"
        name = f"127.0.0.1:{proxy.port}/library/{SMOLLM}"

        seen = 0
        with (
            pytest.raises(httpx.HTTPError),  # the server dies under the stream
            httpx.stream("POST", b.url + "/api/pull", json={"model": name, "insecure": True}, timeout=120) as r,
        ):
            assert r.status_code == 200
            for line in r.iter_lines():
                event = json.loads(line)
                if event.get("digest") == digest and event.get("completed", 0) >= 12_000_000:
                    assert partial.is_file()
                    seen = partial.stat().st_size
                    b.kill()
        assert seen >= 12_000_000
        have = partial.stat().st_size
        assert seen <= have < total
        assert not (models / "manifests").exists() or not any(p.is_file() for p in (models / "manifests").rglob("*"))
        assert not (models / "blobs" / digest.replace(":", "-")).exists()
        check_no_invalid_blob(models)
        Store(models).gc()  # a delete elsewhere must not eat the partial download
        assert partial.stat().st_size == have

        b2 = start_server(NO_STARTERS, home=b.home, port=port_of(b))
        proxy.rate, proxy.downstream = None, 0
        client = ollama.Client(host=b2.url, timeout=300)
        events = [e for e in client.pull(name, insecure=True, stream=True)]
        assert events[-1].status == "success"
        big = [e for e in events if e.digest == digest]
        assert big[0].completed == have, "the second pull starts from the partial file"
        assert proxy.downstream < total - have + 2_000_000, "only the missing bytes crossed the wire"
        assert f"range bytes={have}-" in registry_a.log_text()
        assert not partial.exists()
        check_no_invalid_blob(models)
        assert name in {m.model for m in client.list().models}
    finally:
        proxy.close()


def test_registry_lost_mid_pull_ends_stream_with_error(
    registry_a: ServerProc, start_server: Callable[..., ServerProc]
) -> None:
    proxy = CountingProxy(port_of(registry_a))
    proxy.rate = 8_000_000
    b = start_server(NO_STARTERS)
    digest = str(model_layer(registry_a)["digest"])
    lines = []
    with httpx.stream(
        "POST",
        b.url + "/api/pull",
        timeout=120,
        json={"model": f"127.0.0.1:{proxy.port}/library/{SMOLLM}", "insecure": True},
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            lines.append(json.loads(line))
            if lines[-1].get("completed", 0) > 4_000_000 and proxy.sock.fileno() != -1:
                proxy.cut()
    assert lines[0] == {"status": "pulling manifest"}, lines[:3]
    assert "error" in lines[-1], lines[-3:]
    assert "could not connect to registry" in lines[-1]["error"] and len(lines[-1]) == 1
    models = b.home / "models"
    assert not any(p.is_file() for p in (models / "manifests").rglob("*"))
    assert (models / "blobs" / f"partial-{digest.replace(':', '-')}").stat().st_size > 4_000_000
    check_no_invalid_blob(models)


# ---- errors -----------------------------------------------------------------------------------


@pytest.fixture
def empty_b(start_server: Callable[..., ServerProc]) -> ServerProc:
    return start_server(NO_STARTERS)


@pytest.mark.parametrize("bad", ["../evil", "a/b/c/d:e", "127.0.0.1:1/../x:y", "bad name!", "x:..", "/etc/passwd"])
def test_bad_names_are_400_without_touching_disk(registry_a: ServerProc, bad: str, tmp_path: Path) -> None:
    before = snapshot(registry_a.home / "models")
    for path in ("/api/pull", "/api/push"):
        r = httpx.post(registry_a.url + path, json={"model": bad, "insecure": True}, timeout=30)
        assert r.status_code == 400 and "error" in r.json(), (path, r.text)
    assert httpx.post(registry_a.url + "/api/pull", json={"insecure": True}).status_code == 400
    assert snapshot(registry_a.home / "models") == before


def test_missing_model_and_dead_registry(registry_a: ServerProc, empty_b: ServerProc) -> None:
    pa = port_of(registry_a)
    r = httpx.post(empty_b.url + "/api/pull", json={"model": f"127.0.0.1:{pa}/library/nope:1", "insecure": True})
    assert r.status_code == 404 and r.json()["error"] == "pull model manifest: file does not exist"
    with pytest.raises(ollama.ResponseError) as err:
        ollama.Client(host=empty_b.url).pull(f"127.0.0.1:{pa}/library/nope:1", insecure=True)
    assert err.value.status_code == 404

    dead = free_port()
    r = httpx.post(empty_b.url + "/api/pull", json={"model": f"127.0.0.1:{dead}/library/x:1", "insecure": True})
    assert r.status_code == 502 and "could not connect to registry" in r.json()["error"]

    r = httpx.post(empty_b.url + "/api/pull", json={"model": f"http://127.0.0.1:{pa}/library/nope:1"})
    assert r.status_code == 400 and r.json()["error"] == "insecure protocol http"
    r = httpx.post(empty_b.url + "/api/push", json={"model": f"127.0.0.1:{pa}/library/absent:1", "insecure": True})
    assert r.status_code == 404 and "not found" in r.json()["error"]
    models = empty_b.home / "models"
    assert not any(p.is_file() for p in (models / "manifests").rglob("*"))
    assert not list((models / "blobs").iterdir())


# ---- Corral's own v2 registry ------------------------------------------------------------


def test_v2_read_routes(registry_a: ServerProc) -> None:
    url = registry_a.url
    r = httpx.get(url + "/v2/")
    assert r.status_code == 200 and r.json() == {}
    r = httpx.get(
        url + "/v2/library/smollm2/manifests/135m",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    assert r.status_code == 200
    assert r.headers["docker-content-digest"] == "sha256:" + hashlib.sha256(r.content).hexdigest()
    assert httpx.head(url + "/v2/library/smollm2/manifests/135m").status_code == 200
    r = httpx.get(url + "/v2/library/nope/manifests/latest")
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"

    config = r = httpx.get(url + "/v2/library/smollm2/manifests/135m").json()["config"]
    whole = httpx.get(f"{url}/v2/library/smollm2/blobs/{config['digest']}")
    assert whole.status_code == 200 and len(whole.content) == config["size"]
    part = httpx.get(f"{url}/v2/library/smollm2/blobs/{config['digest']}", headers={"Range": "bytes=5-"})
    assert part.status_code == 206 and part.content == whole.content[5:]
    assert part.headers["content-range"] == f"bytes 5-{config['size'] - 1}/{config['size']}"
    head = httpx.head(f"{url}/v2/library/smollm2/blobs/{config['digest']}")
    assert head.status_code == 200 and int(head.headers["content-length"]) == config["size"]
    assert httpx.head(f"{url}/v2/library/smollm2/blobs/sha256:{'0' * 64}").status_code == 404
    assert httpx.get(f"{url}/v2/library/smollm2/blobs/sha256-nothex").status_code == 400


def test_v2_upload_verifies_digest(registry_a: ServerProc) -> None:
    url, blobs = registry_a.url, registry_a.home / "models" / "blobs"
    data = b"corral registry upload test " * 1000
    good = "sha256:" + hashlib.sha256(data).hexdigest()

    # wrong digest on the final PUT: 400, nothing stored, spool gone
    r = httpx.post(url + "/v2/library/up/blobs/uploads/")
    assert r.status_code == 202 and r.headers["location"].startswith("http://")
    loc = r.headers["location"]
    r = httpx.patch(loc, content=data, headers={"Content-Range": f"0-{len(data) - 1}"})
    assert r.status_code == 202 and r.headers["range"] == f"0-{len(data) - 1}"
    r = httpx.put(r.headers["location"], params={"digest": "sha256:" + "ab" * 32})
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "DIGEST_INVALID"
    assert not (blobs / ("sha256-" + "ab" * 32)).exists() and not list(blobs.glob(".upload-*"))
    assert httpx.put(loc, params={"digest": good}).status_code == 404  # session is gone

    # a PATCH that does not continue where the upload ends: 416
    loc = httpx.post(url + "/v2/library/up/blobs/uploads/").headers["location"]
    assert httpx.patch(loc, content=b"x", headers={"Content-Range": "5-5"}).status_code == 416
    httpx.delete(loc)

    # chunked PATCHes, the last chunk with the PUT
    loc = httpx.post(url + "/v2/library/up/blobs/uploads/").headers["location"]
    half = len(data) // 2
    loc = httpx.patch(loc, content=data[:half], headers={"Content-Range": f"0-{half - 1}"}).headers["location"]
    r = httpx.put(loc, params={"digest": good}, content=data[half:])
    assert r.status_code == 201 and r.headers["docker-content-digest"] == good
    assert httpx.head(f"{url}/v2/library/up/blobs/{good}").status_code == 200

    # manifests must reference known blobs and be valid JSON
    missing = {"schemaVersion": 2, "layers": [{"digest": "sha256:" + "cd" * 32, "size": 1, "mediaType": "x"}]}
    r = httpx.put(url + "/v2/library/up/manifests/latest", json=missing)
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    r = httpx.put(url + "/v2/library/up/manifests/latest", content=b"{not json")
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "MANIFEST_INVALID"
    r = httpx.put(url + "/v2/library/Bad..Name/manifests/latest", json={"layers": []})
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "NAME_INVALID"
    assert not (registry_a.home / "models" / "manifests" / "registry.ollama.ai" / "library" / "up").exists()
