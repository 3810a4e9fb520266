"""An Ollama models folder, written by hand the way Ollama writes it, served as is.

The folder holds manifests under registry.ollama.ai/library, a user namespace
and a private host, with Go TEMPLATE, SYSTEM, params and license layers. The
test proves those layers are honoured by comparing a templated generate with
a raw generate of the prompt written out by hand from ChatML's format.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import ollama
import pytest

from corral.store.starters import smollm2_gguf
from tests.conftest import ServerProc

CHATML_GO = (
    "{{- range $i, $m := .Messages }}"
    '{{- if and (eq $i 0) $.System (ne $m.Role "system") }}<|im_start|>system\n{{ $.System }}<|im_end|>\n{{ end }}'
    "<|im_start|>{{ $m.Role }}\n{{ $m.Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)
SYSTEM = "You are a terse test bot."


def _blob(blobs: Path, data: bytes) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (blobs / digest.replace(":", "-")).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def write_ollama_folder(root: Path) -> None:
    blobs = root / "blobs"
    blobs.mkdir(parents=True)
    gguf = smollm2_gguf()
    assert gguf is not None
    data = gguf.read_bytes()
    model = {"mediaType": "application/vnd.ollama.image.model", **_blob(blobs, data)}
    template = {"mediaType": "application/vnd.ollama.image.template", **_blob(blobs, CHATML_GO.encode())}
    system = {"mediaType": "application/vnd.ollama.image.system", **_blob(blobs, SYSTEM.encode())}
    params = {
        "mediaType": "application/vnd.ollama.image.params",
        **_blob(blobs, json.dumps({"stop": ["<|im_end|>"], "temperature": 0, "num_predict": 12}).encode()),
    }
    license_ = {"mediaType": "application/vnd.ollama.image.license", **_blob(blobs, b"Apache License 2.0")}
    config = _blob(
        blobs,
        json.dumps(
            {
                "model_format": "gguf",
                "model_family": "llama",
                "model_families": ["llama"],
                "model_type": "135M",
                "file_type": "Q4_1",
                "architecture": "amd64",
                "os": "linux",
            }
        ).encode(),
    )
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **config},
            "layers": [model, template, system, params, license_],
        }
    ).encode()
    for rel in (
        "registry.ollama.ai/library/ollama-smol/latest",
        "registry.ollama.ai/someone/smol/v2",
        "models.example.com:5000/team/smol/q4",
    ):
        path = root / "manifests" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(manifest)


@pytest.fixture
def ollama_folder(tmp_path: Path) -> Path:
    root = tmp_path / "ollama-models"
    write_ollama_folder(root)
    return root


def _snapshot(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*")}


def test_existing_ollama_folder_works_as_is(start_server: Callable[..., ServerProc], ollama_folder: Path) -> None:
    before = _snapshot(ollama_folder)
    srv = start_server({"OLLAMA_MODELS": str(ollama_folder), "CORRAL_STARTER_MODELS": "0"})
    client = ollama.Client(host=srv.url, timeout=120)
    names = {m.model: m for m in client.list().models}
    assert set(names) == {"ollama-smol:latest", "someone/smol:v2", "models.example.com:5000/team/smol:q4"}
    assert names["ollama-smol:latest"].details.quantization_level == "Q4_1"

    info = client.show("ollama-smol")
    assert info.template == CHATML_GO and info.license == "Apache License 2.0"
    assert httpx.post(srv.url + "/api/show", json={"model": "ollama-smol"}).json()["system"] == SYSTEM
    assert "temperature" in info.parameters and "<|im_end|>" in info.parameters

    templated = client.generate(model="someone/smol:v2", prompt="Name a color.")
    by_hand = (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\n"
    )
    raw = client.generate(model="someone/smol:v2", prompt=by_hand, raw=True)
    assert templated.prompt_eval_count == raw.prompt_eval_count
    assert templated.response == raw.response and templated.eval_count <= 12  # params layer applied

    chat = client.chat(
        model="models.example.com:5000/team/smol:q4", messages=[{"role": "user", "content": "Name a color."}]
    )
    assert chat.message.content == raw.response
    assert _snapshot(ollama_folder) == before  # read-only use leaves the folder untouched
    assert os.access(ollama_folder, os.W_OK)
    shutil.rmtree(ollama_folder / "manifests" / "models.example.com:5000")
    assert "models.example.com:5000/team/smol:q4" not in {m.model for m in client.list().models}
