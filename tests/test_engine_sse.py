"""The loopback stream that carries every token from llama.cpp to the event loop.

The real engine goes through it in every generation test (and
test_scheduler's disconnect test proves that dropping it frees the slot).
These pin what a real llama.cpp stream cannot be made to do on demand:
events and HTTP chunks cut at any byte, mid-stream ``error:`` events, a
refused request's JSON body, a connection that dies before the end, and
that closing the stream closes the socket llama.cpp watches.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from corral.engine.sse import SSEStream, open_completion
from corral.errors import EngineError

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def drain(stream: SSEStream) -> list[dict[str, object]]:
    return [json.loads(p) async for p in stream.payloads()]


@pytest.mark.parametrize("step", [1, 3, 7, 50, 10_000])
async def test_events_cut_at_any_byte_arrive_whole_and_in_order(step: int) -> None:
    tokens = [{"choices": [{"text": f"t{i}", "finish_reason": None}]} for i in range(20)]
    # Two events share an HTTP chunk, one event spans two chunks, then [DONE].
    body = [event(tokens[0]) + event(tokens[1])]
    body += [event(t) for t in tokens[2:19]]
    last = event(tokens[19])
    body += [last[:10], last[10:], b"data: [DONE]\n\n"]
    wire = HEAD + chunked(*body)
    stream = SSEStream()
    for i in range(0, len(wire), step):
        stream.data_received(wire[i : i + step])
    assert await drain(stream) == tokens


async def test_a_mid_stream_error_event_is_a_payload_with_its_error() -> None:
    stream = SSEStream()
    stream.data_received(
        HEAD + chunked(event({"choices": [{"text": "a"}]}), b'error: {"error": {"code": 500, "message": "boom"}}\n\n')
    )
    got = await drain(stream)
    assert got[0] == {"choices": [{"text": "a"}]}
    assert got[1] == {"error": {"code": 500, "message": "boom"}}


async def test_a_refused_request_yields_its_json_body() -> None:
    body = b'{"error":{"code":400,"message":"bad temperature"}}'
    stream = SSEStream()
    stream.data_received(
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    assert await drain(stream) == [{"error": {"code": 400, "message": "bad temperature"}}]


async def test_a_connection_lost_mid_stream_is_an_engine_error() -> None:
    stream = SSEStream()
    stream.data_received(HEAD + b"%x\r\n%s\r\n" % (len(event({"n": 1})), event({"n": 1})))
    stream.connection_lost(ConnectionResetError("reset"))
    got = []
    with pytest.raises(EngineError, match="closed the completion stream early"):
        async for p in stream.payloads():
            got.append(json.loads(p))
    assert got == [{"n": 1}]


async def test_garbage_from_the_runner_is_an_engine_error() -> None:
    stream = SSEStream()
    stream.data_received(b"this is not HTTP\r\n\r\n")
    with pytest.raises(EngineError, match="malformed response"):
        await drain(stream)


async def test_request_goes_out_and_close_hangs_up_on_the_runner() -> None:
    received = asyncio.get_running_loop().create_future()
    hung_up = asyncio.Event()

    async def runner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        )
        received.set_result((head, await reader.readexactly(length)))
        writer.write(HEAD + b"%x\r\n%s\r\n" % (len(event({"n": 1})), event({"n": 1})))
        await writer.drain()
        await reader.read()  # an endless generation, until the client hangs up
        hung_up.set()
        writer.close()

    server = await asyncio.start_server(runner, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        stream = await open_completion("127.0.0.1", port, b'{"prompt": "hi", "stream": true}')
        first = await anext(stream.payloads())
        head, body = await received
        assert head.startswith(b"POST /completion HTTP/1.1\r\n")
        assert json.loads(body) == {"prompt": "hi", "stream": True}
        assert json.loads(first) == {"n": 1}
        stream.close()
        await asyncio.wait_for(hung_up.wait(), 5)


async def test_an_unreachable_runner_is_an_engine_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(EngineError, match="not reachable"):
        await open_completion("127.0.0.1", port, b"{}")
