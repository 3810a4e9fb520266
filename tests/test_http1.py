"""The proxy's upstream client (corral.gateway.http1, corral.gateway.upstream) against scripted loopback servers.

Each test starts a small asyncio TCP server that answers with exactly the
bytes the test wants (keep-alive, chunked, until-close, HEAD, broken and
malformed answers), so the client's framing, pooling and failure paths are
checked on the wire rather than through a framework's idea of HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from corral.errors import BadGateway
from corral.gateway import http1
from corral.gateway.upstream import Upstream

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request's head and body (content-length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    if b"content-length:" in lower:
        length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
        return head, await reader.readexactly(length)
    body = b""
    if b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readline()).strip(), 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += data[:-2]
    return head, body


async def _collect(answer: http1.Answer) -> bytes:
    try:
        return b"".join([chunk async for chunk in answer.chunks()])
    finally:
        answer.release()


async def test_keep_alive_connections_are_reused_and_bodies_framed_both_ways() -> None:
    connections = 0
    seen: list[tuple[bytes, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while not reader.at_eof():
            try:
                head, body = await _read_request(reader)
            except asyncio.IncompleteReadError:
                break
            seen.append((head, body))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b'6\r\n{"a":1\r\n4\r\n}\n{}\r\n0\r\n\r\n')
            await writer.drain()
        writer.close()

    server, port = await _serve(handler)
    upstream = Upstream(f"http://127.0.0.1:{port}/prefix", key="up-key")
    headers = [(b"authorization", b"Bearer client-secret"), (b"x-custom", b"kept"), (b"connection", b"close")]
    for _ in range(3):
        answer = await upstream.open("POST", b"/api/chat?x=1", headers, b'{"model":"m"}')
        assert answer.status == 200 and answer.header(b"content-type") == "application/x-ndjson"
        assert await _collect(answer) == b'{"a":1}\n{}'
    streamed = await upstream.open("POST", b"/api/blobs/x", [], _pieces([b"ab", b"", b"cd"]))
    assert await _collect(streamed) == b'{"a":1}\n{}'
    await upstream.close()
    server.close()
    # Three requests with known bodies share one connection; a streamed body, which could not be sent
    # again if an idle connection turned out stale, always gets a new one.
    assert connections == 2
    head, body = seen[0]
    assert head.startswith(b"POST /prefix/api/chat?x=1 HTTP/1.1\r\n") and body == b'{"model":"m"}'
    assert b"x-custom: kept" in head and b"authorization: Bearer up-key" in head
    assert b"client-secret" not in head and b"connection: close" not in head
    assert seen[3][1] == b"abcd" and b"transfer-encoding: chunked" in seen[3][0]


async def _pieces(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def test_a_connection_the_server_closed_while_idle_is_retried_on_a_new_one() -> None:
    served = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await _read_request(reader)
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # no keep-alive header: the client finds out when it tries again

    server, port = await _serve(handler)
    upstream = Upstream(f"http://127.0.0.1:{port}")
    for _ in range(3):
        assert await _collect(await upstream.open("GET", b"/api/tags", [], b"")) == b"ok"
        await asyncio.sleep(0.05)
    await upstream.close()
    server.close()
    assert served == 3


async def test_head_until_close_and_no_body_answers_end_where_http_says() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await _read_request(reader)
        if head.startswith(b"HEAD"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        elif b"/close" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
            await writer.drain()
            writer.write(b"the end")
        else:
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()

    server, port = await _serve(handler)
    upstream = Upstream(f"http://127.0.0.1:{port}")
    head = await upstream.open("HEAD", b"/api/blobs/sha256-x", [], b"")
    assert head.status == 200 and head.header(b"content-length") == "1000" and await _collect(head) == b""
    assert await _collect(await upstream.open("GET", b"/close", [], b"")) == b"until the end"
    empty = await upstream.open("DELETE", b"/api/delete", [], b"{}")
    assert empty.status == 204 and await _collect(empty) == b""
    await upstream.close()
    server.close()


async def test_an_answer_that_breaks_off_or_is_not_http_raises_mid_answer() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await _read_request(reader)
        if b"/garbage" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n")
        else:
            writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial":')
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()

    server, port = await _serve(handler)
    upstream = Upstream(f"http://127.0.0.1:{port}")
    broken = await upstream.open("POST", b"/api/chat", [], b"{}")
    with pytest.raises(http1.UpstreamLost, match="closed by the upstream"):
        await _collect(broken)
    garbage = await upstream.open("POST", b"/garbage", [], b"{}")
    with pytest.raises(http1.UpstreamLost, match="malformed response"):
        await _collect(garbage)
    await upstream.close()
    server.close()


async def test_unreachable_upstream_is_a_bad_gateway_naming_it() -> None:
    server, port = await _serve(lambda r, w: asyncio.sleep(0))
    server.close()
    await server.wait_closed()
    upstream = Upstream(f"http://127.0.0.1:{port}")
    with pytest.raises(BadGateway, match=f"upstream http://127.0.0.1:{port} is unreachable"):
        await upstream.open("GET", b"/api/version", [], b"")


async def test_a_reader_that_falls_behind_pauses_the_upstream_socket() -> None:
    chunk = b"x" * 65536
    total = 64

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(chunk) * total))
        for _ in range(total):
            writer.write(chunk)
            await writer.drain()
        writer.close()

    server, port = await _serve(handler)
    upstream = Upstream(f"http://127.0.0.1:{port}")
    answer = await upstream.open("GET", b"/big", [], b"")
    await asyncio.sleep(0.3)  # the server writes as fast as it may while nobody reads
    conn = answer._conn
    assert conn is not None and conn._paused and conn._buffered <= http1.HIGH_WATER + 2 * len(chunk) + 65536
    assert len(await _collect(answer)) == len(chunk) * total
    await upstream.close()
    server.close()


@pytest.mark.parametrize(
    ("url", "key"),
    [("ftp://h/x", None), ("http://", None), ("http://h:99999", None), ("http://h/?q=1", None), ("http://h", "a\nb")],
)
def test_bad_upstream_urls_and_keys_are_refused(url: str, key: str | None) -> None:
    with pytest.raises(ValueError, match="invalid upstream"):
        Upstream(url, key)
