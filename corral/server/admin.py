"""Gateway routes: ``/metrics``, the request log and stats API, and the playground's analytics beacons.

* ``GET /metrics`` (admin): the Prometheus text of
  :class:`corral.gateway.metrics.Metrics`.
* ``GET /api/admin/requests`` (``since``, ``model``, ``status``, ``key``,
  ``limit``, ``offset``) and ``GET /api/admin/stats`` (``since``, ``key``):
  an admin key (or anyone, while auth is off) reads every row; a user key
  reads only its own rows through the same routes, and naming another key
  is a 403.
* ``GET /api/whoami`` (any valid key): the caller's key name and scope,
  and whether this server asks for keys at all; the playground shows it next
  to "connected".
* ``POST /api/playground/analytics``: one JSON event
  (:mod:`corral.gateway.beacons`), at most 64 KiB (413: the
  ``Content-Length`` is checked first, then the bytes as they arrive), bad
  JSON or fields a 400; stored in the request log's database with the
  caller's key name, and counted by the admin stats (in ``beacons``, not
  as a turn of its model).

The database reads run in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import Response

from corral.errors import BadRequest, Forbidden, PayloadTooLarge
from corral.gateway.beacons import MAX_BEACON_BYTES, beacon_dict, parse_beacon
from corral.gateway.periods import parse_period
from corral.gateway.service import Gateway
from corral.server.context import RequestContext, context_of
from corral.server.errors import OLLAMA, route_factory
from corral.server.http import JSON

route = route_factory(OLLAMA)


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


def _since(raw: str | None, default: str | None = None) -> float | None:
    """``since=1h`` (a period back from now, as ``corral logs --since``) as a unix time; None if absent."""
    text = raw or default
    if text is None:
        return None
    try:
        return time.time() - parse_period(text)
    except ValueError as exc:
        raise BadRequest(str(exc), param="since") from None


def _int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise BadRequest(f"invalid {name} {raw!r}: must be a whole number, 0 or more", param=name)
    return value


def _key_filter(ctx: RequestContext, asked: str | None) -> str | None:
    """The key whose rows the caller may read: any (or all) for an admin, its own for a user key."""
    if ctx.is_admin:
        return asked or None
    if asked and asked != ctx.key_name:
        raise Forbidden(f'key "{ctx.key_name}" may only read its own requests', param="key")
    return ctx.key_name


async def metrics(request: Request) -> Response:
    body, content_type = _gateway(request).metrics.render()
    return Response(body, media_type=content_type)


async def list_requests(request: Request) -> Response:
    q = request.query_params
    key = _key_filter(context_of(request), q.get("key"))
    limit, offset = _int(request, "limit", 50), _int(request, "offset", 0)
    rows = await asyncio.to_thread(
        _gateway(request).log.query,
        since=_since(q.get("since")),
        model=q.get("model") or None,
        status=q.get("status") or None,
        key_name=key,
        limit=limit,
        offset=offset,
    )
    return JSON({"requests": rows, "limit": limit, "offset": offset})


async def stats(request: Request) -> Response:
    key = _key_filter(context_of(request), request.query_params.get("key"))
    since = _since(request.query_params.get("since"), "24h")
    return JSON(await asyncio.to_thread(_gateway(request).log.stats, since=since, key_name=key))


async def whoami(request: Request) -> Response:
    ctx = context_of(request)
    return JSON(
        {"key": ctx.key_name, "scope": "admin" if ctx.is_admin else "user", "auth": _gateway(request).auth_required()}
    )


async def analytics(request: Request) -> Response:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BEACON_BYTES:
        raise PayloadTooLarge(f"analytics event is {length} bytes; the limit is {MAX_BEACON_BYTES}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BEACON_BYTES:
            raise PayloadTooLarge(f"analytics event is over the limit of {MAX_BEACON_BYTES} bytes")
        chunks.append(chunk)
    event = parse_beacon(b"".join(chunks))
    # The event's model stays in the beacons table only: on this request's log row it would count the
    # turn twice in the per-model stats (once as /api/chat, once as its beacon).
    _gateway(request).log.record_beacon(beacon_dict(event), context_of(request).key_name)
    return JSON({"status": "accepted"}, status_code=202)


routes = [
    route("/metrics", metrics, methods=["GET"], scope="admin"),
    route("/api/admin/requests", list_requests, methods=["GET"]),
    route("/api/admin/stats", stats, methods=["GET"]),
    route("/api/whoami", whoami, methods=["GET"]),
    route("/api/playground/analytics", analytics, methods=["POST"]),
]
