"""The command line the driver starts its child processes with.

``bench.llama_server_proc`` and ``bench.inproc_worker`` take the same
arguments (model, context per slot, slots, threads); :func:`command` builds
them on the driver's side and :func:`argument_parser` reads them on the
child's, so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def command(module: str, model: Path, *, ctx_per_slot: int, parallel: int, threads: int) -> list[str]:
    """``python -m MODULE MODEL --ctx-per-slot N --parallel P --threads T``."""
    return [
        sys.executable,
        "-m",
        module,
        str(model),
        "--ctx-per-slot",
        str(ctx_per_slot),
        "--parallel",
        str(parallel),
        "--threads",
        str(threads),
    ]


def argument_parser(description: str | None) -> argparse.ArgumentParser:
    """A parser for the arguments :func:`command` passes; a child may add its own."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("model")
    ap.add_argument("--ctx-per-slot", type=int, required=True)
    ap.add_argument("--parallel", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    return ap
