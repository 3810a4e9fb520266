"""Ollama dialect, registry routes: ``/api/pull`` and ``/api/push``.

``/api/pull`` and ``/api/push`` translate Ollama's requests into
:mod:`corral.registry.client` calls and stream its progress as NDJSON (or
answer only the last status with ``"stream": false``). Errors found before
the first status (bad name, missing model, manifest 404, registry down) get
a 4xx/5xx status; later ones become the stream's last line. The key the
settings hold for the target's registry host (``CORRAL_REGISTRY_KEYS``) is
handed to the client for that one registry.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from corral.errors import BadRequest
from corral.registry.client import pull_model, push_model
from corral.server.errors import OLLAMA, route_factory
from corral.server.http import JSON, dumps, read_json, stream_events
from corral.server.ollama.types import PullRequest, PushRequest, parse_request
from corral.settings import Settings
from corral.store.names import ModelName
from corral.store.store import Store

route = route_factory(OLLAMA)


def _store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


def _registry_key(request: Request, name: ModelName) -> str | None:
    settings: Settings = request.app.state.settings
    return settings.registry_key(name.host)


# ---- /api/pull, /api/push ----------------------------------------------------


async def _respond(events: AsyncGenerator[dict[str, Any], None], stream: bool | None) -> Response:
    if stream is False:
        last: dict[str, Any] = {}
        async with contextlib.aclosing(events):
            async for event in events:
                last = event
        return JSON(last)

    async def lines() -> AsyncIterator[str]:
        async with contextlib.aclosing(events):
            async for event in events:
                yield dumps(event) + "\n"

    return await stream_events(lines(), dialect=OLLAMA)


def _target(req: PullRequest) -> ModelName:
    """Validate the name before anything touches the disk or the network."""
    if not req.target:
        raise BadRequest("model is required", param="model")
    name = ModelName.parse(req.target)
    if req.target.strip().lower().startswith("http://") and not req.insecure:
        raise BadRequest("insecure protocol http")  # as Ollama: plain http needs "insecure"
    return name


async def pull(request: Request) -> Response:
    req: PullRequest = parse_request(PullRequest, await read_json(request))
    name = _target(req)
    key = _registry_key(request, name)
    return await _respond(pull_model(_store(request), name, insecure=req.insecure, key=key), req.stream)


async def push(request: Request) -> Response:
    req: PushRequest = parse_request(PushRequest, await read_json(request))
    name = _target(req)
    key = _registry_key(request, name)
    return await _respond(push_model(_store(request), name, insecure=req.insecure, key=key), req.stream)


routes = [
    route("/api/pull", pull, methods=["POST"], scope="admin"),
    route("/api/push", push, methods=["POST"], scope="admin"),
]
