"""A lean HTTP/1.1 client for the proxy's upstream: pooled keep-alive connections, answers streamed as they come.

``corral proxy`` sends every request on to one upstream and relays the
answer chunk by chunk. On that path, each microsecond of client work is
added to the caller's time to first token, so the client here does only
what a pass-through needs: the request line and headers are written as
bytes the caller already built, the response is framed by httptools
(uvicorn's own parser, the same one :mod:`corral.engine.sse` uses), and
each body chunk goes from the socket callback to the reader through one
future. Measured with ``bench.gateway --floor`` (a bare ASGI relay on
uvicorn with each client, one stream), the relay added 0.34 to 0.43 ms to
time to first token with this client and 0.75 to 0.78 ms with aiohttp's,
whose URL, header multidict, request and connector objects are
general-purpose work a relay does not need.

:class:`Pool` keeps idle connections to one ``host:port`` for reuse. A
request on a reused connection that the server closed while it sat idle
(nothing of the answer read yet, body held in memory) is sent again once
on a new connection, as browsers and urllib3 do. Body chunks beyond
:data:`HIGH_WATER` bytes not yet taken by the reader pause reading from
the socket, so a slow client slows the upstream instead of filling memory.

Failures: connecting or losing the connection before the answer's head
raises :class:`ConnectError` (with the reason); a connection lost or a
malformed response mid-answer raises :class:`UpstreamLost` from
:meth:`Answer.chunks`.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httptools

HIGH_WATER = 1 << 20  # unread body bytes that pause reading from the upstream
LOW_WATER = 1 << 18  # ... and that resume it
IDLE_SECONDS = 4.0  # an idle connection older than this is closed, not reused (uvicorn's keep-alive is 5 s)
MAX_IDLE = 64  # idle connections kept per pool
_NO_BODY_STATUS = frozenset({204, 304})
_END = object()


class ConnectError(ConnectionError):
    """The upstream could not be reached, or went away before answering."""


class UpstreamLost(ConnectionError):
    """The upstream's answer broke off, or was not valid HTTP."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._head: asyncio.Future[None] | None = None
        self._items: deque[Any] = deque()  # body chunks, then _END or an UpstreamLost
        self._waiter: asyncio.Future[None] | None = None
        self._buffered = 0
        self._paused = False
        self._writable: asyncio.Future[None] | None = None
        self._head_only = False
        self._until_close = False
        self.received = False  # any byte of the current answer
        self.complete = False  # the current answer was read to its end
        self.reusable = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []

    # -- asyncio.Protocol -------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamLost(f"malformed response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.reusable = False
        if self.complete:
            return
        if self._head is not None and self._head.done() and self._until_close and exc is None:
            self.on_message_complete()  # a body delimited by the connection's end
            return
        self._fail(UpstreamLost(f"connection lost: {exc}" if exc else "connection closed by the upstream"))

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # -- httptools callbacks ----------------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if self.status < 200:  # an interim answer (100 Continue): the real one follows
            self.headers = []
            return
        names = {name for name, _ in self.headers}
        self._until_close = (
            b"content-length" not in names and b"transfer-encoding" not in names and self.status not in _NO_BODY_STATUS
        )
        if self._head is not None and not self._head.done():
            self._head.set_result(None)
        if self._head_only:  # an answer to HEAD has no body, whatever its headers say
            self.complete = True
            self._push(_END)

    def on_body(self, body: bytes) -> None:
        self._buffered += len(body)
        self._push(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.status < 200 or self.complete:
            return
        self.complete = True
        self.reusable = not self._head_only and not self._until_close and self._parser.should_keep_alive()
        self._push(_END)

    # -- the caller's side ------------------------------------------------------------------------------------

    def begin(self, head_only: bool) -> asyncio.Future[None]:
        self._head = asyncio.get_running_loop().create_future()
        self._items.clear()
        self._buffered = 0
        self._head_only = head_only
        self._until_close = False
        self.received = self.complete = self.reusable = False
        self.status = 0
        self.headers = []
        return self._head

    def write(self, data: bytes) -> None:
        if self.lost or self.transport is None or self.transport.is_closing():
            raise ConnectError("connection closed by the upstream")
        self.transport.write(data)

    async def drain(self) -> None:
        if self._writable is not None:
            await self._writable
        if self.lost:
            raise ConnectError("connection closed by the upstream while sending the request")

    async def next(self) -> bytes | None:
        """The next body chunk, or None at the end of the answer."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        if item is _END:
            self._items.appendleft(_END)
            return None
        if isinstance(item, UpstreamLost):
            raise item
        self._buffered -= len(item)
        if self._paused and self._buffered < LOW_WATER and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def _push(self, item: object) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: UpstreamLost) -> None:
        head = self._head
        if head is not None and not head.done():
            head.set_exception(ConnectError(str(exc)))
            head.exception()  # retrieved here: the caller may be gone
        self._push(exc)


class Answer:
    """The upstream's answer: status and headers at once, the body as it arrives."""

    def __init__(self, pool: Pool, conn: _Connection) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self.status = conn.status
        self.raw_headers = conn.headers  # names lower-cased, as received
        self.origin = pool.origin
        # The next body chunk, or None at the end: the connection's own method, one call per chunk.
        self.next: Callable[[], Awaitable[bytes | None]] = conn.next

    def header(self, name: bytes) -> str | None:
        for key, value in self.raw_headers:
            if key == name:
                return value.decode("latin-1")
        return None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk as the upstream sends it (chunked encoding already undone)."""
        if self._conn is None:
            return
        while (chunk := await self.next()) is not None:
            yield chunk

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def release(self) -> None:
        """Done with this answer: its connection goes back to the pool if it was read to the end, else closes."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.put(conn)


class Pool:
    """Keep-alive connections to one upstream ``host:port`` (see module docstring)."""

    def __init__(self, host: str, port: int, *, tls: bool = False, connect_timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.origin = f"{host}:{port}"
        self.connect_timeout = connect_timeout
        self._ssl: ssl_module.SSLContext | None = ssl_module.create_default_context() if tls else None
        self._idle: list[_Connection] = []

    async def request(self, head: bytes, body: bytes | AsyncIterator[bytes], *, head_only: bool = False) -> Answer:
        """Send ``head`` (request line and headers, ending in a blank line) and ``body``; return at the answer's head.

        A streamed ``body`` is sent with chunked encoding: ``head`` must say so.
        """
        conn = self._take()
        if conn is not None and isinstance(body, bytes):
            try:
                return await self._send(conn, head, body, head_only)
            except ConnectError:
                if conn.received:  # the upstream answered something, then broke: not a stale connection
                    raise
        elif conn is not None:
            self._idle.append(conn)  # a streamed body cannot be sent twice: only a new connection will do
        return await self._send(await self._connect(), head, body, head_only)

    def put(self, conn: _Connection) -> None:
        if conn.reusable and not conn.lost and len(self._idle) < MAX_IDLE:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _take(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            closing = conn.transport is None or conn.transport.is_closing()
            if not conn.lost and not closing and now - conn.idle_since < IDLE_SECONDS:
                return conn
            conn.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(_Connection, self.host, self.port, ssl=self._ssl)
        except TimeoutError:
            raise ConnectError(f"no connection within {self.connect_timeout:g}s") from None
        except OSError as exc:
            raise ConnectError(exc.strerror or str(exc) or type(exc).__name__) from None
        return conn

    async def _send(
        self, conn: _Connection, head: bytes, body: bytes | AsyncIterator[bytes], head_only: bool
    ) -> Answer:
        answered = conn.begin(head_only)
        try:
            if isinstance(body, bytes):
                conn.write(head + body)
            else:
                conn.write(head)
                async for piece in body:
                    if piece:
                        conn.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                        await conn.drain()
                conn.write(b"0\r\n\r\n")
            await answered
        except BaseException:
            conn.close()
            raise
        return Answer(self, conn)
