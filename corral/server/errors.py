"""Error rendering: one renderer per dialect, picked by the route that matched.

The exception hierarchy (:mod:`corral.errors`) carries an HTTP status and a
message and knows nothing of wire shapes. A :class:`Dialect` turns one into
its own body: Ollama's ``{"error": "..."}``, OpenAI's error object,
Anthropic's ``{"type": "error", "error": {...}}``, the registry's
``{"errors": [...]}``. Every route is a :class:`DialectRoute`, which
records its dialect in the ASGI scope; the app's exception handlers, and a
stream that fails after it started, read it from there. A request that
matched no route is answered in Ollama's shape, as Ollama answers it.

Each route also declares who may call it, where it is declared: its
``scope`` is ``"open"`` (no key ever: ``GET /``, ``/api/version``),
``"user"`` (the default: any valid key) or ``"admin"`` (model management,
registry writes, ``/metrics``); and ``model_from`` says where a request names
its model (``"body"``: the JSON body's ``model``; ``"path"``: the ``model``
path parameter), so a key's model allowlist can be enforced before the
handler runs. :func:`route_scope` reads the scope of any route object; a
route of another kind (a static ``Mount`` for the playground, say) opts in
by carrying a ``scope`` attribute of its own.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from corral.errors import ClientGone, CorralError, InternalError
from corral.server.context import context_of
from corral.server.http import JSON, dumps

log = logging.getLogger(__name__)

SCOPE_KEY = "corral.dialect"

Renderer = Callable[[int, str, "CorralError | None"], dict[str, Any]]
Access = Literal["open", "user", "admin"]
ModelFrom = Literal["body", "path"]
ACCESS_LEVELS: tuple[Access, ...] = ("open", "user", "admin")


@dataclass(frozen=True)
class Dialect:
    """How one API family writes an error: as a whole body, and as a stream's last item."""

    name: str
    render: Renderer
    stream_framing: Callable[[str], str] = lambda body: body + "\n"
    headers: Mapping[str, str] = field(default_factory=dict)

    def body(self, status: int, message: str, exc: CorralError | None = None) -> dict[str, Any]:
        return self.render(status, message, exc)

    def response(self, exc: CorralError) -> JSON:
        """The whole answer for ``exc``: its status, this dialect's body and headers, the error's own headers."""
        return JSON(
            self.render(exc.status, exc.message, exc), status_code=exc.status, headers={**self.headers, **exc.headers}
        )

    def stream_item(self, exc: BaseException) -> str:
        """The item that ends a stream which failed after it started."""
        err = as_corral_error(exc)
        return self.stream_framing(dumps(self.render(err.status, err.message, err)))


def error_answer(scope: Scope, exc: CorralError) -> JSON:
    """What an endpoint's CorralError becomes: logged by its weight, noted on the request context, and
    answered in the route's dialect."""
    if isinstance(exc, ClientGone):
        log.info("%s %s: %s", scope["method"], scope["path"], exc.message)
    elif exc.status >= 500:
        log.error("%s %s failed: %s", scope["method"], scope["path"], exc.message)
    context_of(scope).error = exc.message
    return dialect_of(scope).response(exc)


def as_corral_error(exc: BaseException) -> CorralError:
    """Anything raised -> a CorralError; an unexpected exception is logged and becomes a 500."""
    if isinstance(exc, CorralError):
        return exc
    log.error("unexpected error", exc_info=exc)
    return InternalError(f"internal error: {exc}")


def _ollama(status: int, message: str, exc: CorralError | None) -> dict[str, Any]:
    return {"error": message}


_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def _openai(status: int, message: str, exc: CorralError | None) -> dict[str, Any]:
    if exc is None or isinstance(exc, InternalError):  # not one of ours: the router's 404/405, or a crash
        err_type = "invalid_request_error" if status < 500 else "api_error"
    else:
        err_type = _OPENAI_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    code = "model_not_found" if status == 404 and exc is not None and exc.param == "model" else None
    return {"error": {"message": message, "type": err_type, "param": exc.param if exc else None, "code": code}}


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def _anthropic(status: int, message: str, exc: CorralError | None) -> dict[str, Any]:
    err_type = _ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": err_type, "message": message}}


OLLAMA = Dialect("ollama", _ollama)
OPENAI = Dialect("openai", _openai, stream_framing=lambda body: "data: " + body + "\n\n")
# A failure after an Anthropic stream has started is its own SSE event, ``event: error``.
ANTHROPIC = Dialect("anthropic", _anthropic, stream_framing=lambda body: "event: error\ndata: " + body + "\n\n")


def dialect_of(scope: Scope) -> Dialect:
    """The dialect of the route that took this request (Ollama's when none did)."""
    dialect = scope.get(SCOPE_KEY)
    return dialect if isinstance(dialect, Dialect) else OLLAMA


def _guard(endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Turn an unexpected exception into a logged :class:`InternalError`, so it is answered by the
    same handler, inside the middleware, as every other error."""

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except (CorralError, HTTPException):  # these have their own handlers
            raise
        except ClientDisconnect:  # the client dropped while sending its body: not our error, no traceback
            raise ClientGone("client disconnected while sending the request body") from None
        except Exception as exc:
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            raise InternalError(f"internal error: {exc}") from exc

    return guarded


class DialectRoute(Route):
    """A route that answers its errors in ``dialect``'s shape and declares its access ``scope``."""

    def __init__(
        self,
        path: str,
        endpoint: Callable[[Request], Awaitable[Response]],
        *,
        dialect: Dialect,
        methods: list[str] | None = None,
        name: str | None = None,
        scope: Access = "user",
        model_from: ModelFrom | None = None,
    ) -> None:
        if scope not in ACCESS_LEVELS:
            raise ValueError(f"route {path}: scope must be one of {ACCESS_LEVELS}, not {scope!r}")
        super().__init__(path, _guard(endpoint), methods=methods, name=name or endpoint.__name__)
        self.dialect = dialect
        self.scope: Access = scope
        self.model_from = model_from
        # An ASGI app that answers this route whole: the gateway middleware may call it directly, skipping
        # the layers between (see corral.server.middleware).
        self.direct: ASGIApp | None = None

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[SCOPE_KEY] = self.dialect
        await super().handle(scope, receive, send)


def route_factory(dialect: Dialect) -> Callable[..., DialectRoute]:
    """``route = route_factory(OPENAI)``; then ``route("/v1/models", handler, methods=["GET"])``
    (``scope="admin"`` / ``"open"``, ``model_from="body"`` where they apply)."""

    def route(
        path: str,
        endpoint: Callable[[Request], Awaitable[Response]],
        *,
        methods: list[str] | None = None,
        name: str | None = None,
        scope: Access = "user",
        model_from: ModelFrom | None = None,
    ) -> DialectRoute:
        return DialectRoute(
            path, endpoint, dialect=dialect, methods=methods, name=name, scope=scope, model_from=model_from
        )

    return route


def route_scope(route: object) -> Access:
    """Who may call ``route``: its declared ``scope``; ``"user"`` for a route that declares none
    (and for no route at all: an unknown path needs a key like any other API path)."""
    declared = getattr(route, "scope", "user")
    return next((level for level in ACCESS_LEVELS if level == declared), "user")
