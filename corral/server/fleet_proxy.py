"""Fleet mode of ``corral proxy``: one gateway in front of many upstreams (Ollama, Corral, vLLM, llama-server).

The routes are the server's own, each given a fleet endpoint by what it does:

* listings (``/api/tags``, ``/api/ps``, ``/v1/models``) are answered here from
  what discovery learned, merged across upstreams, each entry naming its
  upstream;
* inference (every route that names its model in the body) is routed per
  request by :class:`corral.fleet.routing.Router`: an Ollama or Corral
  upstream gets the request passed through as ``corral proxy`` does; an
  OpenAI-compatible upstream gets OpenAI's own ``/v1`` calls passed through
  and every other dialect's call run by the server's own route handler over
  :class:`corral.fleet.openai_backend.OpenAIBackend` (the Backend seam), so
  an Ollama client can chat with vLLM. A request that fails before its first
  byte reached the client is retried once on another upstream; once a
  stream has started it is not, and its error is the stream's last item;
* model management (create, copy, delete, blobs, pull, push, the registry)
  goes to one upstream, ``?upstream=NAME`` or the fleet's default;
* the gateway's own routes (``/metrics``, the admin log API, beacons) stay local.

Every answer routed to an upstream carries ``X-Corral-Upstream: NAME``; the
request log records ``NAME:reason`` (why the router chose it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from corral import OLLAMA_COMPAT_VERSION
from corral.errors import BadGateway, BadRequest, CorralError, InternalError, ModelNotFound
from corral.fleet.config import FleetConfig
from corral.fleet.discovery import Discovery, merged_openai_models, merged_ps, merged_tags
from corral.fleet.openai_backend import OpenAIBackend
from corral.fleet.routing import Decision, Router, prefix_of
from corral.fleet.state import FleetState, UpstreamState
from corral.gateway.listings import filter_doc
from corral.gateway.service import Gateway
from corral.gateway.upstream import Upstream
from corral.server.app import api_routes, build_app
from corral.server.context import BACKEND_KEY, context_of
from corral.server.errors import DialectRoute
from corral.server.gateway_hooks import gateway_hooks
from corral.server.http import JSON
from corral.server.middleware import GatewayHook
from corral.server.proxy import LOCAL_ROUTES, Relay, relay, twin
from corral.settings import Settings

log = logging.getLogger(__name__)

UPSTREAM_HEADER = "x-corral-upstream"
RETRY_STATUSES = frozenset({502, 503, 504})  # the upstream's own way of saying it cannot answer now
OPENAI_PASSTHROUGH = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass
class Fleet:
    """The fleet's live objects, one per gateway process (``app.state.fleet``)."""

    config: FleetConfig
    state: FleetState = field(init=False)
    router: Router = field(init=False)
    discovery: Discovery = field(init=False)
    upstreams: dict[str, Upstream] = field(init=False)
    backends: dict[str, OpenAIBackend] = field(init=False)

    def __post_init__(self) -> None:
        self.state = FleetState(self.config)
        self.router = Router(self.state)
        self.discovery = Discovery(self.state)
        self.upstreams = {s.name: Upstream(s.url, s.key) for s in self.config.upstreams}
        self.backends = {
            s.name: OpenAIBackend(s.url, key=s.key, name=s.name) for s in self.config.upstreams if s.kind == "openai"
        }

    async def close(self) -> None:
        await self.discovery.close()
        for upstream in self.upstreams.values():
            await upstream.close()
        for backend in self.backends.values():
            await backend.close()


def _fleet(request: Request) -> Fleet:
    return request.app.state.fleet  # type: ignore[no-any-return]


class Tracked(Response):
    """An answer from one upstream: counted as outstanding until its last byte, then judged.

    ``finish(failed)`` runs once the answer has been sent (or the client went
    away), with the reason the upstream failed mid-answer, or None.
    """

    def __init__(self, inner: Response, name: str, finish: Callable[[str | None], None]) -> None:
        self.inner = inner
        self.finish = finish
        self.status_code = inner.status_code
        self.background = None
        self.raw_headers = inner.raw_headers
        inner.raw_headers.append((UPSTREAM_HEADER.encode(), name.encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        failed: str | None = None
        try:
            await self.inner(scope, receive, send)
            if isinstance(self.inner, Relay):
                failed = self.inner.failed
            else:  # a backend stream that failed wrote its error as the last item and noted it
                error = context_of(scope).error
                failed = error if error and not error.startswith("client closed") else None
        finally:
            self.finish(failed)


# ---- inference: routed per request -----------------------------------------------------------------


def _routed(route: DialectRoute) -> Endpoint:
    """The fleet endpoint for an inference route: route, send, fail over once."""
    original: Endpoint = route.endpoint
    passthrough_openai = route.dialect.name == "openai" and route.path in OPENAI_PASSTHROUGH

    async def endpoint(request: Request) -> Response:
        fleet = _fleet(request)
        body = await request.body()
        try:
            parsed = json.loads(body) if body.strip() else {}
        except ValueError:
            raise BadRequest("invalid JSON in request body") from None
        model = parsed.get("model") if isinstance(parsed, dict) else None
        if not isinstance(model, str) or not model:
            raise BadRequest("model is required", param="model")
        prefix = prefix_of(parsed)
        tried: set[str] = set()
        while True:
            decision = fleet.router.route(model, prefix, exclude=tried)
            state = fleet.state.get(decision.upstream)
            try:
                return await _send(request, fleet, state, decision, prefix, original, passthrough_openai)
            except BadGateway as exc:  # nothing reached the client yet
                state.failed(exc.message)
                if tried:
                    raise
                fleet.state.note_failover(decision.upstream)
                tried.add(decision.upstream)
                log.warning(
                    "fleet: %s failed before answering (%s); retrying elsewhere", decision.upstream, exc.message
                )

    return endpoint


async def _send(
    request: Request,
    fleet: Fleet,
    state: UpstreamState,
    decision: Decision,
    prefix: str,
    original: Endpoint,
    passthrough_openai: bool,
) -> Response:
    name = decision.upstream
    ctx = context_of(request)
    ctx.upstream = f"{name}:{decision.reason}"
    tracking = state.track()
    tracking.__enter__()

    def finish(failed: str | None) -> None:
        tracking.__exit__(None, None, None)
        if failed:
            state.failed(failed)
        else:
            state.succeeded()
            state.note_loaded(decision.model)
            fleet.router.record(decision, prefix)

    try:
        if state.spec.kind == "openai" and not passthrough_openai:
            request.scope.setdefault("state", {})[BACKEND_KEY] = fleet.backends[name]
            try:
                inner = await original(request)
            except CorralError as exc:
                if exc.status in RETRY_STATUSES:
                    raise BadGateway(exc.message) from None
                raise
        else:
            inner = await relay(request.scope, request.receive, fleet.upstreams[name], await request.body())
            if inner.status_code in RETRY_STATUSES:
                inner.answer.release()
                raise BadGateway(f"upstream {name} answered {inner.status_code}")
    except BaseException:
        tracking.__exit__(None, None, None)
        raise
    return Tracked(inner, name, finish)


# ---- listings, management ---------------------------------------------------------------------------


def _visible(request: Request, listing: dict[str, Any]) -> dict[str, Any]:
    """A merged listing as the caller's key may see it (only its models, when it has an allowlist)."""
    ctx = context_of(request)
    if ctx.key is None or ctx.key.models is None:
        return listing
    kept = filter_doc(listing, ctx.may_list)
    if kept is None:  # every merged listing has its list; a key must never see one unfiltered
        raise InternalError("merged listing without a model list")
    return kept


async def tags(request: Request) -> Response:
    return JSON(_visible(request, merged_tags(_fleet(request).state)))


async def ps(request: Request) -> Response:
    return JSON(_visible(request, merged_ps(_fleet(request).state)))


async def openai_models(request: Request) -> Response:
    return JSON(_visible(request, merged_openai_models(_fleet(request).state)))


async def openai_model(request: Request) -> Response:
    name = request.path_params["model"]
    for entry in merged_openai_models(_fleet(request).state)["data"]:
        if entry.get("id") in (name, f"{name}:latest") or f"{entry.get('id')}:latest" == name:
            return JSON({**entry, "id": name})
    raise ModelNotFound(name)


async def version(request: Request) -> Response:
    return JSON({"version": OLLAMA_COMPAT_VERSION})


async def managed(request: Request) -> Response:
    """Model management on one upstream: ``?upstream=NAME``, or the fleet's default."""
    fleet = _fleet(request)
    name = request.query_params.get("upstream") or fleet.config.default.name
    spec = fleet.config.upstream(name)
    if spec.kind == "openai":
        raise BadRequest(f"upstream {name!r} is OpenAI-compatible: it has no model management", param="upstream")
    inner = await relay(request.scope, request.receive, fleet.upstreams[name])
    return Tracked(inner, name, lambda failed: None)


LOCAL: dict[str, Endpoint] = {
    "/api/tags": tags,
    "/api/ps": ps,
    "/v1/models": openai_models,
    "/v1/models/{model:path}": openai_model,
    "/api/version": version,
}


def fleet_routes(routes: Sequence[BaseRoute], local: Sequence[BaseRoute]) -> list[BaseRoute]:
    """The server's routes with fleet endpoints (see module docstring); ``local`` ones stay as they are."""
    out: list[BaseRoute] = []
    for route in routes:
        if route in local or not isinstance(route, DialectRoute) or route.path == "/":
            out.append(route)
        elif route.path in LOCAL:
            out.append(twin(route, LOCAL[route.path]))
        elif getattr(route, "model_from", None) == "body":
            out.append(twin(route, _routed(route)))
        else:
            out.append(twin(route, managed))
    return out


def create_fleet_app(
    settings: Settings, config: FleetConfig, *, hooks: Sequence[GatewayHook] = (), gateway: bool = True
) -> Starlette:
    """``corral proxy --fleet``: the gateway in front of every upstream of ``config``."""
    gw = Gateway.open(settings) if gateway else None
    routes = fleet_routes(api_routes(admin_routes=gw is not None), LOCAL_ROUTES)
    all_hooks = [*(gateway_hooks(gw) if gw is not None else []), *hooks]
    fleet = Fleet(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if gw is not None:
            gw.check_bind()
            gw.metrics.set_sources(
                log_backlog=lambda: gw.log.backlog, log_dropped=lambda: gw.log.dropped, upstreams=fleet.state.snapshot
            )
            gw.start()
        app.state.settings = settings
        app.state.fleet = fleet
        app.state.gateway = gw
        await fleet.discovery.start()
        log.info(
            "Corral fleet gateway on %s: %s (%s routing)",
            settings.base_url,
            ", ".join(f"{s.name}={s.url} ({s.kind})" for s in config.upstreams),
            config.routing,
        )
        try:
            yield
        finally:
            try:
                await fleet.close()
            finally:
                if gw is not None:
                    gw.close()

    return build_app(settings, routes, all_hooks, lifespan)
