"""HTTP helpers shared by every dialect: body parsing, JSON and NDJSON.

``read_json`` turns malformed bodies into 400s. ``stream_events`` primes an
async generator before the response starts, so an error raised before the
first chunk still gets its proper status code, while an error raised after
becomes the stream's last line. ``LineStream`` is the per-token hot path:
it sends each line from the request's own task, with nothing in between;
a stream that fails after it started, or whose client went away, says so on
the request's context (:mod:`corral.server.context`) for the request log.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from corral.errors import BadRequest
from corral.server.context import context_of

if TYPE_CHECKING:
    from corral.server.errors import Dialect

log = logging.getLogger(__name__)


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dumps(obj: Any) -> str:
    """Compact JSON with UTF-8 left as is (one encoder for all calls: json.dumps with
    arguments builds a new one each time, and this runs per streamed token)."""
    return _ENCODER.encode(obj)


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


async def cancel_on_disconnect(receive: Receive, work: Coroutine[Any, Any, None]) -> bool:
    """Run ``work`` in this task; if the client goes away first, cancel it and return True (quietly).

    Cancelling closes whatever ``work`` is iterating (an engine stream frees
    its llama.cpp slot, an upstream request is closed).
    """
    task = asyncio.current_task()
    assert task is not None
    state = {"running": True, "gone": False}

    async def watch() -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:  # the server has nothing more to tell: treat it as gone
            log.debug("receive() failed while streaming", exc_info=True)
        if state["running"]:
            state["gone"] = True
            task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        await work
    except asyncio.CancelledError:
        if not state["gone"]:
            raise
        task.uncancel()
        return True
    finally:
        state["running"] = False
        watcher.cancel()
    return False


class LineStream(Response):
    """A streamed response of ready-made lines, written straight to ``send``.

    Starlette's StreamingResponse runs the body in an anyio task group child
    task and re-encodes each chunk; every token then resumes three extra
    frames. Here the lines are pulled and sent from the request's own task,
    and a side task watches for the client going away and cancels it (which
    closes the engine stream, so llama.cpp frees the slot). ``render`` turns
    each event into the text to send ("" sends nothing).
    """

    def __init__(self, first: str | None, events: AsyncIterator[Any], render: Callable[[Any], str],
                 on_error: Callable[[BaseException], str], media_type: str,
                 headers: dict[str, str] | None) -> None:
        self.first = first
        self.events = events
        self.render_event = render
        self.on_error = on_error
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if await cancel_on_disconnect(receive, self._write(send, scope)):
            context_of(scope).error = "client closed the connection mid-stream"

    async def _write(self, send: Send, scope: Scope) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        events, render = self.events, self.render_event
        try:
            if self.first:
                await send({"type": "http.response.body", "body": self.first.encode(), "more_body": True})
            async for event in events:
                text = render(event)
                if text:
                    await send({"type": "http.response.body", "body": text.encode(), "more_body": True})
        except Exception as exc:  # the stream has started: the error becomes its last item (logged if unexpected)
            item = self.on_error(exc)
            context_of(scope).error = str(getattr(exc, "message", None) or exc)
            await send({"type": "http.response.body", "body": item.encode(), "more_body": True})
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _same(line: str) -> str:
    return line


async def stream_events(
    events: AsyncIterator[Any],
    render: Callable[[Any], str] = _same,
    *,
    dialect: Dialect,
    media_type: str = "application/x-ndjson",
    headers: dict[str, str] | None = None,
) -> Response:
    """Start a streamed response from ``events``, each sent as ``render(event)`` (ready-made lines by default).

    The first event is awaited before the response starts, so an error
    raised before it still gets its proper status code; one raised later is
    written by ``dialect`` as the stream's last item.
    """
    try:
        first: str | None = render(await events.__anext__())
    except StopAsyncIteration:
        first = None
    return LineStream(first, events, render, dialect.stream_item, media_type, headers)
