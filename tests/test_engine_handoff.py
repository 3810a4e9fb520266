"""The hand-off of streamed chunks from llama.cpp's worker threads to the event loop.

Every token of every stream crosses this seam, so it must keep each stream's
order, lose nothing, and wake the loop once per batch of chunks rather than
once per chunk (bench/RESULTS.md: that CPU comes out of llama.cpp's threads).
The real engine exercises it in every streaming test; this one pins the
ordering and the coalescing, which a real stream cannot force on demand.
"""

from __future__ import annotations

import asyncio
import threading

from typing import Any

from corral.engine.llamacpp import _Inbox


class CountingInbox(_Inbox):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.drains = 0

    def _drain(self) -> None:
        self.drains += 1
        super()._drain()


async def test_chunks_posted_while_the_loop_is_busy_arrive_in_order_with_one_wake_up() -> None:
    loop = asyncio.get_running_loop()
    inbox = CountingInbox(loop)
    a: asyncio.Queue[Any] = asyncio.Queue()
    b: asyncio.Queue[Any] = asyncio.Queue()

    def worker(stream: asyncio.Queue[Any], tag: str) -> None:
        for i in range(200):
            inbox.post(stream, f"{tag}{i}")

    threads = [threading.Thread(target=worker, args=(s, t)) for s, t in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # the loop was blocked in this coroutine the whole time, so nothing has been drained yet
    assert inbox.drains == 0

    got_a = [await a.get() for _ in range(200)]
    got_b = [await b.get() for _ in range(200)]
    assert got_a == [f"a{i}" for i in range(200)]
    assert got_b == [f"b{i}" for i in range(200)]
    assert inbox.drains == 1  # 400 chunks, one wake-up


async def test_a_waiting_reader_is_woken_by_a_post_from_another_thread() -> None:
    loop = asyncio.get_running_loop()
    inbox = CountingInbox(loop)
    stream: asyncio.Queue[Any] = asyncio.Queue()
    reader = asyncio.ensure_future(stream.get())
    await asyncio.sleep(0)  # the reader is now parked on its waiter
    assert not reader.done()
    threading.Thread(target=inbox.post, args=(stream, "token")).start()
    assert await asyncio.wait_for(reader, 5) == "token"
    later = [threading.Thread(target=inbox.post, args=(stream, f"t{i}")) for i in range(3)]
    for t in later:
        t.start()
        t.join()
    assert [await asyncio.wait_for(stream.get(), 5) for _ in range(3)] == ["t0", "t1", "t2"]
