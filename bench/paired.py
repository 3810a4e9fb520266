"""Settle a close ratio: many short rounds of two or more peers, paired round by round.

    .venv/bin/python -m bench.paired --peers corral,llama-server --mode single --rounds 40
    .venv/bin/python -m bench.paired --peers corral,llama-server --mode 4 --rounds 25

``bench.run`` measures each phase a few times; on a box whose speed drifts
by ±20% within minutes its best-of can land on either side of a target that
sits within 5% of the truth. Here every round runs each peer once, back to
back, rotating the order (``single``: two sequential 96-token streams, the
figure is their median decode tok/s; ``N``: N concurrent closed-loop
streams for ``--window`` seconds, aggregate tok/s). Each peer's figure is
divided by the last peer's from the same round, and the report is the
median of those ratios with a bootstrap 95% interval. Writes JSON beside the
printed table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import random
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.peers import ROOT, PeerConfig, make_peer
from bench.run import OUT_DIR, _check, _warm_up, default_model
from bench.workload import Workload, aggregate_tps, phase_concurrency, phase_single

log = logging.getLogger("bench.paired")


def median_with_interval(ratios: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Median of ``ratios`` and a bootstrap 95% interval of it."""
    rng = random.Random(seed)
    boots = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(draws))
    return statistics.median(ratios), boots[int(0.025 * draws)], boots[int(0.975 * draws) - 1]


async def measure(names: list[str], mode: str, rounds: int, wl: Workload, cfg: PeerConfig) -> dict[str, list[float]]:
    work = Path(tempfile.mkdtemp(prefix="corral-paired-"))
    peers = [make_peer(n, cfg, work / "corral-home") for n in names]
    try:
        await asyncio.gather(*(p.start() for p in peers))
        for p in peers:
            await _warm_up(p, wl, quick=True)
        values: dict[str, list[float]] = {p.name: [] for p in peers}
        for r in range(rounds):
            k = r % len(peers)
            for p in peers[k:] + peers[:k]:
                if mode == "single":
                    res = await phase_single(p, wl)
                    _check(p, res)
                    values[p.name].append(statistics.median(x.decode_tps for x in res))
                else:
                    res = await phase_concurrency(p, wl, int(mode))
                    _check(p, res, f"concurrency_{mode}")
                    values[p.name].append(aggregate_tps(res))
            log.info("round %d/%d: %s", r + 1, rounds, ", ".join(f"{n} {v[-1]:.1f}" for n, v in values.items()))
        return values
    finally:
        for p in peers:
            await p.stop()
        shutil.rmtree(work, ignore_errors=True)


def summarize(values: dict[str, list[float]]) -> list[dict[str, Any]]:
    names = list(values)
    base = names[-1]
    rows = []
    for name in names:
        ratios = [a / b for a, b in zip(values[name], values[base]) if b]
        med, lo, hi = median_with_interval(ratios) if ratios else (0.0, 0.0, 0.0)
        rows.append(
            {
                "peer": name,
                "median_tps": statistics.median(values[name]),
                "versus": base,
                "ratio_median": med,
                "ratio_ci95": [lo, hi],
                "values": values[name],
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], mode: str, rounds: int) -> str:
    what = "decode tok/s, 1 stream" if mode == "single" else f"aggregate tok/s, {mode} streams"
    out = [
        (
            f"| peer | {what} (median of {rounds} rounds) | / {rows[-1]['peer']}, median of paired ratios "
            "| bootstrap 95% interval |"
        ),
        "|---|---|---|---|",
    ]
    for row in rows:
        lo, hi = row["ratio_ci95"]
        out.append(f"| {row['peer']} | {row['median_tps']:.1f} | {row['ratio_median']:.3f} | {lo:.3f} – {hi:.3f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.paired", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--peers", default="corral,llama-server", help="comma-separated; ratios are to the last one")
    ap.add_argument("--mode", default="single", help="'single', or a number of concurrent streams")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--window", type=float, default=4.0, help="seconds per concurrency measurement")
    ap.add_argument("--n-predict", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.mode != "single" and not args.mode.isdigit():
        ap.error("--mode is 'single' or a number of streams")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out_path: Path = args.out or OUT_DIR / f"paired-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    cfg = PeerConfig(
        model=(args.model or default_model()).resolve(),
        threads=args.threads,
        ctx_per_slot=args.ctx,
        parallel=args.parallel,
        log_dir=out_path.parent / f"logs-{out_path.stem}",
        bench_python=ROOT / ".bench-venv" / "bin" / "python",
    )
    wl = Workload(n_predict=args.n_predict, window_s=args.window)
    names = [n.strip() for n in args.peers.split(",") if n.strip()]
    rows = summarize(asyncio.run(measure(names, args.mode, args.rounds, wl, cfg)))
    table = markdown(rows, args.mode, args.rounds)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(
        json.dumps(
            {
                "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                "mode": args.mode,
                "rounds": args.rounds,
                "threads": args.threads,
                "n_predict": args.n_predict,
                "rows": rows,
                "table_markdown": table,
            },
            indent=1,
        )
    )
    print(table)
    print(f"JSON: {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
