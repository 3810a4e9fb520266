"""Gateway seam: one ASGI middleware in front of every route.

It gives each request a :class:`RequestContext` (id, start time, named phase
timings) and runs the registered :class:`GatewayHook` objects around it:
``before`` may reject a request (auth), ``after`` sees the final status and
timings once the response body has been fully sent (request log, metrics).
API keys, the SQLite request log and ``/metrics`` plug in here as hooks.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("corral.access")


@dataclass
class RequestContext:
    id: str
    method: str
    path: str
    start: float = field(default_factory=time.perf_counter)
    phases: dict[str, float] = field(default_factory=dict)
    status: int = 0
    first_byte: float | None = None
    bytes_out: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def mark(self, phase: str) -> None:
        self.phases[phase] = time.perf_counter() - self.start

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class GatewayHook(Protocol):
    async def before(self, ctx: RequestContext, scope: Scope) -> tuple[int, bytes] | None:
        """Return (status, body) to reject the request, or None to continue."""

    async def after(self, ctx: RequestContext) -> None: ...


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, hooks: list[GatewayHook] | None = None) -> None:
        self.app = app
        self.hooks = list(hooks or [])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = RequestContext(uuid.uuid4().hex[:16], scope["method"], scope["path"])
        scope.setdefault("state", {})["ctx"] = ctx
        for hook in self.hooks:
            rejected = await hook.before(ctx, scope)
            if rejected is not None:
                status, body = rejected
                ctx.status = status
                await send({"type": "http.response.start", "status": status,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})
                await self._after(ctx)
                return

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                ctx.status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", ctx.id.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                if ctx.first_byte is None:
                    ctx.first_byte = ctx.elapsed
                ctx.bytes_out += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            await self._after(ctx)

    async def _after(self, ctx: RequestContext) -> None:
        log.info("%s %s %s %.1fms", ctx.method, ctx.path, ctx.status, ctx.elapsed * 1000)
        for hook in self.hooks:
            try:
                await hook.after(ctx)
            except Exception:  # a logging hook must never break a response
                log.exception("gateway hook failed")
