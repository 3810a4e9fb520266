"""One streamed llama.cpp completion, read by the event loop off a loopback socket.

Each loaded model's llama.cpp server core listens on an ephemeral loopback
port. A completion is a ``POST /completion`` (llama.cpp's native endpoint:
its per-token events are a third the size of ``/v1/completions``' ones, so
its HTTP thread and our parser do less per token) with ``stream: true``,
answered with Server-Sent Events (``data: {json}``, mid-stream errors as
``error: {json}``; the OpenAI endpoints' closing ``data: [DONE]`` is
dropped if it comes), or with a plain JSON error and a 4xx/5xx status when
the request is refused up front.

Why a socket and not xllamacpp's in-process ``handle_completions`` call:
that call blocks, so it needs a Python worker thread per request, and every
token then cost that thread a GIL acquisition plus a cross-thread wake-up of
the event loop (measured: ~190-270 µs of worker CPU per token besides the event
loop's own, on a 2-core box where that CPU comes out of llama.cpp's two
compute threads). Here llama.cpp's C++ HTTP thread writes the token and the
event loop reads it as one more readable socket, in the same epoll wake-up
as every other slot's token from that decode step. httptools (uvicorn's
parser) does the HTTP framing and chunked decoding.

Closing the connection cancels the generation: llama.cpp checks that its
client is still there between tokens and frees the slot when it is not.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import httptools

from corral.errors import EngineError

_END = object()
_DATA = b"data: "
_ERROR = b"error: "
_DONE = b"[DONE]"


class SSEStream(asyncio.Protocol):
    """asyncio protocol for one completion; read its JSON events with :meth:`next` (or :meth:`payloads`).

    Each payload is the raw bytes of one JSON object: a completion chunk, or
    an object with an ``error`` key (a mid-stream error event, or the body of
    a refused request). Transport failures raise :class:`EngineError`.
    """

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        # Items for the reader: payload bytes, an EngineError, then _END. A
        # deque and one future per wait: asyncio.Queue costs ~10 Python
        # calls per item, on the per-token path.
        self._items: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._buf = bytearray()
        self._status = 0
        self._complete = False
        self.transport: asyncio.Transport | None = None

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"malformed response from llama.cpp: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._complete:
            self._fail("llama.cpp closed the completion stream early" + (f": {exc}" if exc else ""))

    # -- httptools callbacks ----------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        buf = self._buf
        buf += body
        if self._status != 200:
            return  # a refused request: one JSON body, handed over whole at the end
        start = 0
        while (end := buf.find(b"\n\n", start)) >= 0:
            self._event(bytes(buf[start:end]))
            start = end + 2
        del buf[:start]

    def on_message_complete(self) -> None:
        self._complete = True
        if self._status != 200:
            body = bytes(self._buf).strip() or b'{"error": "llama.cpp answered %d"}' % self._status
            self._put(body)
        self._put(_END)

    # -- reading ----------------------------------------------------------------------

    def _event(self, event: bytes) -> None:
        if event.startswith(_DATA):
            data = event[len(_DATA) :]
            if data != _DONE:
                self._put(data)
        elif event.startswith(_ERROR):
            self._put(event[len(_ERROR) :])
        # anything else (comments, empty keep-alive lines) carries no payload

    def _fail(self, message: str) -> None:
        if not self._complete:
            self._complete = True
            self._put(EngineError(message))
            self._put(_END)

    def _put(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self) -> bytes | None:
        """The next payload, or None at the end. A plain coroutine, not an async
        generator: when a payload is already there it returns without suspending."""
        items = self._items
        while not items:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        item = items.popleft()
        if item is _END:
            items.appendleft(_END)  # stay at the end
            return None
        if isinstance(item, EngineError):
            raise item
        return item  # type: ignore[no-any-return]

    async def payloads(self) -> AsyncIterator[bytes]:
        while (item := await self.next()) is not None:
            yield item

    def close(self) -> None:
        """Drop the connection; if the completion is still running, llama.cpp cancels it."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


async def open_completion(host: str, port: int, body: bytes) -> SSEStream:
    """Start a streamed ``/completion`` call on the llama.cpp server at ``host:port``."""
    loop = asyncio.get_running_loop()
    try:
        transport, stream = await loop.create_connection(SSEStream, host, port)
    except OSError as exc:
        raise EngineError(f"llama runner is not reachable: {exc}") from exc
    head = (
        b"POST /completion HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (host.encode(), port, len(body))
    )
    transport.write(head + body)
    return stream
