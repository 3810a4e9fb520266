"""Errors: the exception hierarchy that carries an HTTP status.

Every layer raises these; each API dialect renders them in its own shape
(:mod:`corral.server.errors`). They know nothing of dialects, and nothing
classifies errors by matching message text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

_NO_HEADERS: Mapping[str, str] = {}


class CorralError(Exception):
    """Base class: ``status`` is the HTTP status the error maps to; ``param`` names the bad field.

    ``headers`` are sent with the error response whatever its dialect (``Retry-After`` on a 429).
    """

    status: int = 500
    headers: Mapping[str, str] = _NO_HEADERS

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class BadRequest(CorralError):
    status = 400


class Unauthorized(CorralError):
    """No API key, or one that is not (or no longer) valid."""

    status = 401
    headers: Mapping[str, str] = {"WWW-Authenticate": 'Bearer realm="corral"'}


class Forbidden(CorralError):
    status = 403


class NotFound(CorralError):
    status = 404


class ModelNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f'model "{name}" not found', param="model")
        self.model = name


class PayloadTooLarge(CorralError):
    """A request body over a route's size cap (413)."""

    status = 413


class TooManyRequests(CorralError):
    """A rate limit is spent; ``retry_after`` seconds (rounded up) go out as ``Retry-After``."""

    status = 429

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        if retry_after is not None:
            self.headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}


class BadGateway(CorralError):
    """An upstream server (behind ``corral proxy``, or a registry) could not be reached or failed."""

    status = 502


class ClientGone(CorralError):
    """The client went away before the answer was ready (nginx's 499; nobody reads the body)."""

    status = 499


class ServerBusy(CorralError):
    """The request queue is full (Ollama answers 503)."""

    status = 503


class ShuttingDown(CorralError):
    """The server is stopping (SIGTERM): what is still running is ended with this (503)."""

    status = 503


class EngineError(CorralError):
    """A real engine failure (crash, failed load)."""

    status = 500


class InternalError(CorralError):
    """An unexpected exception, logged where it was caught and answered as a 500."""

    status = 500
