"""Application factory: wires settings, store, engine, scheduler and routes.

``create_app(settings)`` returns the Starlette app; nothing here is global.
One exception handler turns :class:`corral.errors.CorralError` into the
error body of the dialect whose route raised it (:mod:`corral.server.errors`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from corral.backend.local import LocalBackend
from corral.backend.scheduler import Scheduler
from corral.engine.base import Engine
from corral.errors import ClientGone, CorralError
from corral.server import registry_v2
from corral.server.errors import dialect_of
from corral.server.http import JSON, Inflight
from corral.server.middleware import GatewayHook, GatewayMiddleware
from corral.server.ollama import inference, models, registry
from corral.server.openai import routes as openai_routes
from corral.settings import Settings
from corral.store.store import Store

log = logging.getLogger(__name__)

# Ollama's default allowed origins, plus whatever OLLAMA_ORIGINS adds.
_LOCAL_ORIGINS = r"^(https?://(localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1\])(:\d+)?|app://.*|file://.*|tauri://.*|vscode-webview://.*)$"


async def _corral_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CorralError)
    if isinstance(exc, ClientGone):
        log.info("%s %s: %s", request.method, request.url.path, exc.message)
    elif exc.status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
    dialect = dialect_of(request.scope)
    return JSON(dialect.body(exc.status, exc.message, exc), status_code=exc.status, headers=dict(dialect.headers))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: "404 page not found", 405: "405 method not allowed"}.get(exc.status_code, str(exc.detail))
    dialect = dialect_of(request.scope)
    return JSON(dialect.body(exc.status_code, message), status_code=exc.status_code, headers=dict(dialect.headers))


async def _unexpected(request: Request, exc: Exception) -> Response:
    """Last resort, outside the middleware: endpoints already turn crashes into InternalError."""
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSON(dialect_of(request.scope).body(500, f"internal error: {exc}"), status_code=500)


class CORS(CORSMiddleware):
    """Starlette's CORS handling, skipped for requests that carry no Origin header.

    Those are not cross-origin requests, and Ollama's CORS layer ignores them
    too. Starlette's would wrap ``send`` for them anyway (to add ``Vary``),
    which puts one more coroutine call on every streamed token.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not any(name == b"origin" for name, _ in scope["headers"]):
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, *, engine: Engine | None = None, hooks: Sequence[GatewayHook] = ()) -> Starlette:
    if engine is None:
        from corral.engine.llamacpp import LlamaCppEngine

        engine = LlamaCppEngine(num_threads=settings.num_threads, verbose=settings.debug)
    store = Store(settings.models_dir)
    routes = [*models.routes, *inference.routes, *registry.routes, *registry_v2.routes, *openai_routes.routes,
              *openai_routes.fallback]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(store.claim, settings.partial_pull_ttl)  # and clear a crash's leftovers
        scheduler = Scheduler(settings, engine)
        app.state.settings = settings
        app.state.store = store
        backend = LocalBackend(settings, store, scheduler)
        app.state.backend = backend
        if settings.starter_models:
            from corral.store.starters import seed_starters

            await seed_starters(store)
        log.info("Corral listening on %s (models: %s)", settings.base_url, settings.models_dir)
        try:
            yield
        finally:
            await backend.close()
            store.release()

    allow_all = "*" in settings.origins
    middleware = [
        Middleware(GatewayMiddleware, routes=routes, hooks=hooks),
        Middleware(
            CORS,
            allow_origins=["*"] if allow_all else [o for o in settings.origins if "*" not in o],
            allow_origin_regex=None if allow_all else _LOCAL_ORIGINS,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
            allow_headers=["*"],
        ),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={CorralError: _corral_error, HTTPException: _http_error, Exception: _unexpected},
    )
    app.state.settings = settings
    app.state.inflight = Inflight()  # what a shutdown must end (corral.cli serve drains it on SIGTERM)
    return app
