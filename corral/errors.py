"""Errors: the exception hierarchy that carries an HTTP status.

Every layer raises these; the HTTP layer turns them into Ollama's
``{"error": "..."}`` (or OpenAI's error object under ``/v1``) in exactly one
handler. Nothing classifies errors by matching message text.
"""

from __future__ import annotations


class CorralError(Exception):
    """Base class: ``status`` is the HTTP status the error maps to."""

    status: int = 500
    openai_type: str = "api_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class BadRequest(CorralError):
    status = 400
    openai_type = "invalid_request_error"


class Unauthorized(CorralError):
    status = 401
    openai_type = "authentication_error"


class Forbidden(CorralError):
    status = 403
    openai_type = "permission_error"


class NotFound(CorralError):
    status = 404
    openai_type = "not_found_error"


class ModelNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f'model "{name}" not found', param="model")
        self.model = name


class PayloadTooLarge(CorralError):
    """A request body over a route's size cap (413)."""

    status = 413
    openai_type = "invalid_request_error"


class TooManyRequests(CorralError):
    status = 429
    openai_type = "rate_limit_error"


class ServerBusy(CorralError):
    """The request queue is full (Ollama answers 503)."""

    status = 503
    openai_type = "server_error"


class EngineError(CorralError):
    """A real engine failure (crash, failed load): the only 500 we emit."""

    status = 500
    openai_type = "server_error"
