"""CPU that Corral's own layers spend per streamed token, with llama.cpp taken out.

    .venv/bin/python -m bench.overhead [--streams 1,4] [--seconds 8] [--interval-ms 4]

The issue's single-stream target is about exactly this: what the Python
HTTP, NDJSON and engine-reading code costs per token. On the real engine
that cost is buried in noise (two spinning compute threads share two cores
with it), so this harness replaces llama.cpp with a stub in its own
process: a loopback HTTP server that answers ``POST /completion`` with the
same Server-Sent Events llama.cpp writes, one event every ``--interval-ms``
(so each token is its own wake-up, as with a real model). Corral runs as
usual (``create_app`` with the real :class:`LlamaCppModel` reading path),
only its engine's ``load`` points the model at the stub. The driver
streams ``/api/generate`` as :mod:`bench.run` does, and reads the server
process's CPU time from ``/proc``: CPU µs per token is the figure. It is a
CPU time, not a wall time, so the server's own speed of answering does not
enter it; it still varies by ±25% between windows (the cost is mostly cache
misses, and the machine's caches are shared), so run several rounds and
compare medians. Corral is pinned to one CPU, the stub and driver to the
other. ``--src`` runs other checkouts side by side for an A/B, and
``--floor`` adds a bare uvicorn ASGI function that relays the stub's
tokens (the part of the cost any Python server on uvicorn pays).

The stub's own cost and the driver's are not counted; they are the same
for any server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.httpclient import get_status, stream_lines
from bench.peers import free_port, read_asgi_body
from bench.profile import thread_cpu
from bench.run import OUT_DIR

log = logging.getLogger("bench.overhead")

_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(payload: dict[str, Any]) -> bytes:
    return _chunk(b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")


def _token_event(oai: bool, i: int) -> bytes:
    if oai:  # /v1/completions, which Corral read before it moved to the native endpoint (A/B of old checkouts)
        return _event(
            {
                "choices": [{"text": " word", "index": 0, "logprobs": None, "finish_reason": None}],
                "created": 1795474208,
                "model": _MODEL,
                "system_fingerprint": "b0-unknown",
                "object": "text_completion",
                "id": "chatcmpl-Peh3e2CG6AE2mDArIZTcC3GJ7SWP9s3C",
            }
        )
    return _event(
        {
            "index": 0,
            "content": " word",
            "tokens": [1717],
            "stop": False,
            "id_slot": -1,
            "tokens_predicted": i + 1,
            "tokens_evaluated": 12,
        }
    )


def _last_events(oai: bool, n: int, interval: float) -> bytes:
    timings = {"cache_n": 11, "prompt_n": 1, "prompt_ms": 1.0, "predicted_n": n, "predicted_ms": n * interval * 1000}
    if oai:
        return _event(
            {
                "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}],
                "usage": {"completion_tokens": n, "prompt_tokens": 12, "total_tokens": n + 12},
                "timings": timings,
            }
        ) + _chunk(b"data: [DONE]\n\n")
    return _event(
        {
            "index": 0,
            "content": "",
            "tokens": [],
            "id_slot": 0,
            "stop": True,
            "model": _MODEL,
            "tokens_predicted": n,
            "tokens_evaluated": 12,
            "stop_type": "limit",
            "truncated": False,
            "stopping_word": "",
            "tokens_cached": n + 11,
            "timings": timings,
        }
    )


async def _stub_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, interval: float) -> None:
    """Answer one streamed completion request with llama.cpp's events, one per ``interval``."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = json.loads(await reader.readexactly(length))
        n = int(body.get("n_predict", 16))
        if n < 0:
            n = 16
        oai = head.startswith(b"POST /v1/completions ")
        writer.write(
            b"HTTP/1.1 200 OK\r\nServer: llama.cpp\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for i in range(n):
            await asyncio.sleep(interval)
            if writer.transport.is_closing():
                return
            writer.write(_token_event(oai, i))
        writer.write(_last_events(oai, n, interval) + _chunk(b""))
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def _pin(cpu: int) -> None:
    """Keep this process on one CPU (on 2 cores: Corral on one, stub and driver on the other)."""
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {cpu % (os.cpu_count() or 1)})


def _run_stub(port: int, interval: float) -> None:
    _pin(0)

    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: _stub_client(r, w, interval), "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class _StubServer:
    """Stands in for ``xllamacpp.Server``: all LlamaCppModel reads of it is the address."""

    def __init__(self, url: str) -> None:
        self.listening_address = url


def _run_floor(port: int, stub_port: int) -> None:
    """The reference: uvicorn and a bare ASGI function that relays the stub's tokens as NDJSON.

    No Starlette, no middleware, no service or engine layer: only what any
    Python server on uvicorn that reads llama.cpp's stream pays per token
    (corral.engine.sse for the reading, one ``send`` per line).
    """
    _pin(1)
    import orjson
    import uvicorn

    from corral.engine.sse import open_completion

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = await read_asgi_body(receive)
        if scope["path"] != "/api/generate":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"Ollama is running"})
            return
        n = orjson.loads(body)["options"]["num_predict"]
        stream = await open_completion("127.0.0.1", stub_port, orjson.dumps({"prompt": "", "n_predict": n}))
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/x-ndjson")]}
        )
        try:
            while (item := await stream.next()) is not None:
                payload = orjson.loads(item)
                if payload.get("stop") is False:
                    line = b'{"model":"x","response":' + orjson.dumps(payload["content"]) + b',"done":false}\n'
                    await send({"type": "http.response.body", "body": line, "more_body": True})
        finally:
            stream.close()
        await send({"type": "http.response.body", "body": b'{"done":true}\n', "more_body": False})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _run_corral(port: int, stub_port: int, home: str, src: str | None) -> None:
    if src:  # an A/B of another checkout of Corral
        assert "corral" not in sys.modules, "corral was imported before --src could take effect"
        sys.path.insert(0, src)
    _pin(1)
    import uvicorn

    from corral.engine.base import LoadSpec
    from corral.engine.llamacpp import LlamaCppEngine, LlamaCppModel
    from corral.server.app import create_app
    from corral.settings import Settings

    class StubEngine(LlamaCppEngine):
        async def load(self, spec: LoadSpec) -> LlamaCppModel:
            return LlamaCppModel(spec, _StubServer(f"http://127.0.0.1:{stub_port}"), spec.path.stat().st_size)

    settings = Settings.from_env(
        {"CORRAL_HOME": home, "CORRAL_HOST": f"127.0.0.1:{port}", "OLLAMA_NUM_PARALLEL": "4", "OLLAMA_KEEP_ALIVE": "-1"}
    )
    uvicorn.run(
        create_app(settings, engine=StubEngine()), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )


async def _one(port: int, n_predict: int) -> int:
    payload = {
        "model": "smollm2:135m",
        "prompt": "Hello",
        "raw": True,
        "stream": True,
        "options": {"num_predict": n_predict},
    }
    n = 0
    async for line in stream_lines("127.0.0.1", port, "/api/generate", payload):
        if b'"done":false' in line:
            n += 1
        elif b'"error"' in line:
            raise RuntimeError(line.decode())
    return n


async def _load(port: int, streams: int, seconds: float, n_predict: int) -> int:
    end = time.monotonic() + seconds

    async def worker() -> int:
        total = 0
        while time.monotonic() < end:
            total += await _one(port, n_predict)
        return total

    return sum(await asyncio.gather(*(worker() for _ in range(streams))))


async def measure(port: int, pid: int, streams: int, seconds: float, n_predict: int) -> dict[str, Any]:
    before = thread_cpu(pid)
    t0 = time.monotonic()
    tokens = await _load(port, streams, seconds, n_predict)
    wall = time.monotonic() - t0
    after = thread_cpu(pid)
    cpu = {tid: total - before.get(tid, ("", 0.0, 0.0))[1] for tid, (_, total, _) in after.items()}
    return {
        "streams": streams,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "us_per_token_total": sum(cpu.values()) / tokens * 1e6,
        "us_per_token_event_loop": cpu.get(pid, 0.0) / tokens * 1e6,
    }


async def _wait_up(port: int) -> None:
    for _ in range(600):
        try:
            if await get_status("127.0.0.1", port, "/") == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"Corral on port {port} did not come up")


async def amain(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rounds of one window per (source, stream count), the sources in turn; every window is one row."""
    ctx = multiprocessing.get_context("spawn")
    _pin(0)
    stub_port = free_port()
    stub = ctx.Process(target=_run_stub, args=(stub_port, args.interval_ms / 1000), daemon=True)
    stub.start()
    servers: list[tuple[str, int, Any]] = []
    try:
        for src in args.src + (["floor"] if args.floor else []):
            port = free_port()
            home = tempfile.mkdtemp(prefix="corral-overhead-")
            if src == "floor":
                proc = ctx.Process(target=_run_floor, args=(port, stub_port), daemon=True)
            else:
                proc = ctx.Process(
                    target=_run_corral, args=(port, stub_port, home, None if src == "." else src), daemon=True
                )
            proc.start()
            servers.append((src, port, proc))
        for _, port, _ in servers:
            await _wait_up(port)
            await _load(port, 1, 1.0, args.tokens)  # warm-up
        rows = []
        for i in range(args.rounds):
            for src, port, proc in servers[i % len(servers) :] + servers[: i % len(servers)]:
                for n in args.streams:
                    rows.append({"src": src, "round": i, **await measure(port, proc.pid, n, args.seconds, args.tokens)})
        return rows
    finally:
        for _, _, proc in servers:
            proc.terminate()
        stub.terminate()
        for _, _, proc in servers:
            proc.join(10)
        stub.join(10)


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median server CPU per token for each (source, stream count)."""
    out = []
    for key in dict.fromkeys((r["src"], r["streams"]) for r in rows):
        mine = [r for r in rows if (r["src"], r["streams"]) == key]
        out.append(
            {
                "src": key[0],
                "streams": key[1],
                "windows": len(mine),
                "tokens_per_s": statistics.median(r["tokens_per_s"] for r in mine),
                "us_per_token_total": statistics.median(r["us_per_token_total"] for r in mine),
                "us_per_token_event_loop": statistics.median(r["us_per_token_event_loop"] for r in mine),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.overhead", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--streams", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4])
    ap.add_argument("--seconds", type=float, default=4.0, help="length of one measured window")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=96, help="tokens per request")
    ap.add_argument("--interval-ms", type=float, default=4.0, help="the stub's time between tokens")
    ap.add_argument(
        "--src",
        type=lambda s: s.split(","),
        default=["."],
        help="comma-separated checkouts of Corral to compare ('.' is this one), e.g. a git worktree",
    )
    ap.add_argument(
        "--floor",
        action="store_true",
        help="also measure a bare uvicorn ASGI relay of the stub (the row named 'floor')",
    )
    ap.add_argument("--out", type=Path, help="JSON file to write (default: bench/out/overhead-<time>.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rows = asyncio.run(amain(args))
    table = summary(rows)
    print(
        f"Median of {args.rounds} windows of {args.seconds:g} s; the stub sends a token every "
        f"{args.interval_ms:g} ms per stream.\n"
    )
    print("| Corral | streams | tokens/s | server CPU µs per token | of which event loop |")
    print("|---|---|---|---|---|")
    for r in table:
        print(
            f"| {r['src']} | {r['streams']} | {r['tokens_per_s']:.0f} | {r['us_per_token_total']:.0f} "
            f"| {r['us_per_token_event_loop']:.0f} |"
        )
    out = args.out or OUT_DIR / f"overhead-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "summary": table, "windows": rows}, indent=2, default=str))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
