"""Child process: llama.cpp's native C++ HTTP server, started through xllamacpp.

``python -m bench.llama_server_proc MODEL --ctx-per-slot N --parallel P --threads T``
builds ``xllamacpp.CommonParams`` the way the llama-server CLI would with
``-m MODEL -c P*N -np P -t T -tb T --port 0``, starts ``xllamacpp.Server``
and prints ``LISTENING <url>`` on stdout. It then blocks until stdin closes
or SIGTERM arrives. It runs in its own process so the C++ server never
shares a GIL (or a core's worth of Python work) with the benchmark driver.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from bench import child

log = logging.getLogger("bench.llama_server_proc")


def main(argv: list[str] | None = None) -> int:
    ap = child.argument_parser(__doc__)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument(
        "--like-corral",
        default="",
        help="for diagnosis, a '+'-separated list of Corral's engine settings to copy: "
        "batch, cache_ram0 (no host prompt cache), http_threads, ctx_shift, or all of those; "
        "Corral's former settings: embedding, kv_unified, cache_ram (256 MiB); and a "
        "candidate: kv_q8 (q8_0 KV cache, flash attention on)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import xllamacpp as xl

    p = xl.CommonParams()
    p.model.path = args.model
    p.n_ctx = args.ctx_per_slot * args.parallel
    p.n_parallel = args.parallel
    p.cpuparams.n_threads = args.threads
    p.cpuparams_batch.n_threads = args.threads
    p.port = 0
    p.verbosity = 3 if args.verbose else -1
    like = set(args.like_corral.split("+")) if args.like_corral else set()
    if "all" in like:
        like |= {"batch", "cache_ram0", "http_threads", "ctx_shift"}
    if "embedding" in like:  # Corral's main runner did this before embeddings got their own runner
        p.embedding = True
        p.pooling_type = xl.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
    if "kv_unified" in like:
        p.kv_unified = True
    if "batch" in like:
        p.n_batch = p.n_ubatch = 512
    if "cache_ram" in like:
        p.cache_ram_mib = 256
    if "http_threads" in like:
        p.n_threads_http = 2
    if "ctx_shift" in like:
        p.ctx_shift = True
    if "kv_q8" in like:
        p.cache_type_k = p.cache_type_v = xl.ggml_type.GGML_TYPE_Q8_0
        p.flash_attn_type = xl.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_ENABLED
    if "cache_ram0" in like:
        p.cache_ram_mib = 0
    unknown = like - {
        "all",
        "embedding",
        "kv_unified",
        "batch",
        "cache_ram",
        "http_threads",
        "ctx_shift",
        "kv_q8",
        "cache_ram0",
    }
    if unknown:
        ap.error(f"unknown --like-corral items: {', '.join(sorted(unknown))}")
    server = xl.Server(p)
    url = str(server.listening_address)
    log.info(
        "llama-server (xllamacpp) listening on %s (n_ctx=%d, n_parallel=%d, threads=%d)",
        url,
        p.n_ctx,
        p.n_parallel,
        args.threads,
    )
    sys.stdout.write(f"LISTENING {url}\n")
    sys.stdout.flush()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    stop.wait()
    del server
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
