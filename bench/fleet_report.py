"""Figures, ratios, verdicts and tables of a :mod:`bench.fleet` run, from its raw samples.

``python -m bench.fleet_report RUN.json [OUT.json]`` re-summarizes a saved run (and saves it to OUT.json).

Prompt-cache hit rates (routing mode), two of them:

* ``hit_rate_prefill`` (the one the verdicts and README quote): the
  upstream's own evidence. Corral's final NDJSON object has
  ``prompt_eval_count`` (every prompt token) and ``prompt_eval_duration``
  (the time llama.cpp spent evaluating the ones not already in a slot's KV
  cache). A turn after the first counts as a hit when its duration per
  prompt token is under ``HIT_FRACTION`` of the cold rate, the median over
  first turns (never cached: each conversation's document is unique from its
  first token) in the same window, i.e. under the same load. A hit
  evaluates only the new question, the last answer and the template around
  them (a few percent of the prompt), a miss all of it, so the threshold is
  far from both.
* ``hit_rate_sticky``: the turn went to the upstream that served the
  conversation's previous turn (``X-Corral-Upstream``). The router's
  intent, not the cache's state: a sticky turn still misses when its
  upstream had to evict the conversation's slot, and a non-sticky one hits
  when the other upstream still holds the conversation from an earlier visit.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

HIT_FRACTION = 0.5
TTFT_TARGET = 2.0  # round-robin mean TTFT (turns > 1) / cache-aware
LINEAR = 0.9  # throughput at N upstreams >= this share of N x one upstream's counts as linear


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else 0.0


def _spread(values: list[float]) -> float:
    """(max - min) / median of per-repeat figures; 0 with one repeat."""
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 and min(values) > 0 else 0.0


# ---- routing ----------------------------------------------------------------------------------------------


def window_figures(w: dict[str, Any]) -> dict[str, Any]:
    """One policy's window: TTFT samples, throughput, hits (see module docstring)."""
    span = w["window_s"]
    ok = [t for t in w["turns"] if not t["error"]]
    inside = [t for t in ok if 0.0 <= t["t_start"] <= span]  # started in the window
    later = [t for t in inside if t["turn"] > 1]
    cold = [
        t["prompt_ms"] / t["prompt_tokens"]
        for t in ok
        if t["turn"] == 1 and t["prompt_tokens"] > 0 and t["prompt_ms"] > 0
    ]
    cold_ms = statistics.median(cold) if cold else 0.0
    hits = [
        t
        for t in later
        if t["prompt_tokens"] > 0 and cold_ms > 0 and t["prompt_ms"] / t["prompt_tokens"] < HIT_FRACTION * cold_ms
    ]
    done = [t for t in ok if 0.0 <= t["t_start"] + t["total"] <= span]  # answered in the window
    return {
        "ttft_later": [t["ttft"] for t in later],
        "ttft_first": [t["ttft"] for t in inside if t["turn"] == 1],
        "ttft_all": [t["ttft"] for t in inside],
        "prefill_ms_later": [t["prompt_ms"] for t in later],
        "prompt_tokens_later": [t["prompt_tokens"] for t in later],
        "n_later": len(later),
        "hits_prefill": len(hits),
        "sticky": sum(t["upstream"] == t["prev_upstream"] for t in later),
        "cold_ms_per_token": cold_ms,
        "turns_per_s": len(done) / span,
        "tokens_per_s": sum(t["eval_tokens"] for t in done) / span,
        "errors": len(w["turns"]) - len(ok),
        "upstreams": sorted({t["upstream"] for t in ok}),
    }


def routing_summary(routing: dict[str, Any]) -> dict[str, Any]:
    per: dict[str, dict[str, Any]] = {}
    for policy in routing["policies"]:
        figs = [window_figures(w) for w in routing["windows"] if w["policy"] == policy]
        windows = [w for w in routing["windows"] if w["policy"] == policy]
        if not figs:
            continue
        later = [x for f in figs for x in f["ttft_later"]]
        n_later = sum(f["n_later"] for f in figs)
        tps = [f["turns_per_s"] for f in figs]
        per[policy] = {
            "n_turns_later": n_later,
            "ttft_later_mean_s": _mean(later),
            "ttft_later_p95_s": _pct(later, 0.95),
            "ttft_first_mean_s": _mean([x for f in figs for x in f["ttft_first"]]),
            "n_turns_first": sum(len(f["ttft_first"]) for f in figs),
            "ttft_all_mean_s": _mean([x for f in figs for x in f["ttft_all"]]),
            "turns_per_s": statistics.median(tps),
            "turns_per_s_per_repeat": tps,
            "turns_per_s_spread": _spread(tps),
            "tokens_per_s": statistics.median(f["tokens_per_s"] for f in figs),
            "hit_rate_prefill": sum(f["hits_prefill"] for f in figs) / n_later if n_later else 0.0,
            "hit_rate_sticky": sum(f["sticky"] for f in figs) / n_later if n_later else 0.0,
            "prefill_ms_later_mean": _mean([x for f in figs for x in f["prefill_ms_later"]]),
            "prompt_tokens_later_mean": _mean([float(x) for f in figs for x in f["prompt_tokens_later"]]),
            "cold_ms_per_prompt_token": statistics.median(f["cold_ms_per_token"] for f in figs),
            "ttft_later_mean_per_repeat": [_mean(f["ttft_later"]) for f in figs],
            "errors": sum(f["errors"] for f in figs),
            "background_share_max": max(w["background_share"] for w in windows),
            "gateway_cpu_s": sum(w["gateway_cpu_s"] for w in windows),
        }
    return per


def routing_ratios(per: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ca, ll, rr = (per.get(p) for p in ("cache-aware", "least-loaded", "round-robin"))
    out: dict[str, Any] = {}
    if ca and rr and ca["ttft_later_mean_s"] > 0:
        paired = [r / c for r, c in zip(rr["ttft_later_mean_per_repeat"], ca["ttft_later_mean_per_repeat"]) if c > 0]
        out["rr_over_ca_ttft_later"] = {
            "value": rr["ttft_later_mean_s"] / ca["ttft_later_mean_s"],
            "per_repeat": paired,
            "per_repeat_median": statistics.median(paired) if paired else 0.0,
        }
    if ca and ll and ll["turns_per_s"] > 0:
        paired = [c / lo for c, lo in zip(ca["turns_per_s_per_repeat"], ll["turns_per_s_per_repeat"]) if lo > 0]
        out["ca_over_ll_throughput"] = {
            "value": ca["turns_per_s"] / ll["turns_per_s"],
            "per_repeat": paired,
            "per_repeat_median": statistics.median(paired) if paired else 0.0,
            "allowed_spread": max(ca["turns_per_s_spread"], ll["turns_per_s_spread"]),
        }
    return out


def routing_verdicts(ratios: dict[str, Any], per: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    t = ratios.get("rr_over_ca_ttft_later")
    if t:
        met = t["value"] >= TTFT_TARGET
        out.append(
            f"TTFT on turns after the first: round-robin mean {per['round-robin']['ttft_later_mean_s']:.3f} s"
            f" / cache-aware {per['cache-aware']['ttft_later_mean_s']:.3f} s = {t['value']:.2f}x "
            f"(per repeat: {', '.join(f'{x:.2f}' for x in t['per_repeat'])}) -> "
            f"{'met' if met else 'NOT met'} (>= {TTFT_TARGET:g}x)"
        )
    th = ratios.get("ca_over_ll_throughput")
    if th:
        floor = 1.0 - th["allowed_spread"]
        met = th["value"] >= floor
        out.append(
            f"aggregate throughput: cache-aware {per['cache-aware']['turns_per_s']:.3f} turns/s / "
            f"least-loaded {per['least-loaded']['turns_per_s']:.3f} = {th['value']:.2f} (per repeat: "
            f"{', '.join(f'{x:.2f}' for x in th['per_repeat'])}); allowed spread "
            f"{th['allowed_spread']:.0%} (the larger of the two policies' (max - min) / median over repeats)"
            f" -> {'met' if met else 'NOT met'} (>= {floor:.2f})"
        )
    errors = sum(p["errors"] for p in per.values())
    if errors:
        out.append(f"{errors} turns failed (see the JSON's windows)")
    return out


def routing_table(per: dict[str, dict[str, Any]]) -> str:
    lines = [
        (
            "| policy | turns > 1 (n) | TTFT mean, turns > 1 (s) | TTFT p95, turns > 1 (s) | TTFT mean, turn 1 (s) | "
            "TTFT mean, all (s) | turns/s (median; per repeat) | gen tok/s | cache hit rate (prefill) | "
            "sticky rate | prefill ms, turns > 1 | errors |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for policy, p in per.items():
        reps = ", ".join(f"{x:.3f}" for x in p["turns_per_s_per_repeat"])
        first = f"{p['ttft_first_mean_s']:.3f} (n={p['n_turns_first']})" if p["n_turns_first"] else "– (none)"
        lines.append(
            f"| {policy} | {p['n_turns_later']} | {p['ttft_later_mean_s']:.3f} | {p['ttft_later_p95_s']:.3f}"
            f" | {first} | {p['ttft_all_mean_s']:.3f} | {p['turns_per_s']:.3f} ({reps})"
            f" | {p['tokens_per_s']:.2f} | {p['hit_rate_prefill']:.0%} | {p['hit_rate_sticky']:.0%} | "
            f"{p['prefill_ms_later_mean']:.0f} | {p['errors']} |"
        )
    return "\n".join(lines)


def window_line(w: dict[str, Any]) -> str:
    f = window_figures(w)
    return (
        f"{w['policy']}: {f['n_later']} later turns, TTFT mean {_mean(f['ttft_later']):.3f} s, "
        f"{f['turns_per_s']:.3f} turns/s, hits {f['hits_prefill']}/{f['n_later']}, sticky "
        f"{f['sticky']}/{f['n_later']}, background {w['background_share']:.0%}"
    )


# ---- ceiling ----------------------------------------------------------------------------------------------


def ceiling_summary(ceiling: dict[str, Any]) -> dict[str, Any]:
    levels = ceiling["settings"]["levels"]
    rows = []
    for level in levels:
        mine = [r for r in ceiling["rows"] if r["level"] == level]
        row = {"level": level, "streams": mine[0]["streams"], "repeats": len(mine)}
        for key in (
            "tokens_per_s",
            "gateway_us_per_token",
            "gateway_cores",
            "stubs_cores",
            "driver_cores",
            "box_busy_cores",
        ):
            row[key] = statistics.median(r[key] for r in mine)
        row["tokens_per_s_per_repeat"] = [r["tokens_per_s"] for r in mine]
        rows.append(row)
    base = rows[0]["tokens_per_s"] / rows[0]["level"] if rows and rows[0]["tokens_per_s"] > 0 else 0.0
    for row in rows:
        row["per_upstream_tokens_per_s"] = row["tokens_per_s"] / row["level"]
        row["linear_efficiency"] = row["tokens_per_s"] / (row["level"] * base) if base else 0.0
        per_token_s = row["gateway_us_per_token"] / 1e6
        row["upstreams_per_gateway_core"] = 1.0 / (per_token_s * base) if per_token_s > 0 and base else 0.0
    knee = next((r["level"] for r in rows if r["linear_efficiency"] < LINEAR), None)
    top = rows[-1] if rows else {}
    return {
        "rows": rows,
        "tokens_per_s_per_upstream": base,
        "linear_until": knee,
        "upstreams_per_gateway_core": top.get("upstreams_per_gateway_core", 0.0),
        "gateway_us_per_token": top.get("gateway_us_per_token", 0.0),
        "tokens_per_s_per_gateway_core": 1e6 / top["gateway_us_per_token"] if top.get("gateway_us_per_token") else 0.0,
    }


def ceiling_verdicts(s: dict[str, Any], nproc: int) -> list[str]:
    rows = s["rows"]
    if not rows:
        return []
    top = rows[-1]
    first = rows[0]
    out = [
        (
            f"gateway CPU per token at {top['level']} upstreams: {top['gateway_us_per_token']:.0f} us, so one gateway "
            f"core carries ~{1e6 / max(top['gateway_us_per_token'], 1e-9):,.0f} tok/s; one upstream streams "
            f"{s['tokens_per_s_per_upstream']:.0f} tok/s, so one gateway core can feed "
            f"~{s['upstreams_per_gateway_core']:.0f} such upstreams (the cost per token falls as load rises: "
            f"{first['gateway_us_per_token']:.0f} us at {first['level']} upstream(s))"
        )
    ]
    if s["linear_until"] is None:
        out.append(
            f"throughput rose linearly (>= {LINEAR:.0%} of N x one upstream's) up to {top['level']} upstreams "
            f"({top['tokens_per_s']:.0f} tok/s, gateway at {top['gateway_cores']:.2f} cores)"
        )
    else:
        knee = next(r for r in rows if r["level"] == s["linear_until"])
        limit = (
            "the gateway's own core"
            if knee["gateway_cores"] >= 0.85
            else f"the box ({knee['box_busy_cores']:.2f} of {nproc} cores busy: stubs {knee['stubs_cores']:.2f}, "
            f"driver {knee['driver_cores']:.2f}, gateway {knee['gateway_cores']:.2f})"
        )
        out.append(
            f"throughput stops rising linearly at {knee['level']} upstreams ({knee['linear_efficiency']:.0%} "
            f"of linear, {knee['tokens_per_s']:.0f} tok/s); the limit there: {limit}"
        )
    return out


def ceiling_table(s: dict[str, Any]) -> str:
    lines = [
        (
            "| upstreams | streams | tok/s through the gateway | per upstream | share of linear | gateway µs/token | "
            "gateway cores | stubs cores | driver cores | box busy cores | upstreams one gateway core feeds |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s["rows"]:
        lines.append(
            f"| {r['level']} | {r['streams']} | {r['tokens_per_s']:.0f} | {r['per_upstream_tokens_per_s']:.0f} "
            f"| {r['linear_efficiency']:.0%} | {r['gateway_us_per_token']:.0f} | {r['gateway_cores']:.2f} | "
            f"{r['stubs_cores']:.2f} | {r['driver_cores']:.2f} | {r['box_busy_cores']:.2f} | "
            f"{r['upstreams_per_gateway_core']:.0f} |"
        )
    return "\n".join(lines)


# ---- the whole report -------------------------------------------------------------------------------------


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    parts, verdicts = [], []
    if "routing" in report:
        per = routing_summary(report["routing"])
        ratios = routing_ratios(per)
        report["routing"]["summary"] = per
        report["routing"]["ratios"] = ratios
        v = routing_verdicts(ratios, per)
        report["routing"]["verdicts"] = v
        verdicts += v
        parts.append("### Routing policies\n\n" + routing_table(per))
    if "ceiling" in report:
        s = ceiling_summary(report["ceiling"])
        report["ceiling"]["summary"] = s
        v = ceiling_verdicts(s, report.get("machine", {}).get("nproc") or 1)
        report["ceiling"]["verdicts"] = v
        verdicts += v
        parts.append("### Gateway ceiling (stub upstreams)\n\n" + ceiling_table(s))
    report["verdicts"] = verdicts
    report["table_markdown"] = "\n\n".join(parts) + "\n\n" + "\n".join(f"- {v}" for v in verdicts)
    return report


def main(argv: list[str]) -> int:
    report = summarise(json.loads(Path(argv[0]).read_text()))
    if len(argv) > 1:
        Path(argv[1]).write_text(json.dumps(report, indent=2))
    print(report["table_markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
