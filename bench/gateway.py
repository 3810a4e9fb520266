"""Latency the gateway adds: ``corral proxy`` (and LiteLLM's proxy) against calling the upstream directly.

    .venv/bin/python -m bench.gateway [--requests 200] [--concurrency 1,8] [--tokens 32] [--interval-ms 2] [--floor]

Every target answers the same streamed ``POST /v1/chat/completions`` (and,
for Corral, ``POST /api/chat``) from one stub upstream in its own process: an
ASGI function that streams ``--tokens`` chunks ``--interval-ms`` apart, in
OpenAI's SSE or Ollama's NDJSON, so the upstream costs the same, and almost
no CPU, for every target. The targets, started side by side in this one run:

* ``direct``: the stub itself (the baseline);
* ``tcp-relay``: a bare TCP relay in front of the stub (bytes copied both
  ways, no HTTP, a new upstream connection per client connection): the
  floor under any user-space hop on this machine, for reference;
* with ``--floor``, ``uvicorn-relay-http1`` and ``uvicorn-relay-aiohttp``:
  a bare ASGI function on uvicorn relaying to the stub with Corral's
  upstream client or with aiohttp's, the floor under any uvicorn-based
  proxy and what the client library alone costs;
* ``corral-proxy-bare``: the same proxy with the gateway left out (no keys,
  request log, metrics or timing headers): the gateway's own cost is the
  difference between this and the two below;
* ``corral-proxy``: ``corral proxy --upstream STUB`` with no keys (auth off);
* ``corral-proxy+keys``: the same with an admin key created (every request
  checked, hashed-key lookup in SQLite) and the request log writing rows;
* ``litellm``: LiteLLM's proxy (``litellm --config``) with one model routed
  to the stub's ``/v1``, when its virtual environment exists (see
  ``bench/README.md``); otherwise the row says so.

Clients run closed loops (each sends its next request when the previous one
is answered) at each ``--concurrency`` level, round-robin over the targets
so drift hits all alike. Reported per target: TTFT and total latency p50/p99,
the latency added over ``direct`` at p50/p99, and streamed tokens/s per
stream. The summary states the issue's targets (≤ 1 ms added at p50, ≤ 5 ms
at p99, Corral's added latency at least 5x below LiteLLM's) as met or not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.httpclient import get_status, stream_lines
from bench.peers import _die_with_parent, free_port, read_asgi_body
from bench.run import OUT_DIR

log = logging.getLogger("bench.gateway")
ROOT = Path(__file__).resolve().parent.parent
LITELLM_VENV = ROOT / ".bench-litellm"
MODEL = "stub-model"


# ---- the stub upstream (run as `python -m bench.gateway --stub PORT TOKENS INTERVAL_MS`) ----------------------


def _stub_app(tokens: int, interval: float) -> Callable[..., Awaitable[None]]:
    async def app(
        scope: dict[str, Any], receive: Callable[..., Awaitable[Any]], send: Callable[..., Awaitable[None]]
    ) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        while (await receive()).get("more_body"):
            pass
        path = scope["path"]
        if path.endswith("/chat/completions"):
            kind, chunk, last = "text/event-stream", _sse_chunk, _sse_last
        elif path == "/api/chat":
            kind, chunk, last = "application/x-ndjson", _ndjson_chunk, _ndjson_last
        else:
            # Both listings name the one model, so a fleet gateway's discovery finds it (bench/fleet.py).
            body = json.dumps(
                {
                    "object": "list",
                    "data": [{"id": MODEL, "object": "model"}],
                    "models": [{"name": MODEL, "model": MODEL}],
                }
            ).encode()
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": body})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind.encode())]})
        for i in range(tokens):
            await asyncio.sleep(interval)
            await send({"type": "http.response.body", "body": chunk(i), "more_body": True})
        await send({"type": "http.response.body", "body": last(tokens), "more_body": False})

    return app


def _sse_chunk(i: int) -> bytes:
    return b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"stub-model","choices":[{"index":0,"delta":{"content":" word"},"finish_reason":null}]}\n\n'


def _sse_last(n: int) -> bytes:
    return (
        b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"stub-model","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'
        b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"stub-model","choices":[],"usage":{"prompt_tokens":8,"completion_tokens":%d,"total_tokens":%d}}\n\n'
        b"data: [DONE]\n\n" % (n, n + 8)
    )


def _ndjson_chunk(i: int) -> bytes:
    return b'{"model":"stub-model","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":" word"},"done":false}\n'


def _ndjson_last(n: int) -> bytes:
    return (
        b'{"model":"stub-model","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":""},'
        b'"done":true,"done_reason":"length","total_duration":1,"load_duration":1,"prompt_eval_count":8,'
        b'"prompt_eval_duration":1,"eval_count":%d,"eval_duration":1}\n' % n
    )


def run_relay(port: int, upstream_port: int) -> None:
    """A bare TCP relay (bytes copied both ways, no HTTP): what one more hop costs on this machine at best."""
    import uvloop

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


def run_uvicorn_relay(port: int, upstream_port: int, client: str) -> None:
    """A bare ASGI function on uvicorn that relays each request to the stub (``--floor``): what any
    uvicorn-based proxy pays, with Corral's upstream client (``http1``) or aiohttp's (``aiohttp``)."""
    import uvicorn

    from corral.gateway.upstream import Upstream

    upstream = Upstream(f"http://127.0.0.1:{upstream_port}")
    sessions: list[Any] = []
    skip = {b"host", b"connection", b"content-length", b"transfer-encoding"}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_asgi_body(receive)
        if client == "aiohttp":
            import aiohttp

            if not sessions:
                sessions.append(aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False))
            headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k not in skip]
            url = f"http://127.0.0.1:{upstream_port}{scope['path']}"
            answer = await sessions[0].request(scope["method"], url, headers=headers, data=body)
            out = [(k.lower(), v) for k, v in answer.raw_headers if k.lower() not in skip]
            await send({"type": "http.response.start", "status": answer.status, "headers": out})
            async for chunk in answer.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            answer.release()
        else:
            relayed = await upstream.open(scope["method"], scope["raw_path"], scope["headers"], body)
            headers = Upstream.response_headers(relayed.raw_headers)
            await send({"type": "http.response.start", "status": relayed.status, "headers": headers})
            while (chunk := await relayed.next()) is not None:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            relayed.release()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")


def run_bare_proxy(port: int, upstream: str) -> None:
    """``corral proxy`` with the gateway left out (``create_proxy_app(..., gateway=False)``)."""
    from corral.cli import run_server
    from corral.gateway.upstream import Upstream
    from corral.server.proxy import create_proxy_app
    from corral.settings import Settings

    settings = Settings.from_env().with_overrides(host="127.0.0.1", port=port)
    sys.exit(run_server(create_proxy_app(settings, Upstream(upstream), gateway=False), settings))


def run_stub(port: int, tokens: int, interval_ms: float) -> None:
    import uvicorn

    uvicorn.run(
        _stub_app(tokens, interval_ms / 1000),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


# ---- targets ----------------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int
    paths: tuple[str, ...]
    headers: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    skipped: str = ""
    samples: dict[str, list[tuple[float, float, int]]] = field(default_factory=dict)  # path -> (ttft, total, n)


def _spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as out:
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )


async def _wait_up(port: int, path: str, proc: subprocess.Popen[bytes], seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        try:
            if await get_status("127.0.0.1", port, path) < 500:
                return
        except (TimeoutError, OSError):
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("did not come up")


def _corral_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "CORRAL_"))}
    env["CORRAL_HOME"] = str(home)
    return env


def _create_key(home: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "corral", "keys", "create", "bench", "--admin"],
        cwd=ROOT,
        env=_corral_env(home),
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


async def start_targets(stub_port: int, work: Path, want_litellm: bool, floor: bool = False) -> list[Target]:
    upstream = f"http://127.0.0.1:{stub_port}"
    both = ("/v1/chat/completions", "/api/chat")
    targets = [Target("direct", stub_port, both)]
    relay = Target("tcp-relay", free_port(), both)
    relay.proc = _spawn(
        [sys.executable, "-m", "bench.gateway", "--relay", str(relay.port), str(stub_port)], work / "relay.log"
    )
    targets.append(relay)
    for client in ("http1", "aiohttp") if floor else ():
        t = Target(f"uvicorn-relay-{client}", free_port(), both)
        t.proc = _spawn(
            [sys.executable, "-m", "bench.gateway", "--uvicorn-relay", str(t.port), str(stub_port), client],
            work / f"{t.name}.log",
        )
        targets.append(t)
    bare = Target("corral-proxy-bare", free_port(), both)
    bare.proc = _spawn(
        [sys.executable, "-m", "bench.gateway", "--bare-proxy", str(bare.port), upstream],
        work / "corral-proxy-bare.log",
        _corral_env(work / "home-bare"),
    )
    targets.append(bare)
    plain = Target("corral-proxy", free_port(), both)
    plain.proc = _spawn(
        [sys.executable, "-m", "corral", "proxy", "--upstream", upstream, "--port", str(plain.port)],
        work / "corral-proxy.log",
        _corral_env(work / "home-plain"),
    )
    keyed = Target("corral-proxy+keys", free_port(), both)
    (work / "home-keys").mkdir()
    keyed.headers = {"Authorization": f"Bearer {_create_key(work / 'home-keys')}"}
    keyed.proc = _spawn(
        [sys.executable, "-m", "corral", "proxy", "--upstream", upstream, "--port", str(keyed.port)],
        work / "corral-proxy-keys.log",
        _corral_env(work / "home-keys"),
    )
    targets += [plain, keyed]
    litellm = Target("litellm", free_port(), ("/v1/chat/completions",), {"Authorization": "Bearer sk-bench"})
    exe = LITELLM_VENV / "bin" / "litellm"
    if not want_litellm:
        litellm.skipped = "not requested (--no-litellm)"
    elif not exe.exists():
        litellm.skipped = f"not installed ({exe} missing; see bench/README.md)"
    else:
        config = work / "litellm.yaml"
        config.write_text(
            "model_list:\n"
            f"  - model_name: {MODEL}\n"
            "    litellm_params:\n"
            f"      model: openai/{MODEL}\n"
            f"      api_base: {upstream}/v1\n"
            "      api_key: unused\n"
            "general_settings:\n"
            "  master_key: sk-bench\n"
        )
        env = {**os.environ, "LITELLM_LOG": "ERROR", "DISABLE_SCHEMA_UPDATE": "true", "LITELLM_TELEMETRY": "False"}
        litellm.proc = _spawn(
            [str(exe), "--config", str(config), "--port", str(litellm.port), "--num_workers", "1"],
            work / "litellm.log",
            env,
        )
    targets.append(litellm)
    for t in targets:
        if t.proc is not None:
            try:
                await _wait_up(t.port, "/health/liveliness" if t.name == "litellm" else "/api/version", t.proc, 180)
            except RuntimeError as exc:
                t.skipped = f"failed to start: {exc}"
    return targets


# ---- load --------------------------------------------------------------------------------------------------


def _payload(path: str) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True}


async def one_request(t: Target, path: str) -> tuple[float, float, int]:
    start = time.perf_counter()
    first = 0.0
    n = 0
    async for line in stream_lines("127.0.0.1", t.port, path, _payload(path), headers=t.headers, timeout=60):
        if b'" word"' in line:
            n += 1
            if n == 1:
                first = time.perf_counter() - start
    return first, time.perf_counter() - start, n


async def drive(targets: list[Target], path: str, requests: int, concurrency: int) -> None:
    live = [t for t in targets if not t.skipped and path in t.paths]
    for t in live:  # warm up connections and code paths
        for _ in range(3):
            await one_request(t, path)
    per_round = max(1, requests // 10)
    for _ in range(10):
        for t in live:
            key = f"{path}@{concurrency}"
            done = 0

            async def client(t: Target = t, key: str = key) -> None:
                nonlocal done
                while done < per_round:
                    done += 1
                    t.samples.setdefault(key, []).append(await one_request(t, path))

            await asyncio.gather(*(client() for _ in range(concurrency)))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise(targets: list[Target], tokens: int) -> dict[str, Any]:
    report: dict[str, Any] = {"targets": {}, "added": {}}
    for t in targets:
        if t.skipped:
            report["targets"][t.name] = {"skipped": t.skipped}
            continue
        rows = {}
        for key, samples in t.samples.items():
            ttft = [s[0] * 1000 for s in samples]
            total = [s[1] * 1000 for s in samples]
            rows[key] = {
                "n": len(samples),
                "ttft_p50": _pct(ttft, 0.5),
                "ttft_p99": _pct(ttft, 0.99),
                "total_p50": _pct(total, 0.5),
                "total_p99": _pct(total, 0.99),
                "tokens_complete": all(s[2] == tokens for s in samples),
                "tok_s_per_stream": statistics.median(s[2] / max(1e-9, s[1] - s[0]) for s in samples),
            }
        report["targets"][t.name] = rows
    for t in targets[1:]:
        if t.skipped:
            continue
        for key, row in report["targets"][t.name].items():
            base = report["targets"]["direct"].get(key)
            if base is None:
                continue
            report["added"].setdefault(t.name, {})[key] = {
                m: row[m] - base[m] for m in ("ttft_p50", "ttft_p99", "total_p50", "total_p99")
            }
    report["verdicts"] = _verdicts(report)
    return report


def _verdicts(report: dict[str, Any]) -> list[str]:
    out = []
    added = report["added"]
    for name in ("corral-proxy", "corral-proxy+keys"):
        for key, a in added.get(name, {}).items():
            ok = a["ttft_p50"] <= 1.0 and a["ttft_p99"] <= 5.0
            out.append(
                f"{name} {key}: +{a['ttft_p50']:.2f} ms TTFT p50, +{a['ttft_p99']:.2f} ms p99 -> "
                f"{'met' if ok else 'NOT met'} (<= 1 ms / 5 ms)"
            )
    bare = added.get("corral-proxy-bare", {})
    for key, a in added.get("corral-proxy+keys", {}).items():
        if key in bare:
            out.append(
                f"gateway on vs off {key}: keys, request log, metrics and timing headers add "
                f"{a['ttft_p50'] - bare[key]['ttft_p50']:+.2f} ms TTFT p50, "
                f"{a['ttft_p99'] - bare[key]['ttft_p99']:+.2f} ms p99 over the bare proxy"
            )
    lite = added.get("litellm", {})
    for key, a in lite.items():
        corral = added.get("corral-proxy+keys", {}).get(key)
        if corral is None:
            continue
        ratio = a["ttft_p50"] / max(corral["ttft_p50"], 0.05)
        out.append(
            f"litellm vs corral-proxy+keys {key}: LiteLLM adds {a['ttft_p50']:.2f} ms at p50, Corral "
            f"{corral['ttft_p50']:.2f} ms: {ratio:.1f}x -> {'met' if ratio >= 5 else 'NOT met'} (>= 5x)"
        )
    if not lite:
        out.append("litellm: not measured -> the 5x target is n/a in this run")
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| target | request | n | TTFT p50 | TTFT p99 | total p50 | total p99 | added TTFT p50 / p99 | tok/s/stream | complete |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in report["targets"].items():
        if "skipped" in rows:
            lines.append(f"| {name} | – | – | {rows['skipped']} | | | | | | |")
            continue
        for key, r in rows.items():
            a = report["added"].get(name, {}).get(key)
            added = f"+{a['ttft_p50']:.2f} / +{a['ttft_p99']:.2f}" if a else "–"
            lines.append(
                f"| {name} | {key} | {r['n']} | {r['ttft_p50']:.2f} | {r['ttft_p99']:.2f} | "
                f"{r['total_p50']:.2f} | {r['total_p99']:.2f} | {added} | {r['tok_s_per_stream']:.0f} | "
                f"{'yes' if r['tokens_complete'] else 'NO'} |"
            )
    return "\n".join(lines + [""] + [f"- {v}" for v in report["verdicts"]])


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="corral-bench-gateway-"))
    stub_port = free_port()
    stub = _spawn(
        [sys.executable, "-m", "bench.gateway", "--stub", str(stub_port), str(args.tokens), str(args.interval_ms)],
        work / "stub.log",
    )
    targets: list[Target] = []
    try:
        await _wait_up(stub_port, "/api/version", stub, 30)
        targets = await start_targets(stub_port, work, not args.no_litellm, args.floor)
        for level in args.concurrency:
            for path in ("/v1/chat/completions", "/api/chat"):
                log.info("driving %s at %d concurrent clients", path, level)
                await drive(targets, path, args.requests, level)
        report = summarise(targets, args.tokens)
        report["settings"] = {
            "requests": args.requests,
            "concurrency": args.concurrency,
            "tokens": args.tokens,
            "interval_ms": args.interval_ms,
            "logs": str(work),
        }
        return report
    finally:
        for t in targets:
            if t.proc is not None:
                t.proc.terminate()
        stub.terminate()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=200, help="requests per target, path and level")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--interval-ms", type=float, default=2.0)
    p.add_argument("--no-litellm", action="store_true")
    p.add_argument("--out", type=Path, default=OUT_DIR / "gateway.json")
    p.add_argument("--stub", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--relay", nargs=2, type=int, help=argparse.SUPPRESS)
    p.add_argument("--bare-proxy", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--uvicorn-relay", nargs=3, help=argparse.SUPPRESS)
    p.add_argument(
        "--floor",
        action="store_true",
        help="add bare uvicorn relays (Corral's upstream client, and aiohttp's) as reference targets",
    )
    args = p.parse_args(argv)
    if args.relay:
        run_relay(*args.relay)
        return 0
    if args.uvicorn_relay:
        run_uvicorn_relay(int(args.uvicorn_relay[0]), int(args.uvicorn_relay[1]), args.uvicorn_relay[2])
        return 0
    if args.bare_proxy:
        run_bare_proxy(int(args.bare_proxy[0]), args.bare_proxy[1])
        return 0
    if args.stub:
        run_stub(int(args.stub[0]), int(args.stub[1]), float(args.stub[2]))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    report = asyncio.run(main_async(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
