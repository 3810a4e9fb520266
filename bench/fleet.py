"""The fleet gateway at scale: cache-aware routing against least-loaded and round-robin, and the gateway's ceiling.

    .venv/bin/python -m bench.fleet                      # routing (default): real Corral upstreams, 3 policies
    .venv/bin/python -m bench.fleet --mode ceiling       # stub upstreams: 1..16 behind one gateway
    .venv/bin/python -m bench.fleet --mode all --quick   # CI-sized, both

``routing``: ``--upstreams`` real ``corral serve`` processes on loopback
(SmolLM2, ``--parallel`` slots each, ``CORRAL_NUM_THREADS=--threads``) and,
side by side in front of the same upstreams, one ``corral proxy --fleet``
gateway per policy. Each repeat runs every policy in turn, for a warm-up and
then a measurement window, the order rotating from repeat to repeat so drift
hits all alike. Load: ``--clients`` closed-loop clients, each running
conversations back to back, the clients' starts spread over the warm-up; a
conversation opens with its own long document in the system prompt
(``--doc-words``, unique from its first token so no two conversations share
a cached prefix) and has ``--turns`` turns, each appending the answer
(``--num-predict`` tokens) and a new question, after a think time
(exponential, mean ``--think`` s). The think time matters: with none, a
closed loop makes least-loaded sticky by accident (the upstream a client's
turn just left is the least loaded one when its next turn comes), which
real users, who read before they type, do not do. Per policy: TTFT (client
side, first content token) on turns after the first, mean and p95, and on
all turns; turns/s and generated tokens/s over the window; and two
prompt-cache hit rates. The figures, ratios and verdicts are
computed in :mod:`bench.fleet_report`.

``ceiling``: stub upstreams (``bench.gateway``'s stub in its own process
each: fixed-rate token streams, almost no CPU), 1, 2, 4, 8 and 16 of them
behind one gateway (least-loaded; one gateway per level, all started side by
side, levels interleaved across repeats), ``--streams`` closed-loop
``/api/chat`` streams per upstream. Reported, over a window after a warm-up:
tokens/s through the gateway (tokens that arrived inside the window), the
gateway process's CPU per token (``/proc/<pid>/task/*/schedstat``), and how
many upstreams one gateway core can feed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import fleet_report as rp
from bench.gateway import MODEL as STUB_MODEL
from bench.gateway import _corral_env, _spawn, _wait_up
from bench.httpclient import stream_lines
from bench.noise import _busy_jiffies, _proc_jiffies
from bench.peers import ROOT, free_port, tree_pids
from bench.profile import thread_cpu
from bench.run import OUT_DIR, machine_info
from bench.workload import SAMPLING, filler

log = logging.getLogger("bench.fleet")
POLICIES = ("cache-aware", "least-loaded", "round-robin")
MODEL = "smollm2:135m"
_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def write_fleet(path: Path, upstreams: list[Server], routing: str, kind: str, **settings: Any) -> Path:
    lines = [f"routing = {json.dumps(routing)}"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    for u in upstreams:
        lines += ["", "[[upstream]]", f"name = {json.dumps(u.name)}", f'url = "{u.url}"', f'kind = "{kind}"']
    path.write_text("\n".join(lines) + "\n")
    return path


async def start_gateway(name: str, fleet_file: Path, work: Path) -> Server:
    port = free_port()
    home = work / f"home-{name}"
    home.mkdir(parents=True, exist_ok=True)
    proc = _spawn(
        [sys.executable, "-m", "corral", "proxy", "--fleet", str(fleet_file), "--port", str(port)],
        work / f"{name}.log",
        _corral_env(home),
    )
    gw = Server(name, port, proc)
    await _wait_up(port, "/api/version", proc, 60)
    return gw


async def get_json(port: int, path: str, timeout: float = 5.0) -> Any:
    """GET ``path`` on loopback and decode the JSON answer (setup only; Connection: close)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():  # de-chunk
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2 :]
        body = out
    return json.loads(body)


async def wait_loaded(gateways: list[Server], n_upstreams: int, model: str, seconds: float = 60.0) -> None:
    """Until every gateway's discovery sees ``model`` loaded on all its upstreams (rule 1 of cache-aware)."""
    deadline = time.monotonic() + seconds
    for gw in gateways:
        while True:
            ps = await get_json(gw.port, "/api/ps")
            ups = {e.get("upstream") for e in ps.get("models", []) if model in (e.get("model"), e.get("name"))}
            if len(ups) >= n_upstreams:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{gw.name}: discovery saw {model} loaded on {sorted(ups)} only")
            await asyncio.sleep(0.3)


# ---- routing: real Corral upstreams -----------------------------------------------------------------------


@dataclass
class Turn:
    """One chat turn as the client saw it, plus what the upstream said about its prompt."""

    policy: str
    repeat: int
    client: int
    conv: int
    turn: int  # 1 = the conversation's first
    t_start: float
    ttft: float = 0.0
    total: float = 0.0
    upstream: str = ""
    prev_upstream: str = ""
    prompt_tokens: int = 0
    prompt_ms: float = 0.0
    eval_tokens: int = 0
    error: str = ""

    @property
    def t_end(self) -> float:
        return self.t_start + self.total


@dataclass
class Conversation:
    cid: int
    messages: list[dict[str, str]]
    turn: int = 0
    upstream: str = ""


_QUESTIONS = (
    "What does the document say about the harbour?",
    "Who measured the bridge, and why?",
    "What did the council decide?",
    "How long was the winter?",
    "What was in the granaries?",
    "Which prices did the merchants argue about?",
    "Summarise the last section.",
    "What happened in the evening?",
)


def new_conversation(cid: int, doc_words: int, seed: int) -> Conversation:
    doc = filler(doc_words, seed * 100_003 + cid)
    system = f"Conversation {cid}-{seed}. Answer questions about this document in a few words.\n\nDocument:\n{doc}"
    return Conversation(cid, [{"role": "system", "content": system}])


async def chat_turn(port: int, conv: Conversation, t: Turn, num_predict: int) -> str:
    """Send the conversation's next turn through the gateway on ``port``; fill ``t``; return the answer."""
    conv.messages.append({"role": "user", "content": _QUESTIONS[(conv.cid + conv.turn) % len(_QUESTIONS)]})
    payload = {
        "model": MODEL,
        "messages": conv.messages,
        "stream": True,
        "options": dict(SAMPLING, num_predict=num_predict),
    }
    headers: dict[str, str] = {}
    parts: list[str] = []
    start = time.perf_counter()
    async for line in stream_lines("127.0.0.1", port, "/api/chat", payload, response_headers=headers, timeout=900):
        obj = json.loads(line)
        if "error" in obj:
            raise RuntimeError(obj["error"])
        content = (obj.get("message") or {}).get("content")
        if content:
            if not parts:
                t.ttft = time.perf_counter() - start
            parts.append(content)
        if obj.get("done"):
            t.prompt_tokens = int(obj.get("prompt_eval_count") or 0)
            t.prompt_ms = float(obj.get("prompt_eval_duration") or 0) / 1e6
            t.eval_tokens = int(obj.get("eval_count") or 0)
    t.total = time.perf_counter() - start
    t.upstream = headers.get("x-corral-upstream", "?")
    answer = "".join(parts)
    conv.messages.append({"role": "assistant", "content": answer})
    return answer


@dataclass
class Window:
    policy: str
    repeat: int
    opened: float
    closed: float
    turns: list[Turn]
    background_share: float
    gateway_cpu_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "repeat": self.repeat,
            "window_s": self.closed - self.opened,
            "background_share": self.background_share,
            "gateway_cpu_s": self.gateway_cpu_s,
            "turns": [{**asdict(t), "t_start": t.t_start - self.opened} for t in self.turns],
        }


async def run_policy(
    gw: Server,
    policy: str,
    repeat: int,
    args: argparse.Namespace,
    ids: Callable[[], int],
    own_pids: Callable[[], list[int]],
) -> Window:
    """Closed-loop clients through one gateway: ``--warmup`` seconds, then a window of ``--window`` seconds
    that closes only once every client has had a later turn answered inside it. Then drain."""
    turns: list[Turn] = []
    t0 = time.perf_counter()
    opened = t0 + args.warmup
    close_at = opened + args.window
    give_up_at = close_at + 2 * args.window + 120  # a client that never gets a later turn answered
    got_later: set[int] = set()
    closed: float | None = None

    def window_done(now: float) -> bool:
        nonlocal closed
        if closed is None and now >= close_at and (len(got_later) == args.clients or now >= give_up_at):
            closed = now
        return closed is not None

    async def client(i: int) -> None:
        rng = random.Random(repeat * 1000 + i)
        # Clients start spread over the warm-up, so their cold first turns do not all come at once.
        await asyncio.sleep(i * args.warmup / args.clients + rng.uniform(0, 0.1))
        while not window_done(time.perf_counter()):
            conv = new_conversation(ids(), args.doc_words, args.seed)
            while conv.turn < args.turns and not window_done(time.perf_counter()):
                if conv.turn:  # the user reads the answer and types the next question
                    await asyncio.sleep(min(rng.expovariate(1 / args.think), 5 * args.think) if args.think else 0)
                conv.turn += 1
                t = Turn(policy, repeat, i, conv.cid, conv.turn, time.perf_counter(), prev_upstream=conv.upstream)
                try:
                    await chat_turn(gw.port, conv, t, args.num_predict)
                except Exception as exc:
                    t.total = time.perf_counter() - t.t_start
                    t.error = f"{type(exc).__name__}: {exc}"[:300]
                    turns.append(t)
                    log.warning("%s: turn failed: %s", policy, t.error)
                    await asyncio.sleep(1.0)
                    break
                conv.upstream = t.upstream
                turns.append(t)
                if t.turn > 1 and t.t_start >= opened:
                    got_later.add(i)

    busy0, ours0 = _busy_jiffies(), sum(_proc_jiffies(p) for p in own_pids())
    gw_cpu0 = _tree_cpu(gw.proc.pid)
    wall0 = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(args.clients)))
    wall = time.monotonic() - wall0
    busy, ours = _busy_jiffies() - busy0, sum(_proc_jiffies(p) for p in own_pids()) - ours0
    background = max(0.0, (busy - ours) / (wall * (os.cpu_count() or 1) * _TCK))
    assert closed is not None
    return Window(policy, repeat, opened, closed, turns, background, _tree_cpu(gw.proc.pid) - gw_cpu0)


def _tree_cpu(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its descendants, every thread (schedstat, exact)."""
    total = 0.0
    for p in tree_pids(pid):
        try:
            total += sum(cpu for _, cpu, _ in thread_cpu(p).values())
        except OSError:
            pass
    return total


def _own_cpu() -> float:
    """CPU seconds used so far by this process alone (the driver), not its children."""
    return sum(cpu for _, cpu, _ in thread_cpu(os.getpid()).values())


async def start_upstream(i: int, args: argparse.Namespace, work: Path) -> Server:
    port = free_port()
    home = work / f"upstream-{i}"
    home.mkdir(parents=True)
    env = _corral_env(home)
    env.update(
        {
            "CORRAL_HOST": f"127.0.0.1:{port}",
            "CORRAL_NUM_THREADS": str(args.threads),
            "OLLAMA_NUM_PARALLEL": str(args.parallel),
            "OLLAMA_KEEP_ALIVE": "-1",
            "OLLAMA_CONTEXT_LENGTH": str(args.ctx),
            "CORRAL_PROMPT_CACHE_MIB": str(args.prompt_cache_mib),
        }
    )
    proc = _spawn([sys.executable, "-m", "corral", "serve"], work / f"upstream-{i}.log", env)
    srv = Server(f"u{i + 1}", port, proc)
    await _wait_up(port, "/api/version", proc, 240)
    # Load the model and touch every slot, directly (not through a gateway: no policy gets a head start).
    warm = [{"role": "user", "content": f"Warm-up {i}-{k}. Hello."} for k in range(args.parallel)]
    await asyncio.gather(*(chat_turn(port, Conversation(-1, [m]), Turn("warm-up", 0, 0, 0, 0, 0.0), 2) for m in warm))
    return srv


async def routing_mode(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    servers: list[Server] = []
    try:
        upstreams = list(await asyncio.gather(*(start_upstream(i, args, work) for i in range(args.upstreams))))
        servers += upstreams
        gateways: dict[str, Server] = {}
        for policy in args.policies:
            fleet = write_fleet(
                work / f"fleet-{policy}.toml", upstreams, policy, "corral", refresh_interval=10.0, health_interval=2.0
            )
            gateways[policy] = await start_gateway(policy, fleet, work)
            servers.append(gateways[policy])
        await wait_loaded(list(gateways.values()), len(upstreams), MODEL)
        counter = iter(range(10**9))

        def own_pids() -> list[int]:  # the driver and everything it started
            return tree_pids(os.getpid())

        windows: list[Window] = []
        for r in range(args.repeats):
            k = r % len(args.policies)
            order = args.policies[k:] + args.policies[:k]
            for policy in order:
                log.info("repeat %d/%d: %s", r + 1, args.repeats, policy)
                w = await run_policy(gateways[policy], policy, r, args, lambda: next(counter), own_pids)
                windows.append(w)
                log.info("  %s", rp.window_line(w.to_dict()))
        return {
            "settings": {
                k: getattr(args, k)
                for k in (
                    "upstreams",
                    "parallel",
                    "threads",
                    "ctx",
                    "clients",
                    "turns",
                    "doc_words",
                    "num_predict",
                    "think",
                    "window",
                    "warmup",
                    "repeats",
                    "prompt_cache_mib",
                    "seed",
                )
            },
            "model": MODEL,
            "policies": list(args.policies),
            "windows": [w.to_dict() for w in windows],
        }
    finally:
        for s in reversed(servers):
            s.stop()


# ---- ceiling: stub upstreams ----------------------------------------------------------------------------

_STUB_BODY = json.dumps({"model": STUB_MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True}).encode()
_TOKEN = b'" word"'


async def stream_stub_chat(port: int, state: dict[str, Any]) -> int:
    """One streamed ``/api/chat`` through the gateway; returns the stub's tokens that arrived, and adds those
    that arrived while ``state["measuring"]`` to ``state["tokens"]``.

    Leaner than :func:`bench.httpclient.stream_lines` on purpose: at thousands of tokens/s the driver shares
    the box with the gateway it measures, so it reads whatever bytes have arrived and counts the token marker
    in them (the chunked framing never contains it), with no per-line work. ``Connection: close`` ends the body.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_STUB_BODY), _STUB_BODY)
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"gateway answered {head[:200]!r}")
        n, tail = 0, b""
        while data := await reader.read(65536):
            data = tail + data
            got = data.count(_TOKEN)
            n += got
            if state["measuring"]:
                state["tokens"] += got
            cut = len(data) - len(_TOKEN) + 1  # keep a possible partial marker for the next read
            tail = data[max(cut, data.rfind(_TOKEN) + len(_TOKEN) if _TOKEN in data else 0) :]
        return n
    finally:
        writer.close()


async def drive_ceiling(gw: Server, level: int, args: argparse.Namespace, stub_pids: list[int]) -> dict[str, Any]:
    """``level × --streams`` closed-loop streams through ``gw``: tokens and CPU over a window after a warm-up."""
    state = {"measuring": False, "stop": False, "tokens": 0, "requests": 0, "short": 0}

    async def client() -> None:
        await asyncio.sleep(random.uniform(0, args.stub_tokens * args.interval_ms / 1000))  # out of step
        while not state["stop"]:
            n = await stream_stub_chat(gw.port, state)
            if state["measuring"]:
                state["requests"] += 1
                state["short"] += n != args.stub_tokens

    tasks = [asyncio.create_task(client()) for _ in range(level * args.streams)]
    await asyncio.sleep(args.ceiling_warmup)
    state["measuring"] = True
    gw0, stubs0, me0, busy0 = _tree_cpu(gw.proc.pid), sum(map(_tree_cpu, stub_pids)), _own_cpu(), _busy_jiffies()
    t0 = time.perf_counter()
    await asyncio.sleep(args.ceiling_window)
    # Tokens that arrived inside the window count; the streams then finish outside it.
    state["measuring"] = False
    wall = time.perf_counter() - t0
    gw_cpu = _tree_cpu(gw.proc.pid) - gw0
    stubs_cpu = sum(map(_tree_cpu, stub_pids)) - stubs0
    me_cpu = _own_cpu() - me0
    box = (_busy_jiffies() - busy0) / _TCK
    state["stop"] = True
    await asyncio.gather(*tasks)
    tokens = int(state["tokens"])
    return {
        "level": level,
        "streams": level * args.streams,
        "window_s": wall,
        "tokens": tokens,
        "requests": state["requests"],
        "short_answers": state["short"],
        "tokens_per_s": tokens / wall,
        "gateway_cpu_s": gw_cpu,
        "gateway_cores": gw_cpu / wall,
        "gateway_us_per_token": gw_cpu / max(tokens, 1) * 1e6,
        "stubs_cores": stubs_cpu / wall,
        "driver_cores": me_cpu / wall,
        "box_busy_cores": box / wall,
    }


async def ceiling_mode(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    servers: list[Server] = []
    try:
        stubs = []
        for i in range(max(args.levels)):
            port = free_port()
            proc = _spawn(
                [
                    sys.executable,
                    "-m",
                    "bench.gateway",
                    "--stub",
                    str(port),
                    str(args.stub_tokens),
                    str(args.interval_ms),
                ],
                work / f"stub-{i}.log",
            )
            stubs.append(Server(f"s{i + 1}", port, proc))
        servers += stubs
        for s in stubs:
            await _wait_up(s.port, "/api/version", s.proc, 60)
        gateways = {}
        for level in args.levels:
            fleet = write_fleet(
                work / f"fleet-ceiling-{level}.toml",
                stubs[:level],
                args.ceiling_routing,
                "ollama",
                refresh_interval=10.0,
                health_interval=5.0,
            )
            gateways[level] = await start_gateway(f"ceiling-{level}", fleet, work)
            servers.append(gateways[level])
        await asyncio.gather(*(wait_loaded([g], lv, STUB_MODEL) for lv, g in gateways.items()))
        rows = []
        levels = list(args.levels)
        for r in range(args.repeats):
            order = levels[r % len(levels) :] + levels[: r % len(levels)]
            for level in order:
                row = await drive_ceiling(gateways[level], level, args, [s.proc.pid for s in stubs[:level]])
                row["repeat"] = r
                rows.append(row)
                log.info(
                    "ceiling repeat %d, %d upstreams: %.0f tok/s, gateway %.0f us/token, %.2f cores",
                    r + 1,
                    level,
                    row["tokens_per_s"],
                    row["gateway_us_per_token"],
                    row["gateway_cores"],
                )
        return {
            "settings": {
                "levels": levels,
                "streams_per_upstream": args.streams,
                "stub_tokens": args.stub_tokens,
                "interval_ms": args.interval_ms,
                "window_s": args.ceiling_window,
                "warmup_s": args.ceiling_warmup,
                "repeats": args.repeats,
                "routing": args.ceiling_routing,
                "path": "/api/chat",
            },
            "rows": rows,
        }
    finally:
        for s in reversed(servers):
            s.stop()


# ---- CLI ------------------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["routing", "ceiling", "all"], default="routing")
    p.add_argument("--quick", action="store_true", help="CI-sized: proves the harness runs, numbers mean little")
    p.add_argument("--out", type=Path, default=OUT_DIR / "fleet.json")
    p.add_argument("--repeats", type=int, default=None, help="default 3 (quick: 1)")
    g = p.add_argument_group("routing")
    g.add_argument(
        "--policies",
        type=lambda t: [x for x in t.split(",") if x],
        default=list(POLICIES),
        help="a subset of " + ",".join(POLICIES),
    )
    g.add_argument("--upstreams", type=int, default=None, help="Corral upstreams (default 3; quick: 2)")
    g.add_argument("--parallel", type=int, default=2, help="OLLAMA_NUM_PARALLEL of each upstream (slots)")
    g.add_argument("--threads", type=int, default=1, help="CORRAL_NUM_THREADS of each upstream")
    g.add_argument("--ctx", type=int, default=4096, help="context per slot")
    g.add_argument("--prompt-cache-mib", type=int, default=0, help="CORRAL_PROMPT_CACHE_MIB of each upstream")
    g.add_argument("--clients", type=int, default=None, help="concurrent conversations (default upstreams x parallel)")
    g.add_argument("--turns", type=int, default=None, help="turns per conversation (default 6; quick: 2)")
    g.add_argument(
        "--doc-words",
        type=int,
        default=None,
        help="document per conversation (default 700, ~850 tokens with the template; quick: 120)",
    )
    g.add_argument("--num-predict", type=int, default=8)
    g.add_argument(
        "--think",
        type=float,
        default=None,
        help="mean seconds a user thinks between turns (exponential; default 2; quick: 0.1)",
    )
    g.add_argument("--window", type=float, default=None, help="seconds measured per policy (default 45; quick: 2)")
    g.add_argument(
        "--warmup", type=float, default=None, help="seconds of load before the window (default 10; quick: 0)"
    )
    g.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    g = p.add_argument_group("ceiling")
    g.add_argument(
        "--levels", type=_ints, default=None, help="stub upstreams per gateway (default 1,2,4,8,16; quick: 1,2)"
    )
    g.add_argument("--streams", type=int, default=None, help="concurrent streams per upstream (default 4; quick: 2)")
    g.add_argument("--stub-tokens", type=int, default=None, help="tokens per request (default 64; quick: 16)")
    g.add_argument("--interval-ms", type=float, default=10.0, help="stub: milliseconds between tokens")
    g.add_argument("--ceiling-window", type=float, default=None, help="seconds per level (default 5; quick: 1.5)")
    g.add_argument("--ceiling-warmup", type=float, default=None, help="default 1 (quick: 0.5)")
    g.add_argument("--ceiling-routing", choices=["least-loaded", "round-robin"], default="least-loaded")
    args = p.parse_args(argv)
    full = {
        "repeats": 3,
        "upstreams": 3,
        "turns": 6,
        "doc_words": 700,
        "window": 45.0,
        "warmup": 10.0,
        "think": 2.0,
        "levels": [1, 2, 4, 8, 16],
        "streams": 4,
        "stub_tokens": 64,
        "ceiling_window": 5.0,
        "ceiling_warmup": 1.0,
    }
    quick = {
        "repeats": 1,
        "upstreams": 2,
        "turns": 2,
        "doc_words": 120,
        "window": 2.0,
        "warmup": 0.0,
        "think": 0.1,
        "levels": [1, 2],
        "streams": 2,
        "stub_tokens": 16,
        "ceiling_window": 1.5,
        "ceiling_warmup": 0.5,
    }
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    unknown = sorted(set(args.policies) - set(POLICIES))
    if unknown or not args.policies:
        p.error(f"--policies: expected some of {','.join(POLICIES)}, got {','.join(unknown) or 'none'}")
    if args.clients is None:
        args.clients = 2 if args.quick else args.upstreams * args.parallel
    return args


async def main_async(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="corral-bench-fleet-"))
    commit = await asyncio.to_thread(
        subprocess.run, ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": args.mode,
        "quick": args.quick,
        "command": "python -m bench.fleet " + " ".join(argv),
        "commit": commit.stdout.strip(),
        "machine": machine_info(),
        "logs": str(work),
    }
    if args.mode in ("routing", "all"):
        report["routing"] = await routing_mode(args, work)
    if args.mode in ("ceiling", "all"):
        report["ceiling"] = await ceiling_mode(args, work)
    return rp.summarise(report)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    report = asyncio.run(main_async(args, argv))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(report["table_markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
