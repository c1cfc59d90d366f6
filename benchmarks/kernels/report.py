"""Markdown tables from bench_sgmv.py's rows.json: python report.py rows.json > report.md"""

from __future__ import annotations

import collections
import json
import sys


def _f(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _goals(g: dict) -> str:
    short = {"beats_anchor": "anchor", "within_1.25x_floor": "1.25×floor", "at_most_8us": "≤8µs", "5x_better_torch": "5×torch"}
    return ", ".join(f"{short[k]} {'✓' if v else '✗'}" for k, v in g.items()) or "—"


def main(path: str) -> None:
    data = json.load(open(path))
    info, rows = data["info"], data["rows"]
    print(f"device: {info['device']} ({info['sms']} SMs), torch {info['torch']}, triton {info['triton']}, "
          f"copy bandwidth {info['copy_bw_TBps']:.2f} TB/s (read + write; "
          f"{info.get('copy_bw_end_TBps', 0):.2f} at the end), timing spread between two batches of replays: "
          f"p90 {info.get('timing_spread_p90', 0):.2f}x, max {info.get('timing_spread_max', 0):.2f}x\n")

    print("### Against the anchors (rank 16, bf16, K = 4096; µs)\n")
    print("floor: at the bandwidth measured in this run; DESIGN floor: the anchors' table (2.95 TB/s).\n")
    print("| case | N | floor | DESIGN floor | best anchor | ours | shrink alone | ours / floor | ours / DESIGN floor "
          "| base | LoRA / base | torch loop | gather+bmm | goals |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if r.get("anchor_us") is None:
            continue
        case = f"{r['kind']} T={r['t']}, n={r['n']}"
        print(f"| {case} | {r['width']} | {_f(r['floor_us'])} | {_f(r['anchor_floor_us'])} | {_f(r['anchor_us'])} | "
              f"**{_f(r['ours_us'])}** | {_f(r.get('shrink_only_us'))} | {_f(r['ours_us'] / r['floor_us'], 2)} | "
              f"{_f(r['ours_us'] / r['anchor_floor_us'], 2)} | {_f(r['base_us'])} | {_f(r['lora_over_base'], 2)} | "
              f"{_f(r.get('loop_us'))} | {_f(r.get('bmm_us'))} | {_goals(r['goals'])} |")

    print("\n### Every case (bf16; µs; LoRA / base in parentheses; goals missed marked ✗)\n")
    by = collections.defaultdict(dict)
    cols = []
    for r in rows:
        col = (r["kind"], r["t"], r["n"])
        if col not in cols:
            cols.append(col)
        by[(r["shape"], r["k"], r["width"], r["rank"])][col] = r
    cols.sort(key=lambda c: (c[0] != "decode", c[1], c[2], c[0]))
    print("| shape (K→N) | r | " + " | ".join(f"{'T' if k == 'decode' else k.removeprefix('prefill') + '-seg '}"
                                             f"{'=' + str(t) if k == 'decode' else ''} n={n}" for k, t, n in cols) + " |")
    print("|---|---:|" + "---:|" * len(cols))
    for (shape, k, w, rank), rs in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][3])):
        cells = []
        for c in cols:
            r = rs.get(c)
            if r is None:
                cells.append("")
                continue
            miss = "✗" if not all(r["goals"].values()) else ""
            cells.append(f"{r['ours_us']:.1f} ({r['lora_over_base']:.2f}){miss}")
        print(f"| {shape} {k}→{w} | {rank} | " + " | ".join(cells) + " |")

    print("\n### Floor and the torch baselines (µs)\n")
    print("| case | floor | ours | ours / floor | best torch | torch / ours |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if r.get("best_torch_us") is None or r["rank"] != 16:
            continue
        print(f"| {r['kind']} T={r['t']} n={r['n']} {r['shape']} | {_f(r['floor_us'])} | {_f(r['ours_us'])} | "
              f"{_f(r['ours_us'] / r['floor_us'], 2)} | {_f(r['best_torch_us'])} | {_f(r['best_torch_us'] / r['ours_us'], 1)} |")

    print("\n### Goals\n")
    tally = collections.defaultdict(lambda: [0, 0, []])
    for r in rows:
        for g, ok in r["goals"].items():
            tally[g][0 if ok else 1] += 1
            if not ok:
                tally[g][2].append(f"{r['kind']} T={r['t']} n={r['n']} {r['shape']} r={r['rank']} "
                                   f"({r['ours_us']:.1f} µs, floor {r['floor_us']:.1f})")
    for g, (ok, bad, which) in tally.items():
        print(f"- {g}: met {ok}, missed {bad}" + ("" if not which else ": " + "; ".join(which[:12])
                                                    + (" …" if len(which) > 12 else "")))
    worst = max(r["err"] for r in rows)
    print(f"- largest relative error against float64 over all cases: {worst:.1e}")

    sweeps = [r for r in rows if r.get("variants_us")]
    if sweeps:
        names = list(dict.fromkeys(n for r in sweeps for n in r["variants_us"]))
        print("\n### Config sweep (µs)\n")
        print("| case | N | " + " | ".join(names) + " |")
        print("|---|---:|" + "---:|" * len(names))
        for r in sweeps:
            v = r["variants_us"]
            print(f"| {r['kind']} T={r['t']} n={r['n']} | {r['width']} | " + " | ".join(_f(v.get(n)) for n in names) + " |")

    if data.get("fused"):
        print("\n### qkv fused (4096 + 1024 + 1024, rank 16) vs three calls (µs)\n")
        print("| case | fused | three calls |")
        print("|---|---:|---:|")
        for r in data["fused"]:
            print(f"| {r['kind']} T={r['t']} n={r['n']} | {_f(r['fused_us'])} | {_f(r['three_calls_us'])} |")


if __name__ == "__main__":
    main(sys.argv[1])
