"""Profile Corral's per-token overhead under load, with py-spy and /proc.

    .venv/bin/python -m bench.profile [--streams 1] [--seconds 20] [--peer corral]

Starts one peer (as :mod:`bench.run` does), warms it up, then keeps
``--streams`` concurrent 96-token streams going for ``--seconds`` while
``py-spy record`` samples the server process (non-blocking, raw collapsed
stacks written under ``bench/out/``). It prints the hottest Python
functions (self and inclusive share of samples) and the CPU time each
server thread spent per generated token, read from
``/proc/<pid>/task/*/stat``: the event-loop thread's µs/token is the cost of
Corral's Python layer. Needs ``py-spy`` in the venv (``pip install py-spy``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.noise import Meter, wait_quiet
from bench.peers import ROOT, Peer, PeerConfig, make_peer
from bench.run import OUT_DIR, default_model
from bench.workload import Workload, phase_concurrency

log = logging.getLogger("bench.profile")
_TCK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, tuple[str, float, float]]:
    """tid -> (name, CPU seconds, kernel CPU seconds) for every thread of ``pid``.

    The total comes from ``schedstat`` (nanoseconds, exact); the kernel
    share from ``stat`` (clock ticks, so only a rough split).
    """
    out: dict[int, tuple[str, float, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                raw = f.read()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                run_ns = int(f.read().split()[0])
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        rest = raw.rsplit(")", 1)[1].split()
        out[int(tid)] = (name, run_ns / 1e9, int(rest[12]) / _TCK)
    return out


def hot_spots(raw_path: Path, top: int) -> list[tuple[str, float, float]]:
    """(function, self share, inclusive share) from py-spy's raw collapsed stacks."""
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [fr for fr in stack.split(";") if not fr.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        self_counts[frames[-1]] += n
        for fr in set(frames):
            incl_counts[fr] += n
    return [(fr, self_counts[fr] / total, incl_counts[fr] / total) for fr, _ in self_counts.most_common(top)]


async def load(peer: Peer, wl: Workload, streams: int, seconds: float) -> int:
    """Keep ``streams`` requests in flight for ``seconds`` (the bench's closed loop); return tokens generated."""
    results = await phase_concurrency(peer, dataclasses.replace(wl, window_s=seconds), streams)
    failed = [r.error for r in results if r.error]
    if failed:
        raise RuntimeError(failed[0])
    return sum(r.n_tokens for r in results)


async def amain(args: argparse.Namespace) -> None:
    wl = Workload()
    work = Path(tempfile.mkdtemp(prefix="corral-profile-"))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    cfg = PeerConfig(
        model=default_model(),
        threads=2,
        ctx_per_slot=4096,
        parallel=4,
        log_dir=OUT_DIR / "logs-profile",
        bench_python=ROOT / ".bench-venv" / "bin" / "python",
    )
    peer = make_peer(args.peer, cfg, work / "corral-home")
    try:
        await peer.start()
        await load(peer, wl, 1, 2.0)  # warm-up, loads the model
        pid = peer.pid
        assert pid is not None
        waited, share = await wait_quiet(0.10, args.max_wait)
        log.info("machine %.0f%% busy after waiting %.0fs for quiet", share * 100, waited)
        raw = OUT_DIR / f"pyspy-{args.peer}-{args.streams}streams.txt"
        spy = None
        if not args.no_pyspy:
            pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            spy = subprocess.Popen(
                [
                    pyspy,
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(int(args.seconds)),
                    "--rate",
                    "200",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                ]
                + (["--gil"] if args.gil else []),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            await asyncio.sleep(1.0)
        before = thread_cpu(pid)
        t0 = time.monotonic()
        with Meter(pid) as meter:
            tokens = await load(peer, wl, args.streams, args.seconds - 2)
        wall = time.monotonic() - t0
        after = thread_cpu(pid)
        if spy is not None:
            await asyncio.to_thread(spy.wait)
    finally:
        await peer.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"# {args.peer}, {args.streams} stream(s): {tokens} tokens in {wall:.1f}s = {tokens / wall:.1f} tok/s "
        f"(background CPU share {meter.background_share:.0%})"
    )
    print()
    print("| thread | CPU s | share of wall | µs per token | of which in the kernel |")
    print("|---|---|---|---|---|")
    rows = []
    for tid, (name, cpu1, sys1) in after.items():
        _, cpu0, sys0 = before.get(tid, (name, 0.0, 0.0))
        cpu, system = cpu1 - cpu0, sys1 - sys0
        if cpu > 0.002 * wall:
            rows.append((cpu, system, tid, name))
    for cpu, system, tid, name in sorted(rows, reverse=True):
        label = f"{name} ({'main/event loop' if tid == pid else tid})"
        print(f"| {label} | {cpu:.2f} | {cpu / wall:.0%} | {cpu / tokens * 1e6:.0f} | {system / tokens * 1e6:.0f} |")
    if spy is not None and raw.exists():
        print()
        print(f"py-spy samples: {raw}")
        print()
        print("| function | self | inclusive |")
        print("|---|---|---|")
        for fr, self_share, incl in hot_spots(raw, args.top):
            print(f"| `{fr}` | {self_share:.1%} | {incl:.1%} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--peer", default="corral", help="corral (default), llama-server or inproc")
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--max-wait", type=float, default=300.0, help="seconds to wait for a quiet machine")
    ap.add_argument("--gil", action="store_true", help="only sample threads holding the GIL")
    ap.add_argument("--no-pyspy", action="store_true", help="only the per-thread CPU table")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(amain(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
