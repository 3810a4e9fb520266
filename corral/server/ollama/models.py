"""Ollama dialect, model routes: tags, show, ps, version, create, copy, delete, blobs.

Handlers translate between the wire and :mod:`corral.store`; slow work
(hashing, conversion, quantization) runs in a worker thread and streams
Ollama's progress statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from corral import OLLAMA_COMPAT_VERSION
from corral.backend.base import Backend
from corral.errors import BadRequest, NotFound
from corral.server.context import backend_of, context_of
from corral.server.errors import OLLAMA, route_factory
from corral.server.http import JSON, dumps, read_json, stream_events
from corral.server.ollama.types import CopyRequest, CreateRequest, DeleteRequest, ShowRequest, parse_request
from corral.server.playground import PAGE, wants_html
from corral.store.create import CreateSpec, create_model, validate_spec
from corral.store.names import ModelName
from corral.store.store import Store, check_digest, now_iso

route = route_factory(OLLAMA)


def _backend(request: Request) -> Backend:
    return backend_of(request)


def _store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


async def root(request: Request) -> Response:
    """``Ollama is running`` for API clients; a browser is sent to the playground page."""
    if wants_html(request):
        return RedirectResponse(PAGE, status_code=302)
    return PlainTextResponse("Ollama is running")


async def version(request: Request) -> Response:
    return JSON({"version": OLLAMA_COMPAT_VERSION})


async def tags(request: Request) -> Response:
    ctx = context_of(request)
    models = [
        {
            "name": m.name,
            "model": m.name,
            "modified_at": now_iso(m.modified_at),
            "size": m.size,
            "digest": m.digest,
            "details": m.details,
        }
        for m in await _backend(request).models()
        if ctx.may_list(m.name)  # a key with a model allowlist sees only those models
    ]
    return JSON({"models": models})


async def show(request: Request) -> Response:
    req: ShowRequest = parse_request(ShowRequest, await read_json(request))
    context_of(request).note(req.target)
    if not req.target:
        raise BadRequest("model is required", param="model")
    info = await _backend(request).show(req.target, verbose=req.verbose)
    out: dict[str, Any] = {
        "license": "\n".join(info.license) if info.license else None,
        "modelfile": info.modelfile,
        "parameters": "\n".join(_param_lines(info.parameters)) if info.parameters else None,
        "template": info.template,
        "system": info.system,
        "details": info.details,
        "messages": info.messages or None,
        "model_info": info.model_info,
        "capabilities": info.capabilities,
        "modified_at": now_iso(info.modified_at),
    }
    return JSON({k: v for k, v in out.items() if v is not None})


def _param_lines(params: dict[str, Any]) -> list[str]:
    lines = []
    for key, value in params.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            text = f'"{v}"' if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
            lines.append(f"{key:<30} {text}")
    return lines


async def ps(request: Request) -> Response:
    ctx = context_of(request)
    models = [
        {
            "name": m.name,
            "model": m.name,
            "size": m.size,
            "digest": m.digest,
            "details": m.details,
            "expires_at": m.expires_at.isoformat().replace("+00:00", "Z"),
            "size_vram": m.size_vram,
            "context_length": m.context_length,
        }
        for m in await _backend(request).running()
        if ctx.may_list(m.name)
    ]
    return JSON({"models": models})


# ---- create / copy / delete / blobs ------------------------------------------------


async def _thread_stream(gen: Iterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """Drive a blocking generator from a worker thread."""
    sentinel = object()
    while True:
        item = await asyncio.to_thread(next, gen, sentinel)
        if item is sentinel:
            return
        yield item  # type: ignore[misc]


async def create(request: Request) -> Response:
    req: CreateRequest = parse_request(CreateRequest, await read_json(request))
    if not req.target:
        raise BadRequest("model is required", param="model")
    ModelName.parse(req.target)
    licenses = [req.license] if isinstance(req.license, str) else list(req.license or [])
    spec = CreateSpec(
        name=req.target,
        from_=req.from_,
        files=dict(req.files or {}),
        adapters=dict(req.adapters or {}),
        template=req.template,
        system=req.system,
        license=licenses,
        parameters=dict(req.parameters or {}),
        messages=[m.model_dump(exclude_none=True) for m in req.messages] if req.messages is not None else None,
        quantize=req.quantize,
    )
    if req.modelfile and not (spec.from_ or spec.files):
        raise BadRequest("the legacy 'modelfile' field is not supported; send 'from'/'files' (ollama >= 0.5)")
    await asyncio.to_thread(validate_spec, _store(request), spec)
    events = _thread_stream(create_model(_store(request), spec))
    if req.stream is False:
        last: dict[str, Any] = {}
        async for ev in events:
            last = ev
        return JSON(last)

    async def lines() -> AsyncIterator[str]:
        async for ev in events:
            yield dumps(ev) + "\n"

    return await stream_events(lines(), dialect=OLLAMA)


async def copy(request: Request) -> Response:
    req: CopyRequest = parse_request(CopyRequest, await read_json(request))
    ModelName.parse(req.destination)
    await asyncio.to_thread(_store(request).copy, req.source, req.destination)
    return Response(status_code=200)


async def delete(request: Request) -> Response:
    req: DeleteRequest = parse_request(DeleteRequest, await read_json(request))
    if not req.target:
        raise BadRequest("model is required", param="model")
    name = ModelName.parse(req.target)
    await _backend(request).unload(name.display)
    await asyncio.to_thread(_store(request).delete, req.target)
    return Response(status_code=200)


async def blob_head(request: Request) -> Response:
    digest = check_digest(request.path_params["digest"])
    if not _store(request).has_blob(digest):
        raise NotFound(f"blob {digest} not found")
    return Response(status_code=200)


async def blob_post(request: Request) -> Response:
    digest = check_digest(request.path_params["digest"])
    store = _store(request)
    if store.has_blob(digest):
        async for _ in request.stream():
            pass
        return Response(status_code=201)
    # Spool the body to disk chunk by chunk from a worker thread.
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=16)
    loop = asyncio.get_running_loop()

    def chunks() -> Iterator[bytes]:
        while True:
            item = asyncio.run_coroutine_threadsafe(queue.get(), loop).result()
            if item is None:
                return
            yield item

    task = asyncio.ensure_future(asyncio.to_thread(store.write_blob, chunks(), digest))
    try:
        async for chunk in request.stream():
            if chunk:
                await queue.put(chunk)
    except BaseException:
        # The body broke off (the client went away): the writer sees a short blob, fails its digest
        # check and removes its temp file; wait for that, and report the body's error, not the digest's.
        await queue.put(None)
        with contextlib.suppress(Exception):
            await task
        raise
    await queue.put(None)
    await task
    return Response(status_code=201)


routes = [
    route("/", root, methods=["GET", "HEAD"], scope="open"),
    route("/api/version", version, methods=["GET", "HEAD"], scope="open"),
    route("/api/tags", tags, methods=["GET", "HEAD"]),
    route("/api/show", show, methods=["POST"], model_from="body"),
    route("/api/ps", ps, methods=["GET"]),
    route("/api/create", create, methods=["POST"], scope="admin"),
    route("/api/copy", copy, methods=["POST"], scope="admin"),
    route("/api/delete", delete, methods=["DELETE"], scope="admin"),
    route("/api/blobs/{digest}", blob_head, methods=["HEAD"], scope="admin"),
    route("/api/blobs/{digest}", blob_post, methods=["POST"], scope="admin"),
]
