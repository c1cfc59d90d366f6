"""The token-gather kernel's one-launch form against its pair of launches and the tile kernels.

sgmv_gather's one launch (`GatherConfig.one_min_tokens`): a program per token and column group walks the
token's whole K (its adapter's A), then its columns (B and y), with no workspace and no second launch. Cases:
Llama-3-8B projections (qo, kv, up, down) and the engine's qkv / gate_up, ranks 16 and 8, batches of distinct
or mostly distinct adapters from T = 1 to 1024. Timed as bench_sgmv.py times (median of CUDA-graph replays, L2
flushed): the tile kernels ("tiles", metadata built with the adapter count, not timed), the table's pair of
gather launches ("pair") and one-launch variants around a first guess, one field at a time. Every path is
checked against one float64 reference per case before any timing. Run on a GPU:

    python benchmarks/kernels/sweep_gather_one.py --compile-only --shard 0/8   # warm Triton's cache in parallel
    python benchmarks/kernels/sweep_gather_one.py --out sweep_gather_one.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sgmv import Timer, calibration, copy_bandwidth, warm_up  # noqa: E402
from sweep_gather import FORMS, Case, Inputs, geomean  # noqa: E402

from loraledger.kernels import lora_apply_fused_ref  # noqa: E402
from loraledger.kernels.configs import GatherConfig, hopper_gather_config  # noqa: E402

BATCHES = ((1, 1), (16, 16), (32, 32), (64, 32), (64, 64), (128, 128), (256, 128), (256, 256), (512, 512),
           (1024, 512), (1024, 1024))
# (K step, column block, warps, programs per SM); the first is the guess the others vary one field of.
ONES = {"base": (1024, 512, 4, 2), "k512": (512, 512, 4, 2), "k2048": (2048, 512, 4, 2), "n256": (1024, 256, 4, 2),
        "n1024": (1024, 1024, 4, 2), "w8": (1024, 512, 8, 2), "p1": (1024, 512, 4, 1), "p4": (1024, 512, 4, 4),
        "p8": (1024, 512, 4, 8)}


def one(bk: int, bn: int, warps: int, programs: int) -> GatherConfig:
    return dataclasses.replace(hopper_gather_config(), one_min_tokens=0, one_block_k=bk, one_block_n=bn,
                               one_warps=warps, one_programs=programs)


def paths(inp: Inputs) -> dict:
    pair = dataclasses.replace(hopper_gather_config(), one_min_tokens=1 << 62)
    out = {"tiles": inp.two(), "pair": inp.gather(pair)}
    return out | {name: inp.gather(one(*v)) for name, v in ONES.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("sweep_gather_one.json"))
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--ranks", default="16,8")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--compile-only", action="store_true")
    parser.add_argument("--shard", default="0/1")
    parser.add_argument("--budget-s", type=float, default=1e9)
    args = parser.parse_args()
    todo = [Case(f, r, t, n) for t, n in BATCHES for f in args.forms.split(",") for r in map(int, args.ranks.split(","))]
    if args.compile_only:
        i, n = (int(v) for v in args.shard.split("/"))
        for j, case in enumerate(todo):
            if j % n == i:
                inp = Inputs(case)
                for run in paths(inp).values():
                    run()
        torch.cuda.synchronize()
        return

    timer = Timer(args.reps)
    warm_up()
    bw = copy_bandwidth(timer)
    info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "copy_bw_TBps": bw / 1e12,
            "calibration": calibration(timer), "ones": ONES, "table_gather": dataclasses.asdict(hopper_gather_config())}
    print(json.dumps(info), flush=True)
    rows = []
    t0 = time.time()
    for i, case in enumerate(todo):
        if time.time() - t0 > args.budget_s:
            info["stopped_early"] = f"{len(todo) - i} cases not run"
            break
        inp = Inputs(case)
        runs = paths(inp)
        y0 = inp.y.clone()
        ref = y0.double()
        lora_apply_fused_ref(ref, inp.x.double(), tuple(a.double() for a in inp.a), tuple(b.double() for b in inp.b),
                             inp.ranks, inp.scales.double(), inp.slots)
        delta = (ref - y0.double()).norm()
        row = dataclasses.asdict(case) | {"floor_us": inp.floor_bytes / bw * 1e6, "err": {}, "us": {}}
        for name, run in runs.items():  # every check before any timing (the timed replays keep adding into y)
            inp.y.copy_(y0)
            run()
            row["err"][name] = ((inp.y.double() - ref).norm() / delta).item()
        for name, run in runs.items():
            row["us"][name] = timer(run)
        best = min(ONES, key=row["us"].get)
        print(f"[{i + 1}/{len(todo)} {time.time() - t0:.0f}s] {case.label}: tiles {row['us']['tiles']:.1f}, pair "
              f"{row['us']['pair']:.1f}, one {row['us']['base']:.1f}, best {best} {row['us'][best]:.1f} us, floor "
              f"{row['floor_us']:.1f}, err {max(row['err'].values()):.1e}", flush=True)
        rows.append(row)
        del inp, runs, ref
    info["copy_bw_end_TBps"] = copy_bandwidth(timer) / 1e12
    info["timing_spread_max"] = max(timer.spread)
    args.out.write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    print("one-launch variant / pair, geometric mean per batch (then / tiles for base):")
    for t, n in BATCHES:
        sel = [r for r in rows if (r["t"], r["n"]) == (t, n)]
        if sel:
            ratios = " ".join(f"{v} {geomean([r['us'][v] / r['us']['pair'] for r in sel]):.3f}" for v in ONES)
            print(f"T={t} n={n}: {ratios}; pair/tiles {geomean([r['us']['pair'] / r['us']['tiles'] for r in sel]):.3f}"
                  f"; best-of-ones/floor {geomean([min(r['us'][v] for v in ONES) / r['floor_us'] for r in sel]):.2f}")


if __name__ == "__main__":
    main()
