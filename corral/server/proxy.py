"""Logging-proxy mode: ``corral proxy`` in front of someone else's Ollama (or another Corral).

No engine and no store: every Ollama, OpenAI and registry route of the
server is declared again with :func:`forward` as its endpoint, so each keeps
its dialect (errors in the right shape) and its access scope, and passes
through the same gateway middleware (keys, request log, timing, metrics).
The gateway's own routes (``/metrics``, the admin log API, beacons,
``/api/whoami``), the OpenAPI document and the playground page are answered
here, not forwarded; ``GET /`` sends a browser to that page. :func:`forward` sends the
request on as it came, less the client's credentials, and streams the answer
back chunk by chunk as the upstream sends it. An unreachable upstream is a
502 naming it; an upstream that fails mid-stream ends the stream with the
dialect's error item; a client that goes away closes the upstream request.

Each forwarding route also carries :func:`forward_asgi`, the same thing as a
bare ASGI app, which the gateway middleware calls directly when nothing
between it and the endpoint has work to do (no CORS): every layer skipped
there is time added to each request's first token. The listings
(``/api/tags``, ``/api/ps``, ``/v1/models``) are read whole and filtered
when the caller's key has a model allowlist (:mod:`corral.gateway.listings`),
so a key sees the same models through the proxy as from a server itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from corral.errors import BadGateway, ClientGone, CorralError
from corral.gateway.http1 import Answer
from corral.gateway.listings import LISTING_PATHS, filter_listing
from corral.gateway.service import Gateway
from corral.gateway.upstream import AnswerTap, Upstream
from corral.server import admin, openapi, playground
from corral.server.app import api_routes, build_app
from corral.server.context import RequestContext, context_of
from corral.server.errors import Dialect, DialectRoute, dialect_of, error_answer
from corral.server.gateway_hooks import PROXY_TIMING, SERVER_TIMING, gateway_hooks
from corral.server.http import inflight_of, watched
from corral.server.middleware import GatewayHook
from corral.settings import Settings

log = logging.getLogger(__name__)

MAX_SNIFF_BODY = 1 << 20  # request bodies up to this size are read whole (to learn the model); larger ones stream
_STREAMED_TYPES = ("application/x-ndjson", "text/event-stream")
_BODILESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})  # read whole, however they are framed


def _upstream(request: Request) -> Upstream:
    return request.app.state.upstream  # type: ignore[no-any-return]


def _model_of(body: bytes) -> str | None:
    try:
        value = orjson.loads(body)  # on every forwarded request: the fastest parser at hand
    except ValueError:
        return None
    model = value.get("model") or value.get("name") if isinstance(value, dict) else None
    return model if isinstance(model, str) else None


def _target(scope: Scope) -> bytes:
    """The path and query exactly as the client sent them."""
    target: bytes = scope.get("raw_path") or scope["path"].encode()
    return target + b"?" + scope["query_string"] if scope["query_string"] else target


async def _request_body(scope: Scope, receive: Receive) -> bytes | AsyncIterator[bytes]:
    """The body to send on: whole when small (so its model can be read), else streamed as it arrives."""
    size = 0
    for name, value in scope["headers"]:
        if name == b"content-length":
            size = int(value) if value.isdigit() else 0
            break
    if scope["method"] in _BODILESS or 0 < size <= MAX_SNIFF_BODY:
        return b"".join([piece async for piece in _streamed(receive)])
    return _streamed(receive)


async def _streamed(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("client disconnected while sending the request body")
        yield message.get("body", b"")
        if not message.get("more_body"):
            return


async def forward(request: Request) -> Response:
    """Send this request to the upstream and relay its answer (see module docstring)."""
    return await relay(request.scope, request.receive, _upstream(request))


async def forward_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    """:func:`forward` as a bare ASGI app: the gateway middleware calls it directly (see module docstring)."""
    try:
        response: Response = await relay(scope, receive, scope["app"].state.upstream)
    except CorralError as exc:
        response = error_answer(scope, exc)
    await response(scope, receive, send)


async def forward_listing(request: Request) -> Response:
    """A listing (``/api/tags``, ``/api/ps``, ``/v1/models``): filtered by the caller's key's model allowlist
    when it has one, else relayed as it comes."""
    relayed = await relay(request.scope, request.receive, _upstream(request))
    ctx = relayed.ctx
    if ctx.key is None or ctx.key.models is None or relayed.status_code != 200 or request.method == "HEAD":
        return relayed
    answer = relayed.answer
    try:
        body = await answer.read()
    except OSError as exc:
        raise BadGateway(f"upstream {answer.origin} failed mid-answer: {exc}") from None
    finally:
        answer.release()
    ctx.phases["upstream"] = (time.perf_counter() - relayed.start) * 1000
    filtered = filter_listing(body, ctx.may_list)
    if filtered is None:  # never pass on what could not be filtered
        raise BadGateway(f"upstream {answer.origin} answered {request.url.path} with something that is not a listing")
    return Response(filtered, media_type=answer.header(b"content-type") or "application/json")


async def relay(scope: Scope, receive: Receive, upstream: Upstream, body: bytes | None = None) -> Relay:
    """Send this request to ``upstream`` (with ``body`` when the caller has read it already); return its answer
    ready to relay (a BadGateway if unreachable)."""
    ctx = context_of(scope)
    content = await _request_body(scope, receive) if body is None else body
    model: str | None = ctx.path_params.get("model")
    if isinstance(content, bytes) and content:
        model = _model_of(content) or model
    start = time.perf_counter()
    answer = await upstream.open(scope["method"], _target(scope), scope["headers"], content)
    media_type = answer.header(b"content-type") or ""
    ctx.note(model, stream=media_type.startswith(_STREAMED_TYPES))
    return Relay(answer, AnswerTap(media_type), dialect_of(scope), ctx, start)


# Headers the gateway sets on every answer itself: the upstream's own would go out twice. Its request
# id is kept under another name (to find the request in the upstream's log); its timing phases are in
# the proxy's own (as ``upstream``) and, for a stream, in the final ``done`` object it sends.
_REQUEST_ID = b"x-request-id"
_TIMING = frozenset({SERVER_TIMING, PROXY_TIMING})


def _passed_on(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-upstream-request-id" if name == _REQUEST_ID else name, value)
        for name, value in headers
        if name not in _TIMING
    ]


class Relay(Response):
    """The upstream's answer, relayed chunk by chunk; the upstream request is closed however it ends."""

    def __init__(self, answer: Answer, tap: AnswerTap, dialect: Dialect, ctx: RequestContext, start: float) -> None:
        self.answer = answer
        self.tap = tap
        self.dialect = dialect
        self.ctx = ctx
        self.start = start
        self.status_code = answer.status
        self.background = None
        self.raw_headers = _passed_on(Upstream.response_headers(answer.raw_headers))
        self.failed: str | None = None  # why the upstream failed mid-answer, if it did

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await watched(receive, self._relay(send), inflight=inflight_of(scope))
        finally:
            self.answer.release()
            self._record()

    async def _relay(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        next_chunk, feed = self.answer.next, self.tap.feed
        try:
            chunk = await next_chunk()
            if chunk is not None:
                self.ctx.phases["ttft"] = (time.perf_counter() - self.ctx.start) * 1000
            while chunk is not None:
                feed(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                chunk = await next_chunk()
        except OSError as exc:  # the connection broke, or the answer was not valid HTTP
            err = BadGateway(f"upstream {self.answer.origin} failed mid-answer: {str(exc) or type(exc).__name__}")
            log.warning("%s", err.message)
            if self.tap.media_type.startswith(_STREAMED_TYPES):
                await send(
                    {"type": "http.response.body", "body": self.dialect.stream_item(err).encode(), "more_body": True}
                )
            self.ctx.error = self.failed = err.message
        self.ctx.phases["upstream"] = (time.perf_counter() - self.start) * 1000
        self.ctx.answered_at = self.ctx.elapsed
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _record(self) -> None:
        """What the answer said about itself: tokens, done reason, the upstream's own phases."""
        summary = self.tap.summary()
        ctx = self.ctx
        ctx.done_reason = summary.get("done_reason", ctx.done_reason)
        ctx.prompt_tokens = summary.get("prompt_tokens", ctx.prompt_tokens)
        ctx.output_tokens = summary.get("output_tokens", ctx.output_tokens)
        for phase, ms in summary.get("phases", {}).items():
            ctx.phases.setdefault(phase, ms)


def twin(route: DialectRoute, endpoint: Callable[[Request], Awaitable[Response]]) -> DialectRoute:
    """``route`` again (path, methods, dialect, scope, where it names its model) with another endpoint."""
    return DialectRoute(
        route.path,
        endpoint,
        dialect=route.dialect,
        methods=sorted(route.methods or ()),
        name=route.name,
        scope=route.scope,
        model_from=route.model_from,
    )


async def forward_root(request: Request) -> Response:
    """``GET /``: a browser goes to this proxy's own playground; anything else is forwarded (liveness)."""
    if playground.wants_html(request):
        return RedirectResponse(playground.PAGE, status_code=302)
    return await forward(request)


# Answered by the proxy itself: its gateway's routes, its own API description and playground page.
LOCAL_ROUTES: list[BaseRoute] = [*admin.routes, *openapi.routes, *playground.routes]


def forwarding_routes(routes: Sequence[BaseRoute], local: Sequence[BaseRoute]) -> list[BaseRoute]:
    """The same routes, each with :func:`forward` as its endpoint (same path, methods, dialect and
    scope), except those in ``local``, which stay as they are."""
    return [route if route in local or not isinstance(route, DialectRoute) else _forwarding(route) for route in routes]


def _forwarding(route: DialectRoute) -> DialectRoute:
    if route.path == "/":
        return twin(route, forward_root)
    if route.path in LISTING_PATHS:
        return twin(route, forward_listing)
    out = twin(route, forward)
    out.direct = forward_asgi
    return out


def create_proxy_app(
    settings: Settings, upstream: Upstream, *, hooks: Sequence[GatewayHook] = (), gateway: bool = True
) -> Starlette:
    """``corral proxy``: the gateway in front of ``upstream``, with no local engine."""
    gw = Gateway.open(settings) if gateway else None
    routes = forwarding_routes(api_routes(admin_routes=gw is not None), LOCAL_ROUTES)
    all_hooks = [*(gateway_hooks(gw) if gw is not None else []), *hooks]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if gw is not None:
            gw.check_bind()
            gw.metrics.set_sources(log_backlog=lambda: gw.log.backlog, log_dropped=lambda: gw.log.dropped)
            gw.start()
        app.state.settings = settings
        app.state.upstream = upstream
        app.state.gateway = gw
        log.info("Corral proxy on %s, forwarding to %s", settings.base_url, upstream.url)
        try:
            yield
        finally:
            try:
                await upstream.close()
            finally:
                if gw is not None:
                    gw.close()

    return build_app(settings, routes, all_hooks, lifespan)
