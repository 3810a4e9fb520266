"""Gateway seam: one ASGI middleware in front of every route.

It gives each request a :class:`~corral.server.context.RequestContext` (id,
start time, the route and dialect that will answer it, the route's access
scope and path parameters, named phase timings) and runs the registered
:class:`GatewayHook` objects around it: ``before`` may reject the request by
raising a :class:`corral.errors.CorralError` (answered in the route's dialect,
with the error's own headers such as ``Retry-After``), ``on_start`` may add
response headers, ``after`` sees the final status and timings once the body
has been sent. API keys, the request log and ``/metrics`` plug in here as
hooks (``corral.server.gateway_hooks``). The route is found through the
app's :class:`~corral.server.routing.RouteTable`, which the router then
reuses. This middleware prints the ``corral.access`` line of each request,
unless a hook with a true ``logs_access`` attribute (the request log, whose
writer prints it off the event loop) takes that over.

A route may carry a ``direct`` ASGI app that answers it whole (the proxy's
forwarding routes do). When the layers below this middleware would only
pass such a request through (its method is the route's, and no ``Origin``
header asks for CORS), the middleware calls that app itself, with the
route's dialect and path parameters in the scope: Starlette's CORS,
exception middleware, router and request/response wrappers are then off
the hot path, for the request and for each streamed chunk. The app answers
its own errors; anything it raises is this middleware's 500.

A hook that needs the request body (a key's model allowlist) reads it with
:meth:`RequestContext.read_body`; the middleware then hands the same bytes on
to the endpoint. With hooks, the request body's size is counted as it is
read.

Every response goes through here, 500s included: an exception that escapes
everything below (a route outside the dialect guard, another middleware, a
hook) is logged with its traceback and answered here as a 500 in the
route's dialect, so the access log, hooks and metrics see the status that
was really sent. A request whose client went away (499) is logged as such.

With no hooks, the only per-request work is the context and the
``X-Request-Id`` header; nothing is added per streamed chunk beyond one call
that passes the message on.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Protocol

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.errors import CorralError
from corral.gateway.requestlog import log_access
from corral.server.context import STATE_KEY, RequestContext
from corral.server.errors import OLLAMA, SCOPE_KEY, DialectRoute, dialect_of, route_scope
from corral.server.http import JSON, cross_origin
from corral.server.routing import RouteTable

log = logging.getLogger("corral.access")
errors = logging.getLogger(__name__)

__all__ = ["GatewayHook", "GatewayMiddleware", "RequestContext"]


class GatewayHook(Protocol):
    async def before(self, ctx: RequestContext, scope: Scope) -> None:
        """Raise a CorralError to reject the request; return to let it through."""

    def on_start(self, ctx: RequestContext, headers: list[tuple[bytes, bytes]]) -> None:
        """Called as the response starts: append headers to ``headers``."""

    async def after(self, ctx: RequestContext) -> None:
        """Called once the response has been sent (or the client went away)."""


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives ``body`` (already read by a hook) once, then defers to ``receive``."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _counting(ctx: RequestContext, receive: Receive) -> Receive:
    """A receive that adds the size of each body chunk to ``ctx.bytes_in``."""

    async def counting() -> Message:
        message = await receive()
        if message["type"] == "http.request":
            ctx.bytes_in += len(message.get("body", b""))
        return message

    return counting


def _direct(route: BaseRoute | None, scope: Scope) -> ASGIApp | None:
    """The route's own ASGI app, when the layers below this middleware would only pass the request through
    to it: the method is the route's, and no ``Origin`` header asks for CORS."""
    if not isinstance(route, DialectRoute) or route.direct is None:
        return None
    if route.methods is not None and scope["method"] not in route.methods:
        return None
    if cross_origin(scope):
        return None
    return route.direct


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, table: RouteTable, hooks: Sequence[GatewayHook] = ()) -> None:
        self.app = app
        self.table = table
        self.hooks = list(hooks)
        # A hook that logs each request (the gateway's request log) prints its access line; else this does.
        self.access_line = not any(getattr(hook, "logs_access", False) for hook in self.hooks)
        self.match_all = bool(self.hooks) or any(getattr(route, "direct", None) for route in table.routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route, child = self.table.match(scope) if self.match_all else (None, {})
        dialect = route.dialect if isinstance(route, DialectRoute) else OLLAMA
        ctx = RequestContext(
            uuid.uuid4().hex[:16],
            scope["method"],
            scope["path"],
            getattr(route, "path", ""),
            dialect.name,
            route_scope(route),
            getattr(route, "model_from", None),
            child.get("path_params", {}),
        )
        scope.setdefault("state", {})[STATE_KEY] = ctx
        request_id = (b"x-request-id", ctx.id.encode())
        hooks = self.hooks
        started = False

        async def wrapped(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                ctx.status = message["status"]
                headers = list(message.get("headers", []))
                headers.append(request_id)
                if hooks:
                    ctx.started_at = ctx.elapsed
                    for hook in hooks:
                        hook.on_start(ctx, headers)
                message = {**message, "headers": headers}
                started = True
            elif hooks:
                if ctx.first_byte is None:
                    ctx.first_byte = ctx.elapsed
                ctx.bytes_out += len(message.get("body", b""))
            await send(message)

        async def plain(message: Message) -> None:  # the last-resort 500: no hook may stop it going out
            nonlocal started
            if message["type"] == "http.response.start":
                ctx.status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), request_id]}
                started = True
            await send(message)

        if hooks:
            receive = ctx.receive = _counting(ctx, receive)
        try:
            try:
                for hook in hooks:
                    await hook.before(ctx, scope)
            except CorralError as exc:
                ctx.error = exc.message
                await dialect.response(exc)(scope, receive, wrapped)
                return
            if ctx.body is not None:
                receive = _replay(ctx.body, receive)
            direct = _direct(route, scope)
            if direct is not None:
                scope[SCOPE_KEY] = dialect
                scope.update(child)
                await direct(scope, receive, wrapped)
            else:
                await self.app(scope, receive, wrapped)
        except Exception as exc:
            errors.error("unhandled error on %s %s", ctx.method, ctx.path, exc_info=exc)
            if started:  # the response has started: nothing more can be said on it
                return
            ctx.error = f"internal error: {exc}"
            answering = dialect_of(scope) if scope.get(SCOPE_KEY) else dialect
            response = JSON(answering.body(500, ctx.error), status_code=500, headers=dict(answering.headers))
            await response(scope, receive, plain)
        finally:
            await self._after(ctx)

    async def _after(self, ctx: RequestContext) -> None:
        if self.access_line:
            log_access(ctx.method, ctx.path, ctx.status, ctx.elapsed * 1000)
        for hook in self.hooks:
            try:
                await hook.after(ctx)
            except Exception:  # a logging hook must never break a response
                log.exception("gateway hook failed")
