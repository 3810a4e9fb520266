"""Registry client: pull and push models over the Docker registry v2 protocol.

Owns Ollama's ``PullModel``/``PushModel`` behaviour, without any web
framework: :func:`pull_model` and :func:`push_model` are async generators of
Ollama's progress dicts (``pulling manifest``, ``pulling <digest12>`` with
``total``/``completed``, ``verifying sha256 digest``, ``writing manifest``,
``success``; ``retrieving manifest``, ``pushing <digest12>``, ``pushing
manifest``, ``success``). Everything that can fail before the first status
(bad manifest, registry unreachable, model missing) raises before the first
yield, so the HTTP layer can still answer with a proper status code.

Downloads stream with ``httpx.AsyncClient`` into ``blobs/partial-sha256-<hex>``
(a name :meth:`Store.gc` never touches and no reader takes for a blob); a
later pull hashes what is there and continues with ``Range: bytes=<have>-``.
The full sha256 is checked before the atomic rename to ``sha256-<hex>``, and
the manifest is written only after every blob is in place, so a crash at any
point leaves neither a manifest nor an invalid blob behind. File I/O and
hashing run in worker threads.

The caller may pass the operator's API key for the model's registry host
(``CORRAL_REGISTRY_KEYS``, for a Corral with keys); :mod:`corral.registry.remote`
sends it to that registry alone and keeps it out of logs and errors.
Registries that answer ``401`` with a Docker token challenge
(``WWW-Authenticate: Bearer realm="https://..."``) still get the anonymous
token flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import IO, Any

import httpx

from corral.errors import BadRequest, NotFound
from corral.registry.remote import Registry, RegistryError
from corral.registry.server import MAX_MANIFEST_BYTES, BlobRef, parse_manifest
from corral.store.names import ModelName
from corral.store.store import MEDIA_MANIFEST, Store, check_digest

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes per disk write / upload read
PROGRESS_INTERVAL = 0.06  # seconds between progress lines, as Ollama's ticker
UPLOAD_PART = 100_000_000  # Ollama's minUploadPartSize
MAX_RETRIES = 3  # re-tries of a blob transfer broken mid-body
PARTIAL_PREFIX = "partial-"

# One download per digest at a time in this process; concurrent pulls of the
# same blob mirror the running one's progress (Ollama's blobDownloadManager).
_downloads: dict[str, asyncio.Lock] = {}


def partial_path(store: Store, digest: str) -> Path:
    """Where a download of ``digest`` accumulates before it is verified."""
    return store.blobs / (PARTIAL_PREFIX + check_digest(digest).replace(":", "-"))


def _short(digest: str) -> str:
    return digest[7:19]


def _progress(verb: str, digest: str, total: int, completed: int) -> dict[str, Any]:
    return {"status": f"{verb} {_short(digest)}", "digest": digest, "total": total, "completed": completed}


def _unique(refs: list[BlobRef]) -> list[BlobRef]:
    seen: set[str] = set()
    out = []
    for ref in refs:
        if ref.digest not in seen:
            seen.add(ref.digest)
            out.append(ref)
    return out


# ---- pull -------------------------------------------------------------------


async def pull_model(
    store: Store,
    name: ModelName,
    *,
    insecure: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    key: str | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """Pull ``name`` from the registry its host names, yielding Ollama's statuses.

    ``key``: the API key for that registry (sent to it alone; see the module docstring).
    """
    reg = Registry(name, insecure, transport, key)
    try:
        old = await asyncio.to_thread(_old_refs, store, name)
        raw = await _get_manifest(reg, name)
        try:
            refs = _unique(parse_manifest(raw))
        except BadRequest as exc:
            raise RegistryError(f"pull model manifest: {exc.message}") from None
        yield {"status": "pulling manifest"}
        for attempt in range(2):
            for ref in refs:
                async with contextlib.aclosing(_download(reg, store, ref)) as events:
                    async for event in events:
                        yield event
            yield {"status": "verifying sha256 digest"}  # each blob was verified before its rename
            yield {"status": "writing manifest"}
            try:
                await asyncio.to_thread(store.write_manifest_raw, name, raw)
                break
            except BadRequest:  # a blob vanished meanwhile (gc from a concurrent delete): fetch again
                if attempt:
                    raise
                log.warning("a blob of %s disappeared before its manifest was written; retrying", name)
        stale = old - {ref.digest for ref in refs}
        if stale:
            yield {"status": "removing unused layers"}
            await asyncio.to_thread(_remove_unused, store, stale)
        log.info("pulled %s", name.display)
        yield {"status": "success"}
    finally:
        await reg.aclose()


async def _get_manifest(reg: Registry, name: ModelName) -> bytes:
    """GET the manifest, refusing to buffer more than a manifest can sensibly be."""
    what = "pull model manifest"
    resp = await reg.open("GET", reg.url("manifests", name.tag), what=what, headers={"Accept": MEDIA_MANIFEST})
    buf = bytearray()
    try:
        async for chunk in resp.aiter_bytes():
            buf += chunk
            if len(buf) > MAX_MANIFEST_BYTES:
                raise RegistryError(f"{what}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
    except httpx.TransportError as exc:
        raise RegistryError(f"{what}: {reg.describe(exc)}") from None
    finally:
        await resp.aclose()
    return bytes(buf)


def _old_refs(store: Store, name: ModelName) -> set[str]:
    try:
        return {ref.digest for ref in parse_manifest(store.manifest_path(name).read_bytes())}
    except (OSError, BadRequest):
        return set()


def _remove_unused(store: Store, digests: set[str]) -> None:
    """Ollama's deleteUnusedLayers: drop the old manifest's blobs nobody references now."""
    for digest in digests - store.referenced():
        store.blob_path(digest).unlink(missing_ok=True)


async def _download(reg: Registry, store: Store, ref: BlobRef) -> AsyncGenerator[dict[str, Any], None]:
    final = store.blob_path(ref.digest)
    if final.is_file():
        size = final.stat().st_size
        yield _progress("pulling", ref.digest, size, size)
        return
    lock = _downloads.setdefault(ref.digest, asyncio.Lock())
    partial = partial_path(store, ref.digest)
    while lock.locked():  # another pull is fetching this blob: mirror its progress
        yield _progress("pulling", ref.digest, ref.size, _file_size(partial))
        await asyncio.sleep(0.25)
    async with lock:
        if final.is_file():
            yield _progress("pulling", ref.digest, ref.size, ref.size)
            return
        async with contextlib.aclosing(_fetch(reg, store, ref, partial)) as events:
            async for event in events:
                yield event


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class _Partial:
    """An exclusively locked partial download and the running sha256 of its bytes.

    Methods do blocking I/O: call them from a worker thread.
    """

    def __init__(self, path: Path, fh: IO[bytes]) -> None:
        self.path = path
        self.fh = fh
        self.hasher = hashlib.sha256()
        self.have = 0
        self.resumed_from = 0

    @classmethod
    def open(cls, path: Path) -> _Partial:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+b")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise RegistryError(f"{path.name} is being downloaded by another process") from None
        part = cls(path, fh)
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            part.hasher.update(chunk)
            part.have += len(chunk)
        part.resumed_from = part.have
        return part

    def write(self, data: bytes) -> int:
        self.fh.write(data)
        self.hasher.update(data)
        self.have += len(data)
        return self.have

    def reset(self) -> None:
        self.fh.seek(0)
        self.fh.truncate()
        self.hasher = hashlib.sha256()
        self.have = self.resumed_from = 0

    def digest(self) -> str:
        return "sha256:" + self.hasher.hexdigest()

    def commit(self, final: Path) -> None:
        """fsync, then atomically rename to the blob's real name."""
        self.fh.flush()
        os.fsync(self.fh.fileno())
        os.replace(self.path, final)
        with contextlib.suppress(OSError):
            fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.fh.flush()
        self.fh.close()


async def _fetch(reg: Registry, store: Store, ref: BlobRef, partial: Path) -> AsyncGenerator[dict[str, Any], None]:
    """Download (or resume) one blob into its partial file, verify it, rename it."""
    part = await asyncio.to_thread(_Partial.open, partial)
    try:
        total = ref.size
        if part.resumed_from:
            log.info("resuming %s at byte %d of %d", _short(ref.digest), part.have, total)
        yield _progress("pulling", ref.digest, total, part.have)
        failures = 0
        restarted = False
        while True:
            if total and part.have > total:
                await asyncio.to_thread(part.reset)
            if not total or part.have < total:
                last_time, last_bytes = time.monotonic(), part.have
                try:
                    async with contextlib.aclosing(_stream_into(reg, ref.digest, part)) as chunks:
                        async for have, size in chunks:
                            total = total or size
                            if total and have > total:
                                await asyncio.to_thread(part.reset)
                                raise RegistryError(
                                    f"pulling {_short(ref.digest)}: registry sent more than "
                                    f"the {total} bytes the manifest lists"
                                )
                            now = time.monotonic()
                            if now - last_time >= PROGRESS_INTERVAL or have - last_bytes >= max(total // 50, CHUNK):
                                last_time, last_bytes = now, have
                                yield _progress("pulling", ref.digest, total, have)
                except httpx.TransportError as exc:
                    failures += 1
                    if failures > MAX_RETRIES:
                        raise RegistryError(f"pulling {_short(ref.digest)}: {reg.describe(exc)}") from None
                    log.info("%s broke off at byte %d (%s); resuming", _short(ref.digest), part.have, exc)
                    await asyncio.sleep(0.5 * failures)
                    continue
            if total and part.have < total:
                failures += 1
                if failures > MAX_RETRIES:
                    raise RegistryError(f"pulling {_short(ref.digest)}: registry sent {part.have} of {total} bytes")
                continue
            actual = part.digest()
            if actual == ref.digest:
                break
            resumed = part.resumed_from > 0
            await asyncio.to_thread(part.reset)
            if resumed and not restarted:  # the kept bytes were bad (e.g. a crash mid-write): start over once
                log.warning("resumed download of %s failed verification; starting over", _short(ref.digest))
                restarted = True
                continue
            raise RegistryError(f"digest mismatch, file must be downloaded again: want {ref.digest}, got {actual}")
        await asyncio.to_thread(part.commit, store.blob_path(ref.digest))
        yield _progress("pulling", ref.digest, part.have, part.have)
    finally:
        await asyncio.to_thread(part.close)


async def _stream_into(reg: Registry, digest: str, part: _Partial) -> AsyncGenerator[tuple[int, int], None]:
    """One ranged GET appended to ``part``; yields (bytes on disk, blob size) after each write."""
    headers = {"Accept-Encoding": "identity"}
    if part.have:
        headers["Range"] = f"bytes={part.have}-"
    resp = await reg.open("GET", reg.url("blobs", digest), what=f"pulling {_short(digest)}", headers=headers)
    try:
        size = _blob_size(resp, part.have)
        if part.have and resp.status_code == 200:  # the registry ignored Range: start over
            log.info("registry ignored Range for %s; downloading from the start", _short(digest))
            await asyncio.to_thread(part.reset)
        elif resp.status_code == 206 and _range_start(resp) != part.have:
            raise RegistryError(f"pulling {_short(digest)}: registry answered the wrong range")
        buf = bytearray()
        try:
            async for chunk in resp.aiter_bytes():
                buf += chunk
                if len(buf) >= CHUNK:
                    have = await asyncio.to_thread(part.write, bytes(buf))
                    buf.clear()
                    yield have, size
        finally:  # keep whatever arrived, even when the transfer broke off
            if buf:
                await asyncio.to_thread(part.write, bytes(buf))
        yield part.have, size
    finally:
        await resp.aclose()


def _range_start(resp: httpx.Response) -> int:
    m = re.match(r"bytes (\d+)-", resp.headers.get("content-range", ""))
    return int(m.group(1)) if m else -1


def _blob_size(resp: httpx.Response, have: int) -> int:
    m = re.match(r"bytes \d+-\d+/(\d+)", resp.headers.get("content-range", ""))
    if m:
        return int(m.group(1))
    length = resp.headers.get("content-length", "")
    return int(length) + (have if resp.status_code == 206 else 0) if length.isdigit() else 0


# ---- push -------------------------------------------------------------------


async def push_model(
    store: Store,
    name: ModelName,
    *,
    insecure: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    key: str | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """Push ``name`` to the registry its host names, yielding Ollama's statuses.

    ``key``: the API key for that registry (sent to it alone; see the module docstring).
    """
    local = await asyncio.to_thread(store.get, name)
    raw = await asyncio.to_thread(store.manifest_path(local.name).read_bytes)
    refs = _unique(parse_manifest(raw))
    for ref in refs:
        if not store.has_blob(ref.digest):
            raise NotFound(f"blob {ref.digest} of {name.display} is missing from the store")
    reg = Registry(name, insecure, transport, key)
    try:
        present = {}
        for ref in refs:  # HEAD every blob first: an unreachable registry fails before streaming
            resp = await reg.request(
                "HEAD", reg.url("blobs", ref.digest), what=f"pushing {_short(ref.digest)}", ok=(404,)
            )
            present[ref.digest] = resp.status_code == 200
        yield {"status": "retrieving manifest"}
        for ref in refs:
            if present[ref.digest]:
                yield _progress("pushing", ref.digest, ref.size, ref.size)
                continue
            async with contextlib.aclosing(_upload(reg, store, ref)) as events:
                async for event in events:
                    yield event
        yield {"status": "pushing manifest"}
        await reg.request(
            "PUT",
            reg.url("manifests", name.tag),
            what="pushing manifest",
            headers={"Content-Type": MEDIA_MANIFEST},
            content=raw,
        )
        log.info("pushed %s", name.display)
        yield {"status": "success"}
    finally:
        await reg.aclose()


def _location(resp: httpx.Response) -> httpx.URL:
    loc = resp.headers.get("docker-upload-location") or resp.headers.get("location")
    if not loc:
        raise RegistryError(f"registry answered {resp.status_code} without an upload location")
    return resp.url.join(loc)


async def _upload(reg: Registry, store: Store, ref: BlobRef) -> AsyncGenerator[dict[str, Any], None]:
    """POST an upload session, PATCH the blob in parts, PUT ``?digest=`` to finish."""
    path = store.blob_path(ref.digest)
    total = await asyncio.to_thread(_file_size, path)
    what = f"pushing {_short(ref.digest)}"
    yield _progress("pushing", ref.digest, total, 0)
    resp = await reg.request("POST", f"{reg.base}/v2/{reg.repo}/blobs/uploads/", what=what)
    if resp.status_code == 201:  # the registry mounted it
        yield _progress("pushing", ref.digest, total, total)
        return
    location = _location(resp)
    offset = 0
    while offset < total:
        length = min(UPLOAD_PART, total - offset)
        sent = [0]
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(length),
            "Content-Range": f"{offset}-{offset + length - 1}",
        }
        task = asyncio.ensure_future(
            reg.request("PATCH", location, what=what, headers=headers, content=_read_part(path, offset, length, sent))
        )
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=PROGRESS_INTERVAL * 2)
                yield _progress("pushing", ref.digest, total, offset + sent[0])
                if done:
                    break
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        location = _location(task.result())
        offset += length
    finish = location.copy_merge_params({"digest": ref.digest})
    await reg.request(
        "PUT", finish, what=what, headers={"Content-Type": "application/octet-stream", "Content-Length": "0"}
    )
    yield _progress("pushing", ref.digest, total, total)


async def _read_part(path: Path, offset: int, length: int, sent: list[int]) -> AsyncIterator[bytes]:
    fh = await asyncio.to_thread(open, path, "rb")
    try:
        await asyncio.to_thread(fh.seek, offset)
        left = length
        while left:
            chunk = await asyncio.to_thread(fh.read, min(CHUNK, left))
            if not chunk:
                raise RegistryError(f"{path.name} shrank while it was being pushed")
            left -= len(chunk)
            sent[0] += len(chunk)
            yield chunk
    finally:
        fh.close()
