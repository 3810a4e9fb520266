"""Registry server helpers: the framework-free half of Corral's own v2 registry.

Owns what :mod:`corral.server.ollama.registry` needs besides HTTP plumbing:
mapping ``/v2/<namespace>/<model>`` paths to store names, validating
manifests (also used by the pull client), Docker-style error bodies, and
upload sessions. An upload session is a spool file
``blobs/.upload-<uuid>`` that ``PATCH`` requests append to; the final
``PUT ?digest=`` streams it through :meth:`Store.write_blob`, which verifies
the sha256 before renaming, so an unverified blob never gets a
``sha256-<hex>`` name. Spool names never match ``sha256-*``, so
:meth:`Store.gc` leaves them alone; abandoned ones are swept after a day.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.errors import BadRequest, NotFound
from corral.store.names import DEFAULT_HOST, ModelName
from corral.store.store import Store, check_digest

log = logging.getLogger(__name__)

UPLOAD_PREFIX = ".upload-"
STALE_UPLOAD_SECONDS = 24 * 3600
MAX_MANIFEST_BYTES = 4 << 20
_UUID = re.compile(r"^[0-9a-f]{32}$")
_CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?(\d+)-(\d+)(?:/(\d+|\*))?$")


def repo_name(namespace: str, model: str, tag: str, host: str = DEFAULT_HOST) -> ModelName:
    """The store name a ``/v2/<namespace>/<model>`` request refers to (400 if invalid)."""
    return ModelName.parse(f"{host}/{namespace}/{model}:{tag}")


def docker_error(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    """The registry v2 error body: ``{"errors": [{"code", "message", "detail"}]}``."""
    err: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        err["detail"] = detail
    return {"errors": [err]}


@dataclass(frozen=True)
class BlobRef:
    digest: str
    size: int
    media_type: str


def parse_manifest(data: bytes) -> list[BlobRef]:
    """Validate a v2 manifest and return every blob it references (config last).

    Raises BadRequest for anything that is not a JSON object with well-formed
    digests, so a hostile manifest can never name a path outside ``blobs/``.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise BadRequest("manifest too large")
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise BadRequest(f"invalid manifest: {exc}") from None
    if not isinstance(manifest, dict):
        raise BadRequest("invalid manifest: expected a JSON object")
    layers = manifest.get("layers") or []
    config = manifest.get("config")
    if not isinstance(layers, list) or (config is not None and not isinstance(config, dict)):
        raise BadRequest("invalid manifest: bad 'layers' or 'config'")
    refs: list[BlobRef] = []
    for entry in [*layers, *([config] if config else [])]:
        if not isinstance(entry, dict):
            raise BadRequest("invalid manifest: layer is not an object")
        size = entry.get("size", 0)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"invalid manifest: bad size {size!r}")
        refs.append(BlobRef(check_digest(str(entry.get("digest", ""))), size, str(entry.get("mediaType", ""))))
    return refs


def parse_content_range(value: str | None) -> tuple[int, int] | None:
    """``Content-Range`` of a PATCH (``start-end``, optionally ``bytes ``); None if absent."""
    if not value:
        return None
    m = _CONTENT_RANGE.match(value.strip())
    if not m or int(m.group(2)) < int(m.group(1)):
        raise BadRequest(f"invalid Content-Range {value!r}")
    return int(m.group(1)), int(m.group(2))


class UploadSessions:
    """Blob upload sessions spooled under ``blobs/.upload-<uuid>``.

    All methods do blocking file I/O: call them from a worker thread.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def _path(self, upload_id: str) -> Path:
        if not _UUID.match(upload_id or ""):
            raise NotFound(f"upload {upload_id!r} not found")
        return self.store.blobs / f"{UPLOAD_PREFIX}{upload_id}"

    def create(self) -> str:
        self.store.ensure()
        self.sweep()
        upload_id = uuid.uuid4().hex
        fd = os.open(self._path(upload_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        return upload_id

    def size(self, upload_id: str) -> int:
        try:
            return self._path(upload_id).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"upload {upload_id!r} not found") from None

    def append(self, upload_id: str, data: bytes) -> int:
        """Append ``data`` to the spool; return its new size."""
        try:
            with open(self._path(upload_id), "r+b") as fh:
                fh.seek(0, os.SEEK_END)
                fh.write(data)
                return fh.tell()
        except FileNotFoundError:
            raise NotFound(f"upload {upload_id!r} not found") from None

    def finish(self, upload_id: str, digest: str) -> tuple[str, int]:
        """Verify the spooled bytes against ``digest`` and store them as a blob.

        The spool is removed whatever the outcome; a digest mismatch raises
        BadRequest and stores nothing.
        """
        expected = check_digest(digest)
        path = self._path(upload_id)
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            raise NotFound(f"upload {upload_id!r} not found") from None
        try:
            with fh:
                if self.store.has_blob(expected):  # already there: still check what was sent
                    return self._check_only(fh, expected)
                return self.store.write_blob(_read_chunks(fh), expected)
        finally:
            path.unlink(missing_ok=True)

    def _check_only(self, fh: Any, expected: str) -> tuple[str, int]:
        h = hashlib.sha256()
        size = 0
        for chunk in _read_chunks(fh):
            h.update(chunk)
            size += len(chunk)
        actual = "sha256:" + h.hexdigest()
        if actual != expected:
            raise BadRequest(f"digest mismatch, expected {expected!r}, got {actual!r}", param="digest")
        return actual, size

    def cancel(self, upload_id: str) -> None:
        self._path(upload_id).unlink(missing_ok=True)

    def sweep(self, max_age: float = STALE_UPLOAD_SECONDS) -> None:
        """Remove upload spools nobody touched for ``max_age`` seconds."""
        cutoff = time.time() - max_age
        for path in self.store.blobs.glob(UPLOAD_PREFIX + "*"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)
                    log.info("removed stale upload %s", path.name)
            except OSError:
                continue


def _read_chunks(fh: Any, size: int = 1 << 20) -> Iterator[bytes]:
    yield from iter(lambda: fh.read(size), b"")
