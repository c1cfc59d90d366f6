"""Markdown tables from bench_sgmv.py's rows.json: python report.py rows.json > report.md

The whole-K one-launch path is chosen again here by kernels.configs.prefers_fused with the current table,
and split-K as one cooperative launch or two by the current Hopper table's `coop`, so a rule set from a
run's numbers reports the path it picks; the time used is the measured time of the current config (a
variant of the run's sweep, or its table), never an estimate.
"""

from __future__ import annotations

import collections
import json
import math
import sys

import torch

from loraledger.kernels.configs import (
    fused_config,
    hopper_gather_config,
    hopper_sgmv_config,
    prefers_fused,
    prefers_gather,
)

HOPPER = torch.device("cuda")  # names the table only: nothing here touches a GPU


def _f(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _goals(g: dict) -> str:
    short = {"beats_anchor": "anchor", "within_1.25x_floor": "1.25×floor", "at_most_8us": "≤8µs", "5x_better_torch": "5×torch"}
    return ", ".join(f"{short[k]} {'✓' if v else '✗'}" for k, v in g.items()) or "—"


def goals(row: dict) -> dict:
    """The issue's goals for one row (as bench_sgmv.goals)."""
    out = {}
    if row.get("anchor_us") is not None:
        out["beats_anchor"] = row["ours_us"] < row["anchor_us"]
    if row["floor_us"] >= 20:
        out["within_1.25x_floor"] = row["ours_us"] <= 1.25 * row["floor_us"]
    if row["floor_us"] < 5:
        out["at_most_8us"] = row["ours_us"] <= 8
    if row["kind"] == "decode" and row["n"] == row["t"] and row.get("best_torch_us"):
        out["5x_better_torch"] = row["ours_us"] * 5 <= row["best_torch_us"]
    return out


def apply_rule(data: dict) -> str | None:
    """Re-pick each row's path with the current table; returns the sweep variant that is the table's config."""
    cfg = fused_config(HOPPER)
    launch = ("block_n", "n_blocks", "block_k", "warps", "stages")  # the rule's thresholds may have moved since
    current = {f: getattr(cfg, f) for f in launch}
    variants = data["info"].get("fused_variants", {})
    name = next((n for n, v in variants.items() if {f: v[f] for f in launch} == current), None)
    for r in data["rows"]:
        one = None
        if name is not None:
            one = r.get("variants_us", {}).get(name) if r.get("variants_us") else (r.get("one_us") if name == "table" else None)
        r["one_table_us"] = one
        r["gather"] = r.get("gather_us") is not None and prefers_gather(hopper_gather_config(r["t"]), r["t"], r["n"])
        r["fused"] = not r["gather"] and one is not None and prefers_fused(
            cfg, r["t"], r["max_tiles"], r["block_t"], (r["width"],), r["k"], r["rank"], r["element_size"])
        r["coop"] = (not r["fused"] and not r["gather"] and r.get("coop_us") is not None
                     and hopper_sgmv_config(r["t"]).coop)
        r["ours_us"] = (r["gather_us"] if r["gather"] else one if r["fused"] else r["coop_us"] if r["coop"]
                        else r["two_us"])
        r["lora_over_base"] = r["ours_us"] / r["base_us"]
        r["goals"] = goals(r)
    return name


def _path(r: dict) -> str:
    return "gather" if r.get("gather") else "one" if r["fused"] else "coop" if r.get("coop") else "two"


def coop_table(rows: list[dict]) -> None:
    """Split-K as two launches vs one cooperative launch, per case, with the K-split variants where timed."""
    rs = [r for r in rows if r.get("coop_us") is not None]
    if not rs:
        return
    names = sorted({n for r in rs for n in r.get("split_variants_us", {})})
    print("### Split-K: two launches vs one cooperative launch (bf16; µs; table's K split, then the variants; "
          "✓/✗ = the best of them against the ≤ 8 µs goal where the floor is under 5 µs)\n")
    print("| case | shape (K→N) | r | floor | two | coop | coop / two | " + " | ".join(f"`{n}`" for n in names)
          + " | best |")
    print("|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(names) + "---|")
    ratios = []
    for r in sorted(rs, key=lambda r: (r["kind"], r["t"], r["n"], r["shape"], r["rank"])):
        variants = r.get("split_variants_us", {})
        times = {"two": r["two_us"], "coop": r["coop_us"], **variants}
        best = min(times, key=times.get)
        ok = "" if r["floor_us"] >= 5 else (" ✓" if times[best] <= 8 else " ✗")
        ratios.append(r["coop_us"] / r["two_us"])
        print(f"| {r['kind']} T={r['t']} n={r['n']} | {r['shape']} {r['k']}→{r['width']} | {r['rank']} | "
              f"{_f(r['floor_us'])} | {_f(r['two_us'])} | {_f(r['coop_us'])} | {_f(r['coop_us'] / r['two_us'], 2)} | "
              + " | ".join(_f(variants.get(n)) for n in names) + f" | {best} {times[best]:.1f}{ok} |")
    geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
    print(f"\ncoop / two over {len(ratios)} cases: geometric mean {geo:.3f}, range {min(ratios):.2f}–{max(ratios):.2f}; "
          f"coop faster in {sum(x < 1 for x in ratios)}\n")


def main(path: str) -> None:
    data = json.load(open(path))
    info, rows = data["info"], data["rows"]
    table_variant = apply_rule(data)
    cal = info.get("calibration", {})
    print(f"device: {info['device']} ({info['sms']} SMs), torch {info['torch']}, triton {info['triton']}, "
          f"copy bandwidth {info['copy_bw_TBps']:.2f} TB/s (read + write; "
          f"{info.get('copy_bw_end_TBps', 0):.2f} at the end), timing spread between two batches of replays: "
          f"p90 {info.get('timing_spread_p90', 0):.2f}x, max {info.get('timing_spread_max', 0):.2f}x")
    if cal:
        print(f"calibration (same method): one near-empty kernel {cal['chain1_us']:.2f} µs, four dependent misses "
              f"{cal['chain4_us']:.2f}, two kernels {cal['two_kernels_us']:.2f} ({cal['two_kernels_pdl_us']:.2f} with PDL)")
    print(f"one-launch config = sweep variant `{table_variant}`; {info.get('stopped_early', 'every case ran')}\n")

    coop_table(rows)

    print("### Against the anchors (rank 16, bf16, K = 4096; µs)\n")
    print("| case | N | floor | best anchor | two launches | one launch | ours | ours / floor | base | LoRA / base "
          "| torch loop | gather+bmm | goals |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if r.get("anchor_us") is None:
            continue
        print(f"| {r['kind']} T={r['t']}, n={r['n']} | {r['width']} | {_f(r['floor_us'])} | {_f(r['anchor_us'])} | "
              f"{_f(r['two_us'])} | {_f(r.get('one_table_us'))} | **{_f(r['ours_us'])}** ({_path(r)}) | "
              f"{_f(r['ours_us'] / r['floor_us'], 2)} | {_f(r['base_us'])} | {_f(r['lora_over_base'], 2)} | "
              f"{_f(r.get('loop_us'))} | {_f(r.get('bmm_us'))} | {_goals(r['goals'])} |")

    cols_of = collections.defaultdict(dict)
    cols = []
    for r in rows:
        col = (r["kind"], r["t"], r["n"])
        if col not in cols:
            cols.append(col)
        cols_of[(r["shape"], r["k"], r["width"], r["rank"])][col] = r
    cols.sort(key=lambda c: (c[0] != "decode", c[1], c[2], c[0]))

    def label(kind: str, t: int, n: int) -> str:
        if kind == "decode":
            return f"T={t} n={n}"
        if kind == "skewed":  # Punica's Skewed mix (Zipf 1.5 shares)
            return f"skewed T={t} n={n}"
        return f"{kind.removeprefix('prefill')}-seg n={n}"

    def head(cs: list) -> str:
        return " | ".join(label(*c) for c in cs)

    small = [c for c in cols if c[0] == "decode" and c[1] <= 1024]
    print("\n### Two launches vs one, decode (bf16; µs: two / one; **bold** = the path the rule picks; "
          "✓/✗ = the ≤ 8 µs goal where the floor is under 5 µs)\n")
    print("| shape (K→N) | r | " + head(small) + " |")
    print("|---|---:|" + "---:|" * len(small))
    for (shape, k, w, rank), rs in sorted(cols_of.items(), key=lambda kv: (kv[0][0], kv[0][3])):
        cells = []
        for c in small:
            r = rs.get(c)
            if r is None:
                cells.append("")
                continue
            two = f"**{r['two_us']:.1f}**" if not r["fused"] else f"{r['two_us']:.1f}"
            one = "—" if r.get("one_table_us") is None else (f"**{r['one_table_us']:.1f}**" if r["fused"] else f"{r['one_table_us']:.1f}")
            mark = {True: " ✓", False: " ✗"}.get(r["goals"].get("at_most_8us"), "")
            cells.append(f"{two} / {one}{mark}")
        print(f"| {shape} {k}→{w} | {rank} | " + " | ".join(cells) + " |")

    print("\n### Every case (bf16; µs, the picked path; LoRA / base in parentheses; ¹ whole-K one launch, ² split-K "
          "cooperative one launch, ³ token-gather pair; ✗ a missed goal)\n")
    print("| shape (K→N) | r | " + head(cols) + " |")
    print("|---|---:|" + "---:|" * len(cols))
    for (shape, k, w, rank), rs in sorted(cols_of.items(), key=lambda kv: (kv[0][0], kv[0][3])):
        cells = []
        for c in cols:
            r = rs.get(c)
            if r is None:
                cells.append("")
                continue
            miss = "✗" if not all(r["goals"].values()) else ""
            mark = "¹" if r["fused"] else "²" if r.get("coop") else "³" if r.get("gather") else ""
            cells.append(f"{r['ours_us']:.1f}{mark} ({r['lora_over_base']:.2f}){miss}")
        print(f"| {shape} {k}→{w} | {rank} | " + " | ".join(cells) + " |")

    print("\n### Goals\n")
    tally = collections.defaultdict(lambda: [0, 0, []])
    for r in rows:
        for g, ok in r["goals"].items():
            tally[g][0 if ok else 1] += 1
            if not ok:
                tally[g][2].append(f"{r['kind']} T={r['t']} n={r['n']} {r['shape']} r={r['rank']} "
                                   f"({r['ours_us']:.1f} µs, floor {r['floor_us']:.1f})")
    for g, (ok, bad, which) in tally.items():
        print(f"- {g}: met {ok}, missed {bad}" + ("" if not which else ": " + "; ".join(which[:40])
                                                    + (" …" if len(which) > 40 else "")))
    for launches in ("two", "coop", "one"):
        errs = [r[f"err_{launches}"] for r in rows if f"err_{launches}" in r]
        if errs:
            print(f"- largest relative error against float64, {launches} launch(es), over {len(errs)} cases: {max(errs):.1e}")

    sweeps = [r for r in rows if r.get("variants_us")]
    if sweeps:
        names = list(info["fused_variants"])
        print("\n### One-launch config sweep (decode T ≤ 256): geometric mean of variant / the run's table config\n")
        print("| T | cases | " + " | ".join(f"`{n}`" for n in names) + " |")
        print("|---:|---:|" + "---:|" * len(names))
        for t in sorted({r["t"] for r in sweeps}) + [None]:
            rs = [r for r in sweeps if t is None or r["t"] == t]
            cells = []
            for n in names:
                ratios = [r["variants_us"][n] / r["variants_us"]["table"] for r in rs if r["variants_us"].get(n)]
                cells.append(_f(math.exp(sum(map(math.log, ratios)) / len(ratios)), 3) if ratios else "—")
            print(f"| {'all' if t is None else t} | {len(rs)} | " + " | ".join(cells) + " |")
        print("\n" + "; ".join(f"`{n}`: {json.dumps(v)}" for n, v in info["fused_variants"].items()))
        errs = {f"{r['shape']} r={r['rank']} {n}": e for r in sweeps for n, e in r.get("variant_errors", {}).items()}
        if errs:
            print(f"\nvariants that failed: {errs}")

    if data.get("fused"):
        print("\n### Multi-slice forms (rank 16; µs): lora_apply_fused as dispatched, forced one launch, forced two, "
              "one lora_apply per slice\n")
        print("| form | case | N | public | one launch | two launches | cooperative | per slice |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for r in data["fused"]:
            print(f"| {r['name']} | {r['kind']} T={r['t']} n={r['n']} | {r['width']} | {_f(r['public_us'])} | "
                  f"{_f(r.get('one_us'))} | {_f(r['two_us'])} | {_f(r.get('coop_us'))} | {_f(r['separate_us'])} |")


if __name__ == "__main__":
    main(sys.argv[1])
