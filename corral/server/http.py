"""HTTP helpers shared by every dialect: body parsing, JSON and NDJSON.

``read_json`` turns malformed bodies into 400s. ``stream_events`` primes an
async generator before the response starts, so an error raised before the
first chunk still gets its proper status code, while an error raised after
becomes the stream's last line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from corral.errors import BadRequest, CorralError

log = logging.getLogger(__name__)


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


class JSON(Response):
    media_type = "application/json; charset=utf-8"

    def render(self, content: Any) -> bytes:
        return dumps(content).encode()


async def read_json(request: Request, *, allow_empty: bool = False) -> Any:
    body = await request.body()
    if not body.strip():
        if allow_empty:
            return {}
        raise BadRequest("missing request body")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"invalid JSON in request body: {exc}") from None


def error_line(exc: BaseException) -> str:
    if isinstance(exc, CorralError):
        message = exc.message
    else:
        log.exception("unexpected error during stream", exc_info=exc)
        message = f"internal error: {exc}"
    return dumps({"error": message}) + "\n"


async def stream_events(
    events: AsyncIterator[str],
    *,
    media_type: str = "application/x-ndjson",
    on_error: Callable[[BaseException], str] = error_line,
    headers: dict[str, str] | None = None,
) -> Response:
    """Start a streaming response from an iterator of ready-made lines."""
    try:
        first = await events.__anext__()
    except StopAsyncIteration:
        first = None

    async def body() -> AsyncIterator[str]:
        try:
            if first is not None:
                yield first
            async for line in events:
                yield line
        except CorralError as exc:
            yield on_error(exc)
        except Exception as exc:  # an engine crash mid-stream: log and end the stream
            log.exception("stream failed")
            yield on_error(exc)
        finally:
            await events.aclose()

    return StreamingResponse(body(), media_type=media_type, headers=headers)
