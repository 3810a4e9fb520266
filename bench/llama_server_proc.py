"""Child process: llama.cpp's native C++ HTTP server, started through xllamacpp.

``python -m bench.llama_server_proc MODEL --ctx-per-slot N --parallel P --threads T``
builds ``xllamacpp.CommonParams`` the way the llama-server CLI would with
``-m MODEL -c P*N -np P -t T -tb T --port 0``, starts ``xllamacpp.Server``
and prints ``LISTENING <url>`` on stdout. It then blocks until stdin closes
or SIGTERM arrives. It runs in its own process so the C++ server never
shares a GIL (or a core's worth of Python work) with the benchmark driver.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

log = logging.getLogger("bench.llama_server_proc")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model")
    ap.add_argument("--ctx-per-slot", type=int, required=True)
    ap.add_argument("--parallel", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--verbose", action="store_true")
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
    server = xl.Server(p)
    url = str(server.listening_address)
    log.info("llama-server (xllamacpp) listening on %s (n_ctx=%d, n_parallel=%d, threads=%d)",
             url, p.n_ctx, p.n_parallel, args.threads)
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
