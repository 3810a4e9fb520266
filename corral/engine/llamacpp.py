"""In-process llama.cpp engine, built on ``xllamacpp``.

Why xllamacpp: it ships llama.cpp's own server core as a prebuilt manylinux
wheel (no compile at install), and that core already does continuous
batching over parallel slots, JSON-schema constrained sampling, prompt (KV)
cache reuse, per-request sampling, logprobs with token ids, and embeddings.
llama-cpp-python, the alternative, compiles for minutes and serves one
request at a time (measured: see ``bench/RESULTS.md``).

Each loaded model is one ``xllamacpp.Server`` (plus, for a causal model
asked for embeddings, a one-slot embedding server started on first use, see
``LlamaCppEngine.load``). The server core listens on an ephemeral loopback
port. Completions stream from it straight into the event loop
(``corral.engine.sse``: no Python thread per request, no thread hop per
token), and dropping that connection is how a client disconnect cancels
generation and frees the slot. The same port serves the auxiliary calls
(``/tokenize``, ``/detokenize``, ``/slots``); embeddings go through the
in-process ``handle_embeddings`` call on a worker thread.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from corral.engine.base import CompletionRequest, DoneEvent, Event, LoadSpec, TokenEvent
from corral.engine.sse import open_completion
from corral.errors import BadRequest, CorralError, EngineError
from corral.store.gguf_meta import GGUFInfo, read_gguf

log = logging.getLogger(__name__)


@functools.cache
def _supported_archs() -> frozenset[str]:
    """Architecture names known to the pinned gguf package.

    Its ``constants`` module is loaded on its own: importing the package would
    pull in numpy (~15 MB of resident memory) for one table of names.
    """
    spec = importlib.util.find_spec("gguf")
    if spec is None or not spec.submodule_search_locations:
        raise EngineError("the gguf package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "constants.py"
    mod_spec = importlib.util.spec_from_file_location("corral._gguf_constants", path)
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return frozenset(module.MODEL_ARCH_NAMES.values())


def _error_from_payload(payload: dict[str, Any]) -> CorralError:
    err = payload.get("error", payload)
    if isinstance(err, dict):
        code = int(err.get("code", 500) or 500)
        message = str(err.get("message", "engine error"))
    else:
        code, message = 500, str(err)
    if 400 <= code < 500:
        return BadRequest(message)
    return EngineError(message)


def sampling_body(request: CompletionRequest) -> dict[str, Any]:
    """llama.cpp's completion request for ``request`` (Ollama option names mapped to llama.cpp's)."""
    o = request.options
    body: dict[str, Any] = {
        "prompt": request.prompt,
        "stream": True,
        "cache_prompt": True,
        "n_predict": int(o.get("num_predict", -1)) if int(o.get("num_predict", -1)) >= 0 else -1,
        "temperature": o.get("temperature", 0.8),
        "top_k": o.get("top_k", 40),
        "top_p": o.get("top_p", 0.9),
        "min_p": o.get("min_p", 0.0),
        "typical_p": o.get("typical_p", 1.0),
        "repeat_penalty": o.get("repeat_penalty", 1.1),
        "repeat_last_n": o.get("repeat_last_n", 64),
        "presence_penalty": o.get("presence_penalty", 0.0),
        "frequency_penalty": o.get("frequency_penalty", 0.0),
        "n_keep": o.get("num_keep", 4),
    }
    seed = o.get("seed", -1)
    if isinstance(seed, int) and seed >= 0:
        body["seed"] = seed
    if o.get("stop"):
        body["stop"] = list(o["stop"])
    if request.json_schema is not None:
        body["json_schema"] = request.json_schema
    if request.grammar:
        body["grammar"] = request.grammar
    if request.want_logprobs:
        body["n_probs"] = max(1, request.n_probs)
    return body


def _logprobs(entries: list[dict[str, Any]], top: int) -> tuple[list[dict[str, Any]], list[int]]:
    """llama.cpp's ``completion_probabilities`` -> Ollama's logprobs, and the token ids.

    As Ollama: with ``top`` 0 each token carries its logprob and bytes and
    no ``top_logprobs`` at all (llama.cpp is still asked for one alternative:
    that is how it reports the chosen token's logprob); with ``top`` N it
    carries at most N alternatives, most likely first.
    """
    out, ids = [], []
    for item in entries:
        ids.append(int(item.get("id", -1)))
        entry: dict[str, Any] = {
            "token": item.get("token", ""),
            "logprob": item.get("logprob", 0.0),
            "bytes": item.get("bytes"),
        }
        if top > 0:
            alternatives = [
                {"token": t.get("token", ""), "logprob": t.get("logprob", 0.0), "bytes": t.get("bytes")}
                for t in item.get("top_logprobs") or []
            ]
            alternatives.sort(key=lambda t: -float(t["logprob"]))
            entry["top_logprobs"] = alternatives[:top]
        out.append(entry)
    return out, ids


def _done(payload: dict[str, Any]) -> DoneEvent:
    """The last event of a native ``/completion`` stream -> DoneEvent."""
    t = payload.get("timings") or {}
    return DoneEvent(
        done_reason="length" if payload.get("stop_type") == "limit" else "stop",
        prompt_tokens=int(payload.get("tokens_evaluated", t.get("prompt_n", 0))),
        cached_tokens=int(t.get("cache_n", 0)),
        prompt_eval_ns=int(float(t.get("prompt_ms", 0.0)) * 1e6),
        eval_count=int(payload.get("tokens_predicted", t.get("predicted_n", 0))),
        eval_ns=int(float(t.get("predicted_ms", 0.0)) * 1e6),
        extra={"timings": t, "stop_word": payload.get("stopping_word") if payload.get("stop_type") == "word" else None},
    )


class LlamaCppModel:
    """One model loaded in-process (see module docstring)."""

    def __init__(
        self, spec: LoadSpec, server: Any, size_bytes: int, embed_params: Any = None, embed_kv_bytes: int = 0
    ) -> None:
        self.spec = spec
        self.server = server
        self.size_bytes = size_bytes
        # Causal models: parameters of the one-slot embedding runner, started
        # on the first embed() (one slot, so a request's inputs go through it
        # one at a time and each vector is the same as it would be alone).
        self._embed_params = embed_params
        self._embed_kv_bytes = embed_kv_bytes  # its KV cache, added to size_bytes once it runs
        self._embed_server: Any = None
        self._embed_lock = asyncio.Lock()
        self.n_ctx_per_slot = spec.num_ctx
        self.base_url = str(server.listening_address)
        address = urlsplit(self.base_url)
        self._host, self._port = address.hostname or "127.0.0.1", int(address.port or 80)
        self._pool = ThreadPoolExecutor(max_workers=spec.num_parallel + 2, thread_name_prefix="llama")
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=60.0)

    async def complete(self, request: CompletionRequest) -> AsyncIterator[Event]:
        stream = await open_completion(self._host, self._port, orjson.dumps(sampling_body(request)))
        loads, get, top = orjson.loads, stream.next, request.n_probs
        try:
            while (item := await get()) is not None:
                payload = loads(item)
                if payload.get("stop") is False:  # one token (its text may be held back: a stop word)
                    text = payload.get("content") or ""
                    probs = payload.get("completion_probabilities")
                    if probs:
                        yield TokenEvent(text, *_logprobs(probs, top))
                    elif text:
                        yield TokenEvent(text)
                elif "error" in payload or "stop" not in payload:
                    raise _error_from_payload(payload)
                else:
                    yield _done(payload)
        finally:
            stream.close()

    async def _embedder(self) -> Any:
        if self._embed_params is None:
            return self.server
        async with self._embed_lock:
            if self._embed_server is None:
                self._embed_server = await _start(self._embed_params, self.spec)
                self.size_bytes += self._embed_kv_bytes
            return self._embed_server

    async def embed(self, inputs: list[list[int] | str], *, normalize: bool = True) -> tuple[list[list[float]], int]:
        loop = asyncio.get_running_loop()
        server = await self._embedder()
        # embd_normalize: 2 is L2 (llama.cpp's default), -1 the model's raw pooled vector.
        payload = json.dumps({"input": inputs, "encoding_format": "float", "embd_normalize": 2 if normalize else -1})
        raw = await loop.run_in_executor(self._pool, server.handle_embeddings, payload)
        data = json.loads(raw)
        if "error" in data:
            raise _error_from_payload(data)
        rows = sorted(data.get("data", []), key=lambda d: d.get("index", 0))
        vectors = [row["embedding"] for row in rows]
        return vectors, int((data.get("usage") or {}).get("prompt_tokens", 0))

    async def tokenize(self, text: str, *, special: bool = True, add_special: bool = False) -> list[int]:
        r = await self._http.post(
            "/tokenize", json={"content": text, "add_special": add_special, "parse_special": special}
        )
        r.raise_for_status()
        return list(r.json()["tokens"])

    async def detokenize(self, tokens: list[int]) -> str:
        r = await self._http.post("/detokenize", json={"tokens": tokens})
        r.raise_for_status()
        return str(r.json()["content"])

    async def slots(self) -> list[dict[str, Any]]:
        r = await self._http.get("/slots")
        r.raise_for_status()
        return list(r.json())

    async def close(self) -> None:
        await self._http.aclose()
        server, self.server = self.server, None
        embed_server, self._embed_server = self._embed_server, None
        loop = asyncio.get_running_loop()
        # ~Server joins llama.cpp's loop thread: do it off the event loop.
        await loop.run_in_executor(None, _drop, server)
        if embed_server is not None:
            await loop.run_in_executor(None, _drop, embed_server)
        self._pool.shutdown(wait=False)


def _drop(obj: Any) -> None:
    del obj


# Bytes per cached element: ggml's q8_0 packs 32 values in 34 bytes, q4_0 in 18.
_KV_ELEMENT_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


def kv_bytes_per_token(path: Any, kv_cache_type: str = "f16") -> int:
    """Bytes of KV cache one token takes for the GGUF model at ``path``."""
    return _kv_bytes_per_token(read_gguf(path), kv_cache_type)


def _kv_bytes_per_token(info: GGUFInfo, kv_cache_type: str) -> int:
    arch = info.architecture
    kv = info.kv
    layers = int(kv.get(f"{arch}.block_count", 0) or 0)
    heads = int(kv.get(f"{arch}.attention.head_count", 1) or 1)
    heads_kv = kv.get(f"{arch}.attention.head_count_kv", heads)
    heads_kv = int(heads_kv if isinstance(heads_kv, int) else heads)
    emb = int(kv.get(f"{arch}.embedding_length", 0) or 0)
    head_dim = emb // heads if heads else 0
    return int(2 * layers * heads_kv * head_dim * _KV_ELEMENT_BYTES.get(kv_cache_type, 2.0))  # K and V


class LlamaCppEngine:
    """Loads GGUF files into in-process llama.cpp servers."""

    name = "llama.cpp"

    def __init__(self, *, num_threads: int = 0, verbose: bool = False) -> None:
        self.num_threads = num_threads or (os.cpu_count() or 2)
        self.verbose = verbose

    async def load(self, spec: LoadSpec) -> LlamaCppModel:
        info = read_gguf(spec.path)
        if info.architecture not in _supported_archs():
            raise BadRequest(f'unsupported model architecture "{info.architecture}"')
        # An encoder (BERT and kin) embeds in its main runner: it has no KV
        # cache, so its pooled vectors cannot depend on the batch. A causal
        # model's main runner only generates; its embeddings come from a
        # second, one-slot runner started on first use (LlamaCppModel.embed).
        params = self.params(spec, info, parallel=spec.num_parallel, embedding=spec.embedding and info.pooling)
        server = await _start(params, spec)
        per_token = _kv_bytes_per_token(info, spec.kv_cache_type)
        size = spec.path.stat().st_size + per_token * int(params.n_ctx)
        if spec.embedding and not info.pooling:
            embed_params = self.params(spec, info, parallel=1, embedding=True)
            return LlamaCppModel(spec, server, size, embed_params, per_token * int(embed_params.n_ctx))
        return LlamaCppModel(spec, server, size)

    def params(self, spec: LoadSpec, info: GGUFInfo, *, parallel: int, embedding: bool) -> Any:
        """llama.cpp server parameters for ``spec`` (a model described by ``info``) with ``parallel`` slots."""
        import xllamacpp as xl

        p = xl.CommonParams()
        p.model.path = str(spec.path)
        p.n_parallel = parallel
        p.n_ctx = spec.num_ctx * parallel
        # One KV stream per slot, each exactly num_ctx, as Ollama. A unified
        # pool makes every slot's attention span the cells of all the others
        # (measured: a 1,200-token prompt 12% slower with three other slots
        # holding ~1,000 tokens each) and lets one long generation run past
        # num_ctx. Its one benefit, batch-invariant pooled embeddings of a
        # causal model, comes from the separate one-slot embedding runner.
        p.kv_unified = False
        p.ctx_shift = True
        p.n_batch = spec.num_batch
        p.n_ubatch = spec.num_batch
        threads = spec.num_thread or self.num_threads
        p.cpuparams.n_threads = threads
        p.cpuparams_batch.n_threads = threads
        p.port = 0
        # Every streamed completion holds one of llama.cpp's HTTP threads
        # (corral.engine.sse), plus room for the auxiliary calls.
        p.n_threads_http = parallel + 2
        # llama.cpp's host-RAM copy of idle slots' prompts. Off by default:
        # idle slots keep their prefix in their KV stream anyway (turn-2
        # reuse), and the copy cost up to its whole size in peak RSS.
        p.cache_ram_mib = spec.prompt_cache_mib
        p.verbosity = 3 if self.verbose else -1
        p.embedding = embedding
        kv_type = {"q8_0": xl.ggml_type.GGML_TYPE_Q8_0, "q4_0": xl.ggml_type.GGML_TYPE_Q4_0}.get(spec.kv_cache_type)
        if kv_type is not None:
            p.cache_type_k = kv_type
            p.cache_type_v = kv_type
        flash = xl.llama_flash_attn_type
        # A quantized V cache needs flash attention in llama.cpp.
        forced = spec.flash_attention or kv_type is not None
        p.flash_attn_type = flash.LLAMA_FLASH_ATTN_TYPE_ENABLED if forced else flash.LLAMA_FLASH_ATTN_TYPE_AUTO
        if embedding:
            p.pooling_type = -1 if info.pooling else xl.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
        for adapter in spec.adapters:
            lora = xl.CommonAdapterLoraInfo(str(adapter), 1.0)
            p.lora_adapters = list(p.lora_adapters) + [lora]
        if spec.projector is not None:
            p.mmproj.path = str(spec.projector)
        return p


async def _start(params: Any, spec: LoadSpec) -> Any:
    """Start one in-process llama.cpp server (off the event loop)."""
    import xllamacpp as xl

    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(None, xl.Server, params)
    except Exception as exc:
        log.error("failed to load %s: %s", spec.path, exc)
        raise EngineError(f"llama runner failed to load model: {exc}") from exc
