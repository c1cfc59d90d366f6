"""Sweep kernels/skinny_matmul.py's launch configs against cuBLAS (F.linear) on the decode step's projections.

For each weight shape (Llama-3.2-1B and Llama-3-8B: fused q/k/v, o, fused gate/up, down, lm_head) and
row count, time a CUDA graph of L back-to-back products over L distinct weight copies (as a decode
step's layers: the weights stream from DRAM, L * bytes well beyond L2), the median of replays over L, for
F.linear and for every config; report the best config, its time over cuBLAS's and both as a fraction of
the weight bytes over the copy bandwidth measured in the same run. Writes the rows as JSON (--out).
`--compile-only --shard i/n` compiles one shard of the variants (run shards in parallel first).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from loraledger.kernels.configs import SkinnyConfig
from loraledger.kernels.skinny_matmul import skinny_matmul

SHAPES = {  # name: (N, K)
    "1b_qkv": (3072, 2048),
    "1b_o": (2048, 2048),
    "1b_gate_up": (16384, 2048),
    "1b_down": (2048, 8192),
    "1b_lm_head": (128256, 2048),
    "8b_qkv": (6144, 4096),
    "8b_o": (4096, 4096),
    "8b_gate_up": (28672, 4096),
    "8b_down": (4096, 14336),
    "8b_lm_head": (128256, 4096),
}
DTYPE = torch.bfloat16


def configs(n: int, k: int, num_sms: int) -> list[SkinnyConfig]:
    out = []
    grid = itertools.product((32, 64, 128), (128, 256), (3, 5), (1, 2, 4, 8, 16), (4, 8))
    for block_n, block_k, stages, split, warps in grid:
        tiles = -(-n // block_n)
        if k // split < block_k or tiles * split > 8 * num_sms or (split > 1 and tiles >= 2 * num_sms):
            continue
        if warps == 8 and block_n < 128:
            continue
        out.append(SkinnyConfig(block_n, block_k, split, stages, warps))
    return out


def time_chain(fns: list, reps: int) -> float:
    """Median microseconds per call of a graph replaying every fn once, back to back."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for fn in fns:
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in fns:
            fn()
    graph.replay()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    del graph
    return statistics.median(s.elapsed_time(e) * 1000 for s, e in events) / len(fns)


def copy_bandwidth() -> float:
    src = torch.empty(512 << 20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    us = time_chain([lambda: dst.copy_(src)], 20)
    return 2 * src.numel() / (us * 1e-6)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--rows", default="64,32,16")
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--compile-only", action="store_true")
    p.add_argument("--shard", default="0/1")
    p.add_argument("--budget-s", type=float, default=1e9, help="stop starting shapes after this many seconds")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    shard, shards = map(int, args.shard.split("/"))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    started = time.perf_counter()
    bw = 0.0 if args.compile_only else copy_bandwidth()
    rows_out = []
    job = 0
    for name in args.shapes.split(","):
        n, k = SHAPES[name]
        weight_bytes = n * k * 2
        copies = 1 if args.compile_only else max(2, min(16, -(-(256 << 20) // weight_bytes)))
        weights = [torch.randn(n, k, device="cuda", dtype=DTYPE) * k**-0.5 for _ in range(copies)]
        for m in map(int, args.rows.split(",")):
            if time.perf_counter() - started > args.budget_s:
                break
            x = torch.randn(m, k, device="cuda", dtype=DTYPE)
            ref = F.linear(x, weights[0])
            outs = [torch.empty(m, n, device="cuda", dtype=DTYPE) for _ in weights]
            if args.compile_only:
                for cfg in configs(n, k, sms):
                    job += 1
                    if job % shards == shard:
                        skinny_matmul(x, weights[0], None, cfg)
                continue
            cublas = time_chain([lambda w=w: F.linear(x, w) for w in weights], args.reps)
            floor_us = weight_bytes / bw * 1e6
            row = {"shape": name, "N": n, "K": k, "rows": m, "cublas_us": cublas, "floor_us": floor_us,
                   "cublas_bw_frac": floor_us / cublas, "configs": []}  # fmt: skip
            for cfg in configs(n, k, sms):
                try:
                    got = skinny_matmul(x, weights[0], None, cfg)
                    err = float((got.float() - ref.float()).norm() / ref.float().norm())
                    us = time_chain([lambda w=w, o=o, c=cfg: skinny_matmul(x, w, None, c, out=o)
                                     for w, o in zip(weights, outs, strict=True)], args.reps)  # fmt: skip
                except Exception as exc:  # noqa: BLE001 - a config that does not run is a row, not a stop
                    row["configs"].append({"cfg": cfg.__dict__, "error": f"{type(exc).__name__}: {exc}"[:200]})
                    continue
                row["configs"].append({"cfg": cfg.__dict__, "us": us, "err": err})
            ok = [c for c in row["configs"] if "us" in c and c["err"] < 2e-2]
            best = min(ok, key=lambda c: c["us"]) if ok else None
            row["best"] = best
            row["best_vs_cublas"] = best["us"] / cublas if best else None
            rows_out.append(row)
            print(f"{name:>11} M={m:<3} cublas {cublas:7.2f} us ({floor_us / cublas:4.0%} bw)  best "
                  + (f"{best['us']:7.2f} us ({floor_us / best['us']:4.0%} bw, {best['us'] / cublas:.2f}x) {best['cfg']}"
                     if best else "none"), flush=True)  # fmt: skip
        del weights
        torch.cuda.empty_cache()
    table: dict[tuple[int, int], dict[int, tuple]] = {}  # configs._HOPPER_SKINNY's form: wins of 3% or more
    for row in rows_out:
        if row["best"] and row["best_vs_cublas"] <= 0.97:
            c = row["best"]["cfg"]
            launch = (c["block_n"], c["block_k"], c["split_k"], c["stages"], c["warps"])
            table.setdefault((row["N"], row["K"]), {})[row["rows"]] = launch
    if not args.compile_only:
        print("table (rows bucket: block_n, block_k, split_k, stages, warps):", table, flush=True)
    if args.out and not args.compile_only:
        info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "copy_bw_GBps": bw / 1e9,
                "rows": rows_out, "table": {f"{n},{k}": v for (n, k), v in table.items()}}  # fmt: skip
        args.out.write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
