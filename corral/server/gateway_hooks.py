"""The gateway's HTTP hooks: API keys, scopes and limits; timing headers; the request log and metrics.

Two :class:`~corral.server.middleware.GatewayHook` objects over one
:class:`~corral.gateway.service.Gateway`, made by :func:`gateway_hooks`:

:class:`AuthHook`
    Finds the caller's key (``Authorization: Bearer <key>``, or
    ``x-api-key: <key>`` as the Anthropic SDK sends it, on every route) and
    applies, in order: the route's access scope (declared on the route
    itself: ``open`` routes and CORS preflights need nothing, ``admin``
    routes an admin key), the key's model allowlist (the model named in the
    JSON body or the path, as the route declares), then its rpm/tpm limits.
    It leaves the verified key on the context, so the listings (``/api/tags``,
    ``/api/ps``, ``/v1/models``) show such a key only its models.
    Rejections are 401, 403 and 429 with ``Retry-After``, in the route's
    dialect. It times itself as the ``auth`` phase, and counts each answer's
    prompt and output tokens against the key's tpm once it is done (only for
    keys that have one). Database calls that may wait (every call on
    PostgreSQL, shared rate-limit windows on either backend) run in a worker
    thread, and a key's next limit check waits for its pending token counts,
    so one process never checks before its own earlier answer was counted.
    A key never appears in a log line or an error.

:class:`LogHook`
    Adds ``Server-Timing`` and ``X-SDL-Proxy-Timing`` to every response
    (:mod:`corral.gateway.timing`): a streamed answer's headers leave before
    it ends, so they carry what is known then (auth, queue, load, ttft); the
    full set is in the stream's ``done`` object. Once the response is sent it
    submits one :class:`~corral.gateway.requestlog.RequestRecord` to the
    request log (a queue; the write happens on the log's own thread) and
    counts it in the metrics (a request its handler marked
    :data:`~corral.server.context.UNLOGGED`, a playground asset, is only
    counted).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.types import Scope

from corral.errors import Forbidden, TooManyRequests, Unauthorized
from corral.gateway.keys import ApiKey
from corral.gateway.requestlog import RequestRecord
from corral.gateway.service import CREATE_KEY_HINT, Gateway
from corral.gateway.timing import server_timing
from corral.server.context import UNLOGGED, RequestContext
from corral.server.middleware import GatewayHook

log = logging.getLogger("corral.gateway.http")

SERVER_TIMING = b"server-timing"
T = TypeVar("T")
PROXY_TIMING = b"x-sdl-proxy-timing"


def _secret(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key a request carries: a Bearer token, else an ``x-api-key`` header."""
    api_key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and api_key is None:
            api_key = value.decode("latin-1").strip() or None
    return api_key


def _header(headers: list[tuple[bytes, bytes]], wanted: bytes) -> str | None:
    for name, value in headers:
        if name == wanted:
            return value.decode("latin-1")
    return None


class AuthHook:
    """Keys, scopes, allowlists and rate limits (see module docstring)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._touched: dict[str, float] = {}  # key name -> when its last_used_at write was last sent off
        self._counting: dict[str, set[asyncio.Future[None]]] = {}  # key name -> token counts not yet written

    @staticmethod
    async def _call(blocking: bool, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, in a worker thread when it may block."""
        if not blocking:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def before(self, ctx: RequestContext, scope: Scope) -> None:
        start = time.perf_counter()
        try:
            await self._check(ctx, scope)
        finally:
            ctx.phases["auth"] = (time.perf_counter() - start) * 1000

    async def _check(self, ctx: RequestContext, scope: Scope) -> None:
        if ctx.access == "open" or ctx.method == "OPTIONS":  # a browser cannot attach a key to a preflight
            return
        gateway = self.gateway
        secret = _secret(scope["headers"])
        remote = gateway.db.remote
        key = await self._call(remote, gateway.keys.verify, secret) if secret else None
        if key is None:
            if not await self._call(remote, gateway.auth_required):  # no key (loopback or --no-auth): open
                ctx.is_admin = True
                return
            if secret:
                raise Unauthorized("invalid API key")
            raise Unauthorized(
                "missing API key: send 'Authorization: Bearer <key>' "
                f"(an operator creates one with `{CREATE_KEY_HINT}`)"
            )
        ctx.key_name = key.name
        ctx.key = key
        ctx.is_admin = key.admin
        if ctx.access == "admin" and not key.admin:
            raise Forbidden(f'key "{key.name}" has user scope; {ctx.method} {ctx.path} needs an admin key')
        if key.models is not None and ctx.model_from is not None:
            await self._check_model(ctx, key)
        if key.rpm is None and key.tpm is None:
            return
        pending = self._counting.get(key.name)
        if pending:
            await asyncio.wait(list(pending))
        wait = await self._call(gateway.limiter.blocking, gateway.limiter.check, key)
        if wait is not None:
            raise TooManyRequests(
                f'rate limit of key "{key.name}" reached; retry in {math.ceil(wait)}s', retry_after=wait
            )
        if key.tpm is not None:
            ctx.extra["tpm"] = True

    async def _check_model(self, ctx: RequestContext, key: ApiKey) -> None:
        model: object = None
        if ctx.model_from == "path":
            model = ctx.path_params.get("model")
        else:
            try:
                body = json.loads(await ctx.read_body())
            except ValueError:  # not JSON: the endpoint answers the 400
                return
            if isinstance(body, dict):
                model = body.get("model") or body.get("name")
        if not isinstance(model, str) or not model:  # no model named: the endpoint answers the 400
            return
        ctx.model = model
        if not key.allows_model(model):
            raise Forbidden(f'key "{key.name}" may not use model "{model}"', param="model")

    def on_start(self, ctx: RequestContext, headers: list[tuple[bytes, bytes]]) -> None:
        pass

    async def after(self, ctx: RequestContext) -> None:
        name = ctx.key_name
        if name is None:
            return
        tokens = (ctx.prompt_tokens or 0) + (ctx.output_tokens or 0)
        if tokens and ctx.extra.get("tpm"):
            self._count_tokens(name, tokens)
        # last_used_at: a database write at most every few seconds per key, made off the event loop
        now = time.monotonic()
        if now - self._touched.get(name, -math.inf) >= self.gateway.keys.touch_interval:
            self._touched[name] = now
            asyncio.get_running_loop().run_in_executor(None, self.gateway.keys.touch, name)

    def _count_tokens(self, name: str, tokens: int) -> None:
        limiter = self.gateway.limiter
        if not limiter.blocking:
            limiter.add_tokens(name, tokens)
            return
        future = asyncio.get_running_loop().run_in_executor(None, limiter.add_tokens, name, tokens)
        pending = self._counting.setdefault(name, set())
        pending.add(future)

        def done(f: asyncio.Future[None]) -> None:
            pending.discard(f)
            if not pending and self._counting.get(name) is pending:
                del self._counting[name]

        future.add_done_callback(done)


class LogHook:
    """Timing headers, the request log and metrics (see module docstring)."""

    logs_access = True  # the request log's writer prints the corral.access line of each row it writes

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def before(self, ctx: RequestContext, scope: Scope) -> None:
        client = scope.get("client")
        ctx.client = client[0] if client else None
        ctx.user_agent = _header(scope["headers"], b"user-agent")
        if ctx.method in ("POST", "PUT", "PATCH"):
            length = _header(scope["headers"], b"content-length")
            ctx.extra["content_length"] = int(length) if length and length.isdigit() else None

    def on_start(self, ctx: RequestContext, headers: list[tuple[bytes, bytes]]) -> None:
        phases = ctx.phases
        at_start = (ctx.started_at or 0.0) * 1000
        if ctx.stream and ctx.status < 400:
            # The first event of a stream is produced before its headers go: that is its first token.
            phases.setdefault("ttft", at_start)
            value = server_timing(phases)
        else:
            value = server_timing({**phases, "total": at_start})
        encoded = value.encode("latin-1")
        headers.append((SERVER_TIMING, encoded))
        headers.append((PROXY_TIMING, encoded))

    async def after(self, ctx: RequestContext) -> None:
        record = self.record(ctx)
        if not ctx.extra.get(UNLOGGED):
            self.gateway.log.submit(record)
        self.gateway.metrics.observe(record)

    @staticmethod
    def record(ctx: RequestContext) -> RequestRecord:
        total = ctx.elapsed * 1000
        phases = ctx.phases
        ready = max(ctx.answered_at or 0.0, ctx.started_at or 0.0)
        status, error = ctx.status, ctx.error
        if status == 0:  # no response ever started
            status, error = 499, error or "client closed the connection before the answer started"
        bytes_in = ctx.bytes_in or ctx.extra.get("content_length")
        return RequestRecord(
            id=ctx.id,
            ts=ctx.ts,
            key_name=ctx.key_name,
            client=ctx.client,
            user_agent=ctx.user_agent,
            method=ctx.method,
            path=ctx.path,
            route=ctx.route or None,
            dialect=ctx.dialect,
            model=ctx.model,
            status=status,
            error=error,
            stream=ctx.stream,
            done_reason=ctx.done_reason,
            prompt_tokens=ctx.prompt_tokens,
            output_tokens=ctx.output_tokens,
            bytes_in=bytes_in,
            bytes_out=ctx.bytes_out,
            auth_ms=phases.get("auth"),
            queue_ms=phases.get("queue"),
            load_ms=phases.get("load"),
            prompt_eval_ms=phases.get("prompt_eval"),
            ttft_ms=phases.get("ttft"),
            generation_ms=phases.get("generation"),
            client_io_ms=max(0.0, total - ready * 1000) if ready else None,
            upstream_ms=phases.get("upstream"),
            total_ms=total,
            upstream=ctx.upstream,
        )


def gateway_hooks(gateway: Gateway) -> list[GatewayHook]:
    """The hooks in their order: the log first, so it sees (and records) requests that auth rejects."""
    return [LogHook(gateway), AuthHook(gateway)]
