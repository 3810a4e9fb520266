"""Application factory: wires settings, store, engine, scheduler and routes.

``create_app(settings)`` returns the Starlette app; nothing here is global.
One exception handler turns :class:`corral.errors.CorralError` into the
error body of the dialect whose route raised it (:mod:`corral.server.errors`)
and records its text on the request's context for the request log.

The gateway (:class:`corral.gateway.service.Gateway`: keys, request log,
metrics) is opened here and plugged in as the middleware's first hooks
(:mod:`corral.server.gateway_hooks`) with its routes (:mod:`corral.server.admin`);
the lifespan refuses a public bind with no key, starts the log writer, and
flushes it on shutdown, after in-flight requests have finished. The
playground page (:mod:`corral.server.playground`) and the OpenAPI document
that describes every route (:mod:`corral.server.openapi`) are routes too.
``gateway=False`` leaves all of it out (a bare server, for comparison).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from corral.backend.local import LocalBackend
from corral.backend.scheduler import Scheduler
from corral.engine.base import Engine
from corral.errors import CorralError
from corral.gateway.db import database_url
from corral.gateway.responses import ResponseStore
from corral.gateway.service import Gateway
from corral.gateway.timing import TIMING_HEADERS
from corral.server import admin, openapi, playground, registry_v2
from corral.server.anthropic import routes as anthropic_routes
from corral.server.context import context_of
from corral.server.errors import dialect_of, error_answer
from corral.server.gateway_hooks import gateway_hooks
from corral.server.http import JSON, Inflight, cross_origin
from corral.server.middleware import GatewayHook, GatewayMiddleware
from corral.server.ollama import inference, models, registry
from corral.server.openai import responses as openai_responses
from corral.server.openai import routes as openai_routes
from corral.server.routing import CachedRouter, RouteTable
from corral.settings import Settings
from corral.store.store import Store

log = logging.getLogger(__name__)

# Ollama's default allowed origins, plus whatever OLLAMA_ORIGINS adds.
_LOCAL_ORIGINS = (
    r"^(https?://(localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1\])(:\d+)?|app://.*|file://.*|tauri://.*|vscode-webview://.*)$"
)


async def _corral_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CorralError)
    return error_answer(request.scope, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: "404 page not found", 405: "405 method not allowed"}.get(exc.status_code, str(exc.detail))
    context_of(request).error = message
    dialect = dialect_of(request.scope)
    return JSON(dialect.body(exc.status_code, message), status_code=exc.status_code, headers=dict(dialect.headers))


async def _unexpected(request: Request, exc: Exception) -> Response:
    """Last resort, outside the middleware: endpoints already turn crashes into InternalError."""
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    context_of(request).error = f"internal error: {exc}"
    return JSON(dialect_of(request.scope).body(500, f"internal error: {exc}"), status_code=500)


class CORS(CORSMiddleware):
    """Starlette's CORS handling, skipped for requests that carry no Origin header.

    Those are not cross-origin requests, and Ollama's CORS layer ignores them
    too. Starlette's would wrap ``send`` for them anyway (to add ``Vary``),
    which puts one more coroutine call on every streamed token.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not cross_origin(scope):
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def api_routes(*, admin_routes: bool = True) -> list[BaseRoute]:
    """Every route Corral serves, in matching order (each carries its dialect and scope)."""
    return [
        *models.routes,
        *inference.routes,
        *registry.routes,
        *registry_v2.routes,
        *(admin.routes if admin_routes else []),
        *openapi.routes,
        *playground.routes,
        *openai_routes.routes,
        *openai_responses.routes,
        *anthropic_routes.routes,
        *openai_routes.fallback,
    ]  # the /v1 catch-all last


def build_app(
    settings: Settings,
    routes: list[BaseRoute],
    hooks: Sequence[GatewayHook],
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]],
) -> Starlette:
    """The Starlette app around ``routes``: the gateway middleware, CORS and the error handlers."""
    allow_all = "*" in settings.origins
    table = RouteTable(routes)  # matched once per request, by the middleware and the router alike
    middleware = [
        Middleware(GatewayMiddleware, table=table, hooks=hooks),
        Middleware(
            CORS,
            allow_origins=["*"] if allow_all else [o for o in settings.origins if "*" not in o],
            allow_origin_regex=None if allow_all else _LOCAL_ORIGINS,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=[*TIMING_HEADERS, "X-Request-Id"],
        ),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={CorralError: _corral_error, HTTPException: _http_error, Exception: _unexpected},
    )
    app.router = CachedRouter(table, lifespan=lifespan)
    app.state.settings = settings
    app.state.inflight = Inflight()  # what a shutdown must end (corral.cli drains it on SIGTERM)
    return app


def create_app(
    settings: Settings, *, engine: Engine | None = None, hooks: Sequence[GatewayHook] = (), gateway: bool = True
) -> Starlette:
    """The server: every dialect over the local backend (store + scheduler + llama.cpp), behind the gateway."""
    if engine is None:
        from corral.engine.llamacpp import LlamaCppEngine

        engine = LlamaCppEngine(num_threads=settings.num_threads, verbose=settings.debug)
    store = Store(settings.models_dir)
    gw = Gateway.open(settings) if gateway else None
    routes = api_routes(admin_routes=gw is not None)
    all_hooks = [*(gateway_hooks(gw) if gw is not None else []), *hooks]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if gw is not None:
            gw.check_bind()
        await asyncio.to_thread(store.claim, settings.partial_pull_ttl)  # and clear a crash's leftovers
        scheduler = Scheduler(settings, engine)
        app.state.settings = settings
        app.state.store = store
        backend = LocalBackend(settings, store, scheduler)
        app.state.backend = backend
        app.state.gateway = gw
        # stored /v1/responses, in the gateway database (sharing the gateway's connections when it is on)
        responses = ResponseStore(gw.db) if gw is not None else ResponseStore.open(database_url(settings))
        app.state.responses = responses
        if gw is not None:
            gw.metrics.set_sources(
                queue_depth=scheduler.queue_depth,
                slots=scheduler.slot_usage,
                loaded=scheduler.loaded_bytes,
                log_backlog=lambda: gw.log.backlog,
                log_dropped=lambda: gw.log.dropped,
            )
            gw.start()
        if settings.starter_models:
            from corral.store.starters import seed_starters

            await seed_starters(store)
        log.info("Corral listening on %s (models: %s)", settings.base_url, settings.models_dir)
        try:
            yield
        finally:
            try:
                await backend.close()
            finally:
                responses.close()
                store.release()
                if gw is not None:
                    gw.close()

    return build_app(settings, routes, all_hooks, lifespan)
