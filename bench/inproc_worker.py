"""Child process: Corral's llama.cpp engine called directly, with no HTTP at all.

``python -m bench.inproc_worker MODEL --ctx-per-slot N --parallel P --threads T``
loads the model with ``LlamaCppEngine().load(LoadSpec(...))`` exactly as the
scheduler does, prints ``READY``, then reads one JSON request per stdin line
(``{"id": 1, "req": {...}}``) and answers each on stdout with
``{"id": 1, "res": {...}}``. Requests run concurrently as asyncio tasks, and
every timestamp is taken here, where llama.cpp's in-process
``handle_completions`` hands each token over, so the pipe to the driver adds
nothing to the figures. This is the ceiling for Corral's HTTP layer: same
engine, same parameters, same slots, no server (not even the loopback stream
Corral's engine reads completions through).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import child
from bench.workload import SAMPLING, Req, Res

log = logging.getLogger("bench.inproc_worker")


class InProcRunner:
    """Runs :class:`Req` objects against a loaded :class:`LlamaCppModel`."""

    def __init__(self, model: Any, chat_template: str) -> None:
        self.model = model
        self.chat_template = chat_template

    def _prompt(self, req: Req) -> str:
        if req.kind == "generate":
            return req.prompt
        from corral.templates.render import render_jinja

        return render_jinja(self.chat_template, req.messages, tools=None, think=None, bos="", eos="<|im_end|>")

    async def run(self, req: Req) -> Res:
        """One request straight into llama.cpp's server core: no HTTP, no event loop per token.

        ``handle_completions`` blocks and calls back on its own thread with
        each chunk, so every timestamp is taken right where llama.cpp hands
        the token over.
        """
        import orjson

        from corral.engine.base import CompletionRequest
        from corral.engine.llamacpp import sampling_body

        options = dict(SAMPLING, num_predict=req.n_predict)
        body = orjson.dumps(sampling_body(CompletionRequest([self._prompt(req)], options)))
        res = Res(t_start=time.perf_counter())
        parts: list[str] = []

        def on_chunk(raw: bytes) -> bool:
            payload = orjson.loads(raw)
            if "choices" not in payload:
                res.error = f"engine error: {payload.get('error', payload)}"
                return True
            choice = payload["choices"][0]
            if choice.get("text"):
                res.chunk(time.perf_counter())
                parts.append(choice["text"])
            if choice.get("finish_reason"):
                usage = payload.get("usage") or {}
                res.n_tokens = int(usage.get("completion_tokens", 0))
                res.prompt_tokens = int(usage.get("prompt_tokens", 0))
                if not res.n_chunks:  # stopped at once (EOS): this is the first token
                    res.chunk(time.perf_counter())
            return False

        try:
            await asyncio.to_thread(self.model.server.handle_completions, body, on_chunk)
        except Exception as exc:  # reported to the driver, which marks the peer failed
            res.error = f"{type(exc).__name__}: {exc}"
        res.t_end = time.perf_counter()
        res.text = "".join(parts)
        if not res.n_tokens:
            res.n_tokens = res.n_chunks
        return res


async def serve(args: argparse.Namespace) -> None:
    from corral.engine.base import LoadSpec
    from corral.engine.llamacpp import LlamaCppEngine
    from corral.store.gguf_meta import read_gguf

    path = Path(args.model)
    engine = LlamaCppEngine(num_threads=args.threads)
    model = await engine.load(
        LoadSpec(path=path, num_ctx=args.ctx_per_slot, num_parallel=args.parallel, num_thread=args.threads)
    )
    template = str(read_gguf(path).kv.get("tokenizer.chat_template") or "")
    runner = InProcRunner(model, template)
    loop = asyncio.get_running_loop()
    # One blocking handle_completions call per request in flight (up to 16 streams).
    loop.set_default_executor(ThreadPoolExecutor(max_workers=32, thread_name_prefix="inproc"))
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout

    def answer(msg_id: int, res: Res) -> None:
        out.write(json.dumps({"id": msg_id, "res": res.to_dict()}) + "\n")
        out.flush()

    async def handle(msg: dict[str, Any]) -> None:
        answer(msg["id"], await runner.run(Req.from_dict(msg["req"])))

    tasks: set[asyncio.Task[None]] = set()
    out.write("READY\n")
    out.flush()
    log.info(
        "in-process engine ready (%s, ctx/slot=%d, slots=%d, threads=%d)",
        path.name,
        args.ctx_per_slot,
        args.parallel,
        args.threads,
    )
    while line := await reader.readline():
        task = asyncio.create_task(handle(json.loads(line)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    await model.close()


def main(argv: list[str] | None = None) -> int:
    ap = child.argument_parser(__doc__)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args))
    else:
        uvloop.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
