"""HTTP helpers shared by every dialect: body parsing, JSON and NDJSON, and requests in flight.

``read_json`` turns malformed bodies into 400s: bad JSON, ``NaN``/``Infinity``
(Go's decoder rejects them), nesting deeper than :data:`MAX_JSON_DEPTH`, and a
body over ``CORRAL_MAX_BODY`` (413, read no further than the limit). A client
that drops mid-body becomes a :class:`ClientGone`, logged in one line.
``stream_events`` primes an async generator before the response starts, so
an error raised before the first chunk still gets its proper status code,
while an error raised after becomes the stream's last line. ``LineStream`` is
the per-token hot path: it sends each line from the request's own task, with
nothing in between; a stream that fails after it started, or whose client
went away, says so on the request's context for the request log. ``answer``
awaits a non-streamed answer the same way a stream runs (both through
:func:`watched`): cancelled when the client goes away, so the slot is freed.
:class:`Inflight` tracks both kinds, so a shutdown can end them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from corral.errors import BadRequest, ClientGone, CorralError, PayloadTooLarge, ShuttingDown
from corral.server.context import context_of

if TYPE_CHECKING:
    from corral.server.errors import Dialect

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_JSON_DEPTH = 200  # nested arrays/objects in a request body (orjson, which feeds llama.cpp, stops at 254)
DEFAULT_MAX_BODY = 32 << 20
_DRAIN_LIMIT = 256 << 20  # past the size limit, read (and drop) at most this much more so the client sees the 413

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dumps(obj: Any) -> str:
    """Compact JSON with UTF-8 left as is (one encoder for all calls: json.dumps with
    arguments builds a new one each time, and this runs per streamed token)."""
    return _ENCODER.encode(obj)


class JSON(Response):
    media_type = "application/json; charset=utf-8"

    def render(self, content: Any) -> bytes:
        return dumps(content).encode()


def _no_constants(name: str) -> Any:
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value")


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests arrays/objects deeper than ``limit`` (iteratively: no recursion to blow)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def _max_body(request: Request) -> int:
    settings = getattr(request.app.state, "settings", None)
    return int(getattr(settings, "max_body", DEFAULT_MAX_BODY))


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body too large: the limit is {limit} bytes (CORRAL_MAX_BODY)")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with a 413 beyond ``limit`` bytes without holding more than that."""
    length = request.headers.get("content-length", "")
    declared = int(length) if length.isdigit() else None
    chunks: list[bytes] = []
    size = 0
    try:
        if declared is not None and declared > limit:
            await _drain(request, declared)
            raise _too_large(limit)
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                await _drain(request, size)
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone("client disconnected while sending the request body") from None
    return b"".join(chunks)


async def _drain(request: Request, seen: int) -> None:
    """Read the rest of a refused body (keeping none of it), so the client gets to read the 413."""
    if seen > _DRAIN_LIMIT:
        return
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > _DRAIN_LIMIT:
            return


async def read_json(request: Request, *, allow_empty: bool = False) -> Any:
    body = await read_body(request, _max_body(request))
    if not body.strip():
        if allow_empty:
            return {}
        raise BadRequest("missing request body")
    try:
        value = json.loads(body, parse_constant=_no_constants)
    except RecursionError:
        raise BadRequest(f"invalid JSON in request body: exceeded max depth of {MAX_JSON_DEPTH}") from None
    except ValueError as exc:
        raise BadRequest(f"invalid JSON in request body: {exc}") from None
    del body
    if isinstance(value, (dict, list)) and _depth_exceeds(value, MAX_JSON_DEPTH):
        raise BadRequest(f"invalid JSON in request body: exceeded max depth of {MAX_JSON_DEPTH}")
    return value


class Inflight:
    """Requests still being answered (streams and non-streamed generations), which a shutdown must end.

    Each registers a ``stop`` callback. :meth:`drain` (on SIGTERM) lets them
    run for a grace period, then stops those still running: a stream ends
    with a last error line, a non-streamed request answers 503.
    """

    def __init__(self) -> None:
        self._stops: dict[asyncio.Task[Any], Callable[[], None]] = {}
        self.draining = False

    def __len__(self) -> int:
        return len(self._stops)

    def add(self, task: asyncio.Task[Any], stop: Callable[[], None]) -> None:
        self._stops[task] = stop

    def discard(self, task: asyncio.Task[Any]) -> None:
        self._stops.pop(task, None)

    async def drain(self, grace: float) -> None:
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._stops and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self._stops:
            log.warning("shutting down: ending %d request(s) still running after %.1fs", len(self._stops), grace)
        for stop in list(self._stops.values()):
            stop()


def cross_origin(scope: Scope) -> bool:
    """Whether the request carries an ``Origin`` header: the only requests CORS handling has work for."""
    return any(name == b"origin" for name, _ in scope["headers"])


def inflight_of(scope: Scope) -> Inflight | None:
    app = scope.get("app")
    found = getattr(getattr(app, "state", None), "inflight", None)
    return found if isinstance(found, Inflight) else None


async def watched(
    receive: Receive,
    work: Awaitable[T],
    *,
    inflight: Inflight | None = None,
    can_stop: Callable[[], bool] = lambda: True,
) -> tuple[str, T | None]:
    """Await ``work`` in this task, watching the client: ``("done", result)``; ``("gone", None)`` if the
    client went away first, ``("stopped", None)`` if a shutdown stopped it (through ``inflight``).

    Either way ``work`` is cancelled, which closes whatever it iterates: an
    engine stream frees its llama.cpp slot, an upstream request is closed.
    """
    task = asyncio.current_task()
    assert task is not None
    state: dict[str, Any] = {"running": True, "why": ""}

    async def watch() -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:  # the server has nothing more to tell: treat it as gone
            log.debug("receive() failed while answering", exc_info=True)
        if state["running"]:
            state["why"] = "gone"
            task.cancel()

    def stop() -> None:
        if state["running"] and can_stop():
            state["why"] = "stopped"
            task.cancel()

    if inflight is not None:
        inflight.add(task, stop)
    watcher = asyncio.ensure_future(watch())
    try:
        return "done", await work
    except asyncio.CancelledError:
        if not state["why"]:
            raise
        task.uncancel()
        return str(state["why"]), None
    finally:
        state["running"] = False
        watcher.cancel()
        if inflight is not None:
            inflight.discard(task)


async def answer(request: Request, work: Awaitable[T]) -> T:
    """Await a non-streamed answer; cancel it if the client goes away (its slot is freed at once) or
    the server shuts down (503), as a stream is."""
    inflight = inflight_of(request.scope)
    if inflight is not None and inflight.draining:
        if asyncio.iscoroutine(work):
            work.close()
        raise ShuttingDown("server shutting down")
    outcome, value = await watched(request.receive, work, inflight=inflight)
    if outcome == "gone":
        raise ClientGone("client disconnected before the answer was ready")
    if outcome == "stopped":
        raise ShuttingDown("server shutting down")
    return value  # type: ignore[return-value]


class LineStream(Response):
    """A streamed response of ready-made lines, written straight to ``send``.

    Starlette's StreamingResponse runs the body in an anyio task group child
    task and re-encodes each chunk; every token then resumes three extra
    frames. Here the lines are pulled and sent from the request's own task,
    and a side task watches for the client going away and cancels it (which
    closes the engine stream, so llama.cpp frees the slot). ``render`` turns
    each event into the text to send ("" sends nothing).
    """

    def __init__(
        self,
        first: str | None,
        events: AsyncIterator[Any],
        render: Callable[[Any], str],
        on_error: Callable[[BaseException], str],
        media_type: str,
        headers: dict[str, str] | None,
    ) -> None:
        self.first = first
        self.events = events
        self.render_event = render
        self.on_error = on_error
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)
        self._ended = False  # the closing message has been sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        outcome, _ = await watched(
            receive, self._write(send, scope), inflight=inflight_of(scope), can_stop=lambda: not self._ended
        )
        if outcome == "stopped":
            await self._end(send, ShuttingDown("server shutting down"))
        elif outcome == "gone":
            context_of(scope).error = "client closed the connection mid-stream"

    async def _end(self, send: Send, exc: BaseException) -> None:
        """End a stream early: its last line says why."""
        if not self._ended:
            self._ended = True
            await send({"type": "http.response.body", "body": self.on_error(exc).encode(), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

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
        self._ended = True
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
    request: Request | None = None,
) -> Response:
    """Start a streamed response from ``events``, each sent as ``render(event)`` (ready-made lines by default).

    The first event is awaited before the response starts, so an error
    raised before it still gets its proper status code; one raised later is
    written by ``dialect`` as the stream's last item. With ``request``, that
    first wait (model load, prompt evaluation) is cancelled if the client
    goes away, as the rest of the stream is.
    """
    try:
        first_event = await (answer(request, events.__anext__()) if request is not None else events.__anext__())
        first: str | None = render(first_event)
    except StopAsyncIteration:
        first = None
    except CorralError:
        await events.aclose()  # type: ignore[attr-defined]
        raise
    return LineStream(first, events, render, dialect.stream_item, media_type, headers)
