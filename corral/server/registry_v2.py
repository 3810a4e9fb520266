"""Corral's own registry: the store served read-write as a Docker registry v2.

Other Corral or Ollama servers pull from and push to it: ``GET /v2/``,
manifests (GET/HEAD/PUT), blobs (GET/HEAD with ``Range``) and the upload flow
(POST ``blobs/uploads/`` → 202 + Location, PATCH, PUT ``?digest=``). Uploaded
blobs go through :meth:`Store.write_blob` (sha256 verified before the
rename), manifests through :meth:`Store.write_manifest_raw` (atomic, only
once all blobs exist). The registry's repositories are the store's
default-host models: ``/v2/library/smollm2/manifests/135m`` is the local
``smollm2:135m``. Errors are answered in the registry's ``{"errors": [...]}``
shape by the :data:`REGISTRY` dialect.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from corral.errors import BadRequest, CorralError, NotFound
from corral.registry.server import (
    MAX_MANIFEST_BYTES,
    UploadSessions,
    docker_error,
    parse_content_range,
    parse_manifest,
    repo_name,
)
from corral.server.errors import Dialect, route_factory
from corral.server.http import JSON
from corral.store.names import DEFAULT_HOST, ModelName
from corral.store.store import MEDIA_MANIFEST, Store, check_digest

log = logging.getLogger(__name__)

CHUNK = 1 << 20
API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}


class RegistryProtocolError(CorralError):
    """An error with the registry protocol's own code (``MANIFEST_UNKNOWN``, ``DIGEST_INVALID``...)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


_FALLBACK_CODES = {
    400: "UNSUPPORTED",
    401: "UNAUTHORIZED",
    403: "DENIED",
    404: "NAME_UNKNOWN",
    416: "BLOB_UPLOAD_INVALID",
}


def _render(status: int, message: str, exc: CorralError | None) -> dict[str, object]:
    code = exc.code if isinstance(exc, RegistryProtocolError) else _FALLBACK_CODES.get(status, "UNKNOWN")
    return docker_error(code, message)


REGISTRY = Dialect("registry", _render, headers=API_VERSION_HEADER)
route = route_factory(REGISTRY)


def _store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


def _repo(request: Request, tag: str = "latest") -> ModelName:
    try:
        return repo_name(request.path_params["namespace"], request.path_params["model"], tag)
    except BadRequest as exc:
        raise RegistryProtocolError(400, "NAME_INVALID", exc.message) from None


def _digest(raw: str | None) -> str:
    try:
        return check_digest(raw or "")
    except BadRequest as exc:
        raise RegistryProtocolError(400, "DIGEST_INVALID", exc.message) from None


def _url(request: Request, path: str) -> str:
    """Absolute URL: Ollama's uploader cannot follow a relative Location."""
    return str(request.base_url).rstrip("/") + path


def _prefix(request: Request) -> str:
    return f"/v2/{request.path_params['namespace']}/{request.path_params['model']}"


async def v2_root(request: Request) -> Response:
    return JSON({}, headers=API_VERSION_HEADER)


def _read_manifest(store: Store, names: list[ModelName]) -> bytes | None:
    for name in names:
        try:
            return store.manifest_path(name).read_bytes()
        except OSError:
            continue
    return None


async def manifest_get(request: Request) -> Response:
    reference = request.path_params["reference"]
    names = [_repo(request, reference)]
    host = request.headers.get("host", "").lower()
    if host and host != DEFAULT_HOST:  # also models kept under this server's own address
        try:
            names.append(repo_name(names[0].namespace, names[0].model, reference, host=host))
        except BadRequest:
            pass
    data = await asyncio.to_thread(_read_manifest, _store(request), names)
    if data is None:
        raise RegistryProtocolError(404, "MANIFEST_UNKNOWN", f"manifest unknown: {names[0].display}")
    headers = {
        **API_VERSION_HEADER,
        "Docker-Content-Digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "Content-Length": str(len(data)),
    }
    body = b"" if request.method == "HEAD" else data
    return Response(body, media_type=MEDIA_MANIFEST, headers=headers)


async def manifest_put(request: Request) -> Response:
    reference = request.path_params["reference"]
    name = _repo(request, reference)
    data = await _read_limited(request, MAX_MANIFEST_BYTES)
    store = _store(request)
    try:
        refs = parse_manifest(data)
    except BadRequest as exc:
        raise RegistryProtocolError(400, "MANIFEST_INVALID", exc.message) from None
    missing = [ref.digest for ref in refs if not store.has_blob(ref.digest)]
    if missing:
        raise RegistryProtocolError(400, "MANIFEST_BLOB_UNKNOWN", f"blob unknown to registry: {missing[0]}")
    await asyncio.to_thread(store.write_manifest_raw, name, data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    log.info("registry: stored manifest %s (%s)", name.display, digest[:19])
    return Response(
        status_code=201,
        headers={
            **API_VERSION_HEADER,
            "Docker-Content-Digest": digest,
            "Location": _url(request, f"{_prefix(request)}/manifests/{reference}"),
        },
    )


async def _read_limited(request: Request, limit: int) -> bytes:
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise RegistryProtocolError(400, "MANIFEST_INVALID", "manifest too large")
    return bytes(buf)


async def blob_get(request: Request) -> Response:
    _repo(request)
    digest = _digest(request.path_params["digest"])
    path = _store(request).blob_path(digest)
    if not path.is_file():
        raise RegistryProtocolError(404, "BLOB_UNKNOWN", f"blob unknown to registry: {digest}")
    if request.headers.get("range"):
        log.info("registry: serving %s range %s", digest[:19], request.headers["range"])
    return FileResponse(
        path, media_type="application/octet-stream", headers={**API_VERSION_HEADER, "Docker-Content-Digest": digest}
    )


async def upload_start(request: Request) -> Response:
    _repo(request)
    store = _store(request)
    mount = request.query_params.get("mount")
    if mount and store.has_blob(_digest(mount)):
        return _blob_created(request, _digest(mount))
    sessions = UploadSessions(store)
    upload_id = await asyncio.to_thread(sessions.create)
    digest = request.query_params.get("digest")
    if digest:  # monolithic upload: POST ...?digest= with the whole blob as body
        return await _finish(request, sessions, upload_id, digest)
    return _upload_accepted(request, upload_id, 0)


async def upload_patch(request: Request) -> Response:
    _repo(request)
    sessions = UploadSessions(_store(request))
    upload_id = request.path_params["upload_id"]
    try:
        rng = parse_content_range(request.headers.get("content-range"))
    except BadRequest as exc:
        raise RegistryProtocolError(416, "BLOB_UPLOAD_INVALID", exc.message) from None
    size = await _spool(request, sessions, upload_id, rng[0] if rng else None)
    return _upload_accepted(request, upload_id, size)


async def upload_put(request: Request) -> Response:
    _repo(request)
    sessions = UploadSessions(_store(request))
    return await _finish(request, sessions, request.path_params["upload_id"], request.query_params.get("digest"))


async def upload_status(request: Request) -> Response:
    _repo(request)
    upload_id = request.path_params["upload_id"]
    size = await asyncio.to_thread(UploadSessions(_store(request)).size, upload_id)
    response = _upload_accepted(request, upload_id, size)
    response.status_code = 204
    return response


async def upload_cancel(request: Request) -> Response:
    _repo(request)
    await asyncio.to_thread(UploadSessions(_store(request)).cancel, request.path_params["upload_id"])
    return Response(status_code=204, headers=API_VERSION_HEADER)


async def _spool(request: Request, sessions: UploadSessions, upload_id: str, start: int | None) -> int:
    """Append the request body to the upload's spool file, off the event loop."""
    try:
        size = await asyncio.to_thread(sessions.size, upload_id)
    except NotFound:
        raise RegistryProtocolError(404, "BLOB_UPLOAD_UNKNOWN", f"blob upload unknown: {upload_id}") from None
    if start is not None and start != size:
        raise RegistryProtocolError(416, "BLOB_UPLOAD_INVALID", f"Content-Range starts at {start}, upload is at {size}")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) >= CHUNK:
            size = await asyncio.to_thread(sessions.append, upload_id, bytes(buf))
            buf.clear()
    if buf:
        size = await asyncio.to_thread(sessions.append, upload_id, bytes(buf))
    return size


async def _finish(request: Request, sessions: UploadSessions, upload_id: str, digest: str | None) -> Response:
    if not digest:
        raise RegistryProtocolError(400, "DIGEST_INVALID", "digest query parameter is required")
    expected = _digest(digest)
    try:
        await _spool(request, sessions, upload_id, None)  # the last chunk may come with the PUT
        actual, size = await asyncio.to_thread(sessions.finish, upload_id, expected)
    except BadRequest as exc:
        await asyncio.to_thread(sessions.cancel, upload_id)
        raise RegistryProtocolError(400, "DIGEST_INVALID", exc.message) from None
    except BaseException:
        await asyncio.to_thread(sessions.cancel, upload_id)
        raise
    log.info("registry: stored blob %s (%d bytes)", actual[:19], size)
    return _blob_created(request, actual)


def _blob_created(request: Request, digest: str) -> Response:
    return Response(
        status_code=201,
        headers={
            **API_VERSION_HEADER,
            "Docker-Content-Digest": digest,
            "Location": _url(request, f"{_prefix(request)}/blobs/{digest}"),
        },
    )


def _upload_accepted(request: Request, upload_id: str, size: int) -> Response:
    return Response(
        status_code=202,
        headers={
            **API_VERSION_HEADER,
            "Docker-Upload-UUID": upload_id,
            "Range": f"0-{max(size - 1, 0)}",
            "Location": _url(request, f"{_prefix(request)}/blobs/uploads/{upload_id}"),
        },
    )


_BLOBS = "/v2/{namespace}/{model}/blobs"
routes = [
    route("/v2/", v2_root, methods=["GET"]),
    route("/v2", v2_root, methods=["GET"]),
    route("/v2/{namespace}/{model}/manifests/{reference}", manifest_get, methods=["GET", "HEAD"]),
    route("/v2/{namespace}/{model}/manifests/{reference}", manifest_put, methods=["PUT"], scope="admin"),
    route(_BLOBS + "/uploads/", upload_start, methods=["POST"], scope="admin"),
    route(_BLOBS + "/uploads", upload_start, methods=["POST"], scope="admin"),
    route(_BLOBS + "/uploads/{upload_id}", upload_patch, methods=["PATCH"], scope="admin"),
    route(_BLOBS + "/uploads/{upload_id}", upload_put, methods=["PUT"], scope="admin"),
    route(_BLOBS + "/uploads/{upload_id}", upload_status, methods=["GET"], scope="admin"),
    route(_BLOBS + "/uploads/{upload_id}", upload_cancel, methods=["DELETE"], scope="admin"),
    route(_BLOBS + "/{digest}", blob_get, methods=["GET", "HEAD"]),
]
