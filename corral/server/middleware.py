"""Gateway seam: one ASGI middleware in front of every route.

It gives each request a :class:`RequestContext` (id, start time, the route
and dialect that will answer it, named phase timings) and runs the
registered :class:`GatewayHook` objects around it: ``before`` may reject the
request by raising a :class:`corral.errors.CorralError` (answered in the
route's dialect), ``on_start`` may add response headers, ``after`` sees the
final status and timings once the body has been sent. API keys, the request
log and ``/metrics`` plug in here as hooks.

With no hooks, the only per-request work is the context and the
``X-Request-Id`` header; nothing is added per streamed chunk beyond one call
that passes the message on.

Every response goes through here, 500s included: an exception that escapes
everything below (a route outside the dialect guard, another middleware, a
hook) is logged with its traceback and answered here as a 500 in the
route's dialect, so the access log, hooks and metrics see the status that
was really sent. A request whose client went away (499) is logged as such.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.errors import CorralError
from corral.server.errors import OLLAMA, SCOPE_KEY, DialectRoute, dialect_of
from corral.server.http import JSON

log = logging.getLogger("corral.access")
errors = logging.getLogger(__name__)


@dataclass
class RequestContext:
    id: str
    method: str
    path: str
    route: str  # the matched route's path template ("" when none matched)
    dialect: str
    start: float = field(default_factory=time.perf_counter)
    phases: dict[str, float] = field(default_factory=dict)  # name -> milliseconds
    status: int = 0
    first_byte: float | None = None  # seconds after start
    bytes_out: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class GatewayHook(Protocol):
    async def before(self, ctx: RequestContext, scope: Scope) -> None:
        """Raise a CorralError to reject the request; return to let it through."""

    def on_start(self, ctx: RequestContext, headers: list[tuple[bytes, bytes]]) -> None:
        """Called as the response starts: append headers to ``headers``."""

    async def after(self, ctx: RequestContext) -> None:
        """Called once the response has been sent (or the client went away)."""


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute] = (), hooks: Sequence[GatewayHook] = ()) -> None:
        self.app = app
        self.routes = list(routes)
        self.hooks = list(hooks)

    def _route(self, scope: Scope) -> BaseRoute | None:
        partial = None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route
            if match is Match.PARTIAL and partial is None:
                partial = route
        return partial

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self._route(scope) if self.hooks else None
        dialect = route.dialect if isinstance(route, DialectRoute) else OLLAMA
        ctx = RequestContext(uuid.uuid4().hex[:16], scope["method"], scope["path"],
                             getattr(route, "path", ""), dialect.name)
        scope.setdefault("state", {})["ctx"] = ctx
        request_id = (b"x-request-id", ctx.id.encode())
        hooks = self.hooks
        started = False

        async def wrapped(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                ctx.status = message["status"]
                headers = list(message.get("headers", []))
                headers.append(request_id)
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

        try:
            try:
                for hook in hooks:
                    await hook.before(ctx, scope)
            except CorralError as exc:
                response = JSON(dialect.body(exc.status, exc.message, exc), status_code=exc.status,
                                headers=dict(dialect.headers))
                await response(scope, receive, wrapped)
                return
            await self.app(scope, receive, wrapped)
        except Exception as exc:
            errors.error("unhandled error on %s %s", ctx.method, ctx.path, exc_info=exc)
            if started:  # the response has started: nothing more can be said on it
                return
            answering = dialect_of(scope) if scope.get(SCOPE_KEY) else dialect
            response = JSON(answering.body(500, f"internal error: {exc}"), status_code=500,
                            headers=dict(answering.headers))
            await response(scope, receive, plain)
        finally:
            await self._after(ctx)

    async def _after(self, ctx: RequestContext) -> None:
        log.info("%s %s %s %.1fms", ctx.method, ctx.path, ctx.status, ctx.elapsed * 1000)
        for hook in self.hooks:
            try:
                await hook.after(ctx)
            except Exception:  # a logging hook must never break a response
                log.exception("gateway hook failed")
