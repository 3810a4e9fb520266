"""A deliberately tiny asyncio HTTP/1.1 client for streaming POSTs.

The driver shares two cores with the servers it measures, so its per-token
cost must be small and identical for every peer. This client opens one
connection per request (``Connection: close``), writes the JSON body, and
yields the response body line by line as soon as each line is complete,
undoing chunked transfer encoding on the way. It understands exactly what
uvicorn, sse-starlette and cpp-httplib send; it is not a general client.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any


class HTTPStatusError(RuntimeError):
    """A non-2xx answer; ``body`` holds (the start of) the response body."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:500].decode(errors='replace')}")
        self.status = status
        self.body = body


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed before the status line")
    parts = status_line.split(None, 2)
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def _body_pieces(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[bytes]:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readline()
            if not size_line:
                return
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)  # CRLF after each chunk
            yield data
    elif "content-length" in headers:
        remaining = int(headers["content-length"])
        while remaining > 0:
            data = await reader.read(min(remaining, 65536))
            if not data:
                return
            remaining -= len(data)
            yield data
    else:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            yield data


async def stream_lines(
    host: str,
    port: int,
    path: str,
    payload: dict[str, Any],
    *,
    timeout: float = 600.0,
    headers: dict[str, str] | None = None,
    response_headers: dict[str, str] | None = None,
) -> AsyncIterator[bytes]:
    """POST ``payload`` as JSON and yield each non-empty body line (without EOL).

    ``response_headers``, if given, receives the answer's headers (names lower-cased) before the first line.
    """
    body = json.dumps(payload).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: */*\r\nContent-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n".encode()
            + body
        )
        await writer.drain()
        status, answer = await asyncio.wait_for(_read_head(reader), timeout)
        if response_headers is not None:
            response_headers.update(answer)
        if status >= 300:
            rest = b"".join([piece async for piece in _body_pieces(reader, answer)])
            raise HTTPStatusError(status, rest)
        pending = b""
        async for piece in _body_pieces(reader, answer):
            pending += piece
            if b"\n" not in pending:
                continue
            *lines, pending = pending.split(b"\n")
            for line in lines:
                line = line.rstrip(b"\r")
                if line:
                    yield line
        if pending.strip():
            yield pending.strip()
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def get_status(host: str, port: int, path: str, *, timeout: float = 2.0) -> int:
    """GET ``path`` and return the status code (raises on connection errors)."""

    async def go() -> int:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            status, _ = await _read_head(reader)
            return status
        finally:
            writer.close()

    return await asyncio.wait_for(go(), timeout)


async def post_json(host: str, port: int, path: str, payload: dict[str, Any], *, timeout: float = 60.0) -> Any:
    """POST ``payload`` and return the decoded JSON answer."""
    lines = [line async for line in stream_lines(host, port, path, payload, timeout=timeout)]
    return json.loads(b"\n".join(lines))
