"""Store: Ollama's on-disk model layout, read and written crash-safely.

``<models>/manifests/<host>/<namespace>/<model>/<tag>`` hold Docker v2
manifests; ``<models>/blobs/sha256-<hex>`` hold content-addressed layers.
An existing Ollama models folder works as it is. Every write goes to a temp
file in the same folder, is fsynced and digest-checked, then renamed, so a
crash never leaves a half-written blob or manifest visible.

What a crash (kill -9) leaves behind is removed when a server next opens the
store (:meth:`Store.claim`): temp files of blob and manifest writes, blob
upload spools and the work folders of an interrupted ``create``. A partial
pull (``blobs/partial-sha256-*``) is kept so that a later pull resumes it,
but only for ``CORRAL_PARTIAL_PULL_TTL`` (24h by default) and only while its
blob is still missing, so nothing accumulates across crashes. While another
server has the same store open (a shared ``flock`` on the models folder
itself, so nothing is written into an Ollama folder used as it is), only
leftovers older than an hour are touched, never its work in progress.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from corral.errors import BadRequest, ModelNotFound
from corral.store.names import ModelName

log = logging.getLogger(__name__)

MEDIA_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_PREFIX = "application/vnd.ollama.image."
MEDIA = {
    kind: MEDIA_PREFIX + kind
    for kind in ("model", "template", "system", "params", "license", "adapter", "projector", "messages")
}

_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
# Temp names of this module, the registry's upload spools and create's work folders (see Store.claim).
_BLOB_TEMPS = (".partial-", ".upload-", ".tmp-")
_WORK_DIRS = ("corral-convert-", "corral-quant-")
PULL_PARTIAL = "partial-sha256-"
_BUSY_STORE_MIN_AGE = 3600.0


def check_digest(digest: str) -> str:
    """Normalise ``sha256:<hex>`` / ``sha256-<hex>``; 400 for anything else."""
    m = _DIGEST.match(digest or "")
    if not m:
        raise BadRequest(f"invalid digest format: {digest!r}", param="digest")
    return "sha256:" + m.group(1)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def fsync_dir(path: Path) -> None:
    """fsync a folder so a rename into it survives a crash."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    os.fchmod(fd, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Layer:
    media_type: str
    digest: str
    size: int
    from_: str | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.from_:
            d["from"] = self.from_
        return d


@dataclass
class LocalModel:
    """One manifest in the store, with convenient readers for its layers."""

    name: ModelName
    manifest: dict[str, Any]
    digest: str  # sha256 of the manifest bytes (hex), as /api/tags shows
    modified_at: datetime
    store: Store

    @property
    def layers(self) -> list[Layer]:
        return [
            Layer(layer["mediaType"], layer["digest"], int(layer.get("size", 0)), layer.get("from"))
            for layer in self.manifest.get("layers", [])
        ]

    @property
    def size(self) -> int:
        total = sum(layer.size for layer in self.layers)
        cfg = self.manifest.get("config") or {}
        return total + int(cfg.get("size", 0))

    def layer(self, kind: str) -> Layer | None:
        found = [layer for layer in self.layers if layer.media_type == MEDIA[kind]]
        return found[-1] if found else None

    def layers_of(self, kind: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.media_type == MEDIA[kind]]

    def text(self, kind: str) -> str | None:
        layer = self.layer(kind)
        if layer is None:
            return None
        return self.store.blob_path(layer.digest).read_text(encoding="utf-8")

    def json(self, kind: str) -> Any:
        text = self.text(kind)
        return json.loads(text) if text else None

    @property
    def model_path(self) -> Path | None:
        layer = self.layer("model")
        return self.store.blob_path(layer.digest) if layer else None

    @property
    def config(self) -> dict[str, Any]:
        cfg = self.manifest.get("config") or {}
        digest = cfg.get("digest")
        if not digest:
            return {}
        try:
            data: dict[str, Any] = json.loads(self.store.blob_path(digest).read_text())
            return data
        except (OSError, ValueError):
            return {}


class Store:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"
        self._lock_fd: int | None = None

    def ensure(self) -> None:
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.manifests.mkdir(parents=True, exist_ok=True)

    # ---- crash leftovers -------------------------------------------------
    def claim(self, partial_pull_ttl: float) -> list[str]:
        """Open the store for a server: hold a shared lock on it for the process' life, and remove what
        a crashed process left behind (see the module docstring). Returns the names removed."""
        self.ensure()
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            alone = False
        try:
            removed = self._clean(min_age=0.0 if alone else _BUSY_STORE_MIN_AGE, partial_pull_ttl=partial_pull_ttl)
        finally:
            fcntl.flock(fd, fcntl.LOCK_SH)  # readers share it: the next server sees this one running
            if self._lock_fd is not None:
                os.close(self._lock_fd)
            self._lock_fd = fd
        for name in removed:
            log.info("removed leftover %s", name)
        return removed

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _clean(self, *, min_age: float, partial_pull_ttl: float) -> list[str]:
        now = time.time()
        removed: list[str] = []

        def age(path: Path) -> float:
            try:
                return now - path.stat().st_mtime
            except OSError:
                return -1.0

        def remove(path: Path) -> None:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            removed.append(str(path.relative_to(self.root)))

        for path in self.root.iterdir():
            if path.name.startswith(_WORK_DIRS) and age(path) >= min_age:
                remove(path)
        for path in self.blobs.iterdir():
            if path.name.startswith(_BLOB_TEMPS) and age(path) >= min_age:
                remove(path)
            elif path.name.startswith(PULL_PARTIAL):
                done = (self.blobs / path.name.removeprefix("partial-")).exists()
                if done or age(path) > max(partial_pull_ttl, min_age):
                    remove(path)
        for folder, _, files in os.walk(self.manifests):
            for name in files:
                path = Path(folder) / name
                if name.startswith(".tmp-") and age(path) >= min_age:
                    remove(path)
        return removed

    # ---- blobs ---------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.blobs / check_digest(digest).replace(":", "-")

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def write_blob(self, chunks: Iterable[bytes], digest: str | None = None) -> tuple[str, int]:
        """Stream chunks to a temp file, verify sha256, rename into place."""
        self.ensure()
        expected = check_digest(digest) if digest else None
        h = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(prefix=".partial-", dir=self.blobs)
        os.fchmod(fd, 0o644)
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    h.update(chunk)
                    fh.write(chunk)
                    size += len(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            actual = "sha256:" + h.hexdigest()
            if expected and actual != expected:
                raise BadRequest(f"digest mismatch, expected {expected!r}, got {actual!r}", param="digest")
            os.replace(tmp, self.blob_path(actual))
            fsync_dir(self.blobs)
            return actual, size
        finally:
            Path(tmp).unlink(missing_ok=True)

    def import_file(self, path: Path) -> tuple[str, int]:
        """Put an existing file into the blob store (hard link when possible)."""
        self.ensure()
        digest = sha256_file(path)
        dest = self.blob_path(digest)
        if dest.exists():
            return digest, dest.stat().st_size
        fd, tmp = tempfile.mkstemp(prefix=".partial-", dir=self.blobs)
        os.close(fd)
        Path(tmp).unlink()
        try:
            try:
                os.link(path, tmp)
            except OSError:
                shutil.copyfile(path, tmp)
            if sha256_file(Path(tmp)) != digest:
                raise BadRequest(f"file {path} changed while importing")
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return digest, dest.stat().st_size

    # ---- manifests -------------------------------------------------------
    def manifest_path(self, name: ModelName) -> Path:
        return self.root / name.manifest_relpath()

    def write_manifest(self, name: ModelName, layers: list[Layer], config: dict[str, Any]) -> LocalModel:
        cfg_bytes = json.dumps(config, separators=(",", ":")).encode()
        cfg_digest, cfg_size = self.write_blob([cfg_bytes])
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": cfg_digest, "size": cfg_size},
            "layers": [layer.to_json() for layer in layers],
        }
        return self.write_manifest_raw(name, json.dumps(manifest, separators=(",", ":")).encode())

    def write_manifest_raw(self, name: ModelName, data: bytes) -> LocalModel:
        manifest = json.loads(data)
        for ref in [manifest.get("config") or {}] + list(manifest.get("layers") or []):
            if ref.get("digest") and not self.has_blob(ref["digest"]):
                raise BadRequest(f"manifest references missing blob {ref['digest']}")
        atomic_write_bytes(self.manifest_path(name), data)
        return self.get(name)

    def get(self, name: ModelName | str) -> LocalModel:
        mname = name if isinstance(name, ModelName) else ModelName.parse(name)
        path = self.manifest_path(mname)
        try:
            data = path.read_bytes()
            manifest = json.loads(data)
        except (OSError, ValueError):
            raise ModelNotFound(name if isinstance(name, str) else mname.display) from None
        mtime = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
        return LocalModel(mname, manifest, hashlib.sha256(data).hexdigest(), mtime, self)

    def list(self) -> list[LocalModel]:
        out: list[LocalModel] = []
        for path in self._manifest_files():
            rel = path.relative_to(self.manifests).parts
            try:
                name = ModelName(rel[0], rel[1], rel[2], rel[3])
                out.append(self.get(name))
            except Exception:  # a stray file in manifests/ must not break listing
                log.warning("skipping unreadable manifest %s", path)
        out.sort(key=lambda m: m.modified_at, reverse=True)
        return out

    def _manifest_files(self) -> Iterator[Path]:
        if not self.manifests.is_dir():
            return
        for path in self.manifests.glob("*/*/*/*"):
            if path.is_file() and not path.name.startswith("."):
                yield path

    def copy(self, src: str, dst: str) -> None:
        source = self.get(src)
        dest = ModelName.parse(dst)
        atomic_write_bytes(self.manifest_path(dest), self.manifest_path(source.name).read_bytes())

    def delete(self, name: str) -> None:
        model = self.get(name)
        self.manifest_path(model.name).unlink()
        self._prune_dirs(self.manifest_path(model.name).parent)
        self.gc()

    def _prune_dirs(self, folder: Path) -> None:
        while folder != self.manifests and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent

    def referenced(self) -> set[str]:
        refs: set[str] = set()
        for model in self.list():
            cfg = model.manifest.get("config") or {}
            if cfg.get("digest"):
                refs.add(cfg["digest"])
            refs.update(layer.digest for layer in model.layers)
        return refs

    def gc(self) -> None:
        """Remove blobs no manifest references, and stale partial files."""
        keep = {d.replace(":", "-") for d in self.referenced()}
        if not self.blobs.is_dir():
            return
        for path in self.blobs.iterdir():
            if path.name.startswith("sha256-") and path.name not in keep:
                path.unlink(missing_ok=True)


def now_iso(dt: datetime | None = None) -> str:
    """RFC 3339 with nanosecond-style fraction, as Ollama prints times."""
    dt = dt or datetime.now(UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
