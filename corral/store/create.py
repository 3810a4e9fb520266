"""Create: build a model manifest from Ollama's ``/api/create`` request.

Runs synchronously (call it from a worker thread) and yields Ollama's
progress statuses, ending in ``success``. Sources: ``from`` an existing
model, ``files`` holding a GGUF blob or a safetensors folder's blobs, and the
template/system/license/parameters/messages/adapters layers on top.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.errors import BadRequest, ModelNotFound
from corral.options import OPTION_TYPES, coerce_option
from corral.store.gguf_meta import read_gguf
from corral.store.names import ModelName
from corral.store.store import MEDIA, Layer, Store

log = logging.getLogger(__name__)


@dataclass
class CreateSpec:
    name: str
    from_: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    adapters: dict[str, str] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    license: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] | None = None
    quantize: str | None = None


def _typed_parameters(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key not in OPTION_TYPES:
            raise BadRequest(f"unknown parameter {key!r}", param="parameters")
        out[key] = coerce_option(key, value, strict=False)
    return out


def _layer(store: Store, kind: str, data: bytes) -> Layer:
    digest, size = store.write_blob([data])
    return Layer(MEDIA[kind], digest, size)


_SAFE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def safe_relpath(name: str) -> Path:
    """A file name from a create request: relative, no '..', plain characters."""
    parts = name.split("/")
    if not name or name.startswith("/") or "\\" in name or not all(_SAFE_PART.match(p) for p in parts):
        raise BadRequest(f"invalid file name {name!r}", param="files")
    return Path(*parts)


def validate_spec(store: Store, spec: CreateSpec) -> None:
    """Check everything cheap before any progress is streamed (400s, 404s)."""
    ModelName.parse(spec.name)
    for fname in spec.files:
        safe_relpath(fname)
    _typed_parameters(spec.parameters)
    if spec.from_ and not spec.files:
        try:
            store.get(spec.from_)
        except ModelNotFound:
            if Path(spec.from_).expanduser().exists():
                raise BadRequest(f"FROM {spec.from_}: upload local files as blobs and pass them in 'files'") from None
            raise
    elif not spec.files:
        raise BadRequest("neither 'from' nor 'files' was specified")
    for fname, digest in {**spec.files, **spec.adapters}.items():
        if not store.has_blob(digest):
            raise BadRequest(f"blob {digest} for file {fname!r} not found; upload it with POST /api/blobs first")
        if fname.endswith(".gguf"):
            read_gguf(store.blob_path(digest))
    if spec.files and not any(n.endswith((".gguf", ".safetensors")) for n in spec.files):
        raise BadRequest("no .gguf or .safetensors file among 'files'")


def create_model(store: Store, spec: CreateSpec) -> Iterator[dict[str, Any]]:
    validate_spec(store, spec)
    name = ModelName.parse(spec.name)
    layers: list[Layer] = []
    yield {"status": "gathering model components"}
    base_params: dict[str, Any] = {}
    if spec.from_ and not spec.files:
        try:
            base = store.get(spec.from_)
        except ModelNotFound:
            path = Path(spec.from_).expanduser()
            if path.exists():
                raise BadRequest(f"FROM {spec.from_}: upload local files as blobs and pass them in 'files'") from None
            raise
        for layer in base.layers:
            if layer.media_type == MEDIA["params"]:
                base_params = json.loads(store.blob_path(layer.digest).read_text())
                continue
            layers.append(Layer(layer.media_type, layer.digest, layer.size, layer.from_ or base.name.display))
            yield {"status": f"using existing layer {layer.digest}"}
    elif spec.files:
        layers.extend((yield from _layers_from_files(store, spec)))
    else:
        raise BadRequest("neither 'from' nor 'files' was specified")

    model_layer = next((layer for layer in layers if layer.media_type == MEDIA["model"]), None)
    if model_layer is None:
        raise BadRequest("no model weights found in 'from' or 'files'")
    if spec.quantize:
        model_layer = yield from _quantize(store, model_layer, spec.quantize)
        layers = [model_layer if layer.media_type == MEDIA["model"] else layer for layer in layers]

    for digest_name, digest in spec.adapters.items():
        if not store.has_blob(digest):
            raise BadRequest(f"adapter blob {digest} ({digest_name}) not found; upload it first")
        layers.append(Layer(MEDIA["adapter"], digest, store.blob_path(digest).stat().st_size))

    def replace(kind: str, text: str | None) -> Iterator[dict[str, Any]]:
        nonlocal layers
        if text is None:
            return
        layers = [layer for layer in layers if layer.media_type != MEDIA[kind]]
        layer = _layer(store, kind, text.encode())
        layers.append(layer)
        yield {"status": f"creating new layer {layer.digest}"}

    yield from replace("template", spec.template)
    yield from replace("system", spec.system)
    if spec.license:
        layers = [layer for layer in layers if layer.media_type != MEDIA["license"]]
        for text in spec.license:
            layers.append(_layer(store, "license", text.encode()))
    if spec.messages is not None:
        yield from replace("messages", json.dumps(spec.messages))
    params = dict(base_params)
    params.update(_typed_parameters(spec.parameters))
    if params:
        layer = _layer(store, "params", json.dumps(params).encode())
        layers.append(layer)
        yield {"status": f"creating new layer {layer.digest}"}

    info = read_gguf(store.blob_path(model_layer.digest))
    config = {
        "model_format": "gguf",
        "model_family": info.architecture,
        "model_families": [info.architecture],
        "model_type": info.parameter_size,
        "file_type": info.file_type,
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
    }
    yield {"status": "writing manifest"}
    store.write_manifest(name, layers, config)
    yield {"status": "success"}


def _layers_from_files(store: Store, spec: CreateSpec) -> Generator[dict[str, Any], None, list[Layer]]:
    for fname, digest in spec.files.items():
        if not store.has_blob(digest):
            raise BadRequest(f"blob {digest} for file {fname!r} not found; upload it with POST /api/blobs first")
    ggufs = [(n, d) for n, d in spec.files.items() if n.endswith(".gguf")]
    if ggufs:
        out = []
        for fname, digest in ggufs:
            path = store.blob_path(digest)
            info = read_gguf(path)
            kind = "projector" if info.architecture == "clip" else "model"
            yield {"status": f"using existing layer {digest}" if kind else "parsing GGUF"}
            out.append(Layer(MEDIA[kind], digest, path.stat().st_size))
        return out
    if any(n.endswith(".safetensors") for n in spec.files):
        return (yield from _convert_safetensors(store, spec))
    raise BadRequest("no .gguf or .safetensors file among 'files'")


def _convert_safetensors(store: Store, spec: CreateSpec) -> Generator[dict[str, Any], None, list[Layer]]:
    from corral.convert import convert_hf_folder  # here, not at the top: keeps numpy off the serve path

    work = Path(tempfile.mkdtemp(prefix="corral-convert-", dir=store.root))
    try:
        folder = work / "src"
        folder.mkdir()
        for fname, digest in spec.files.items():
            dest = folder / safe_relpath(fname)
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                dest.hardlink_to(store.blob_path(digest))
            except OSError:
                shutil.copyfile(store.blob_path(digest), dest)
        yield {"status": "converting model"}
        out = work / "model.gguf"
        convert_hf_folder(folder, out)
        digest, size = store.import_file(out)
        yield {"status": f"creating new layer {digest}"}
        return [Layer(MEDIA["model"], digest, size)]
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _quantize(store: Store, layer: Layer, quant: str) -> Generator[dict[str, Any], None, Layer]:
    from corral.convert.quantize import quantize_gguf  # here, not at the top: keeps numpy off the serve path

    src = store.blob_path(layer.digest)
    info = read_gguf(src)
    yield {"status": f"quantizing {info.file_type} model to {quant.upper()}"}
    work = Path(tempfile.mkdtemp(prefix="corral-quant-", dir=store.root))
    try:
        out = work / "model.gguf"
        try:
            quantize_gguf(src, out, quant)
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        digest, size = store.import_file(out)
        yield {"status": f"creating new layer {digest}"}
        return Layer(MEDIA["model"], digest, size)
    finally:
        shutil.rmtree(work, ignore_errors=True)
