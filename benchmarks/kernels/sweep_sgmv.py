"""Sweep of the two-launch SGMV configs around the Hopper table, per decode bucket, many-adapter cases first.

Where does a decode batch of distinct adapters lose time against its memory floor, and which block sizes
win it back without costing the one-adapter cases? For each bucket of kernels/configs.py (T <= 64, <= 256,
<= 1024) the cases below are timed (CUDA-graph replays, L2 flushed, median: bench_sgmv's Timer) with the
table's config and with one field changed at a time (round 1), then with the best value of every field
that helped combined (round 2). The shrink and the expand of the table's config are also timed alone
(without PDL), to say which of the two carries the loss. A variant is scored by the geometric mean of its
time over the table's across the bucket's cases.

    python benchmarks/kernels/sweep_sgmv.py --compile-only --shard 0/8   # warm Triton's cache, in parallel
    python benchmarks/kernels/sweep_sgmv.py --out results/
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from loraledger.kernels.configs import SgmvConfig, sgmv_config
from loraledger.kernels.sgmv_expand import sgmv_expand
from loraledger.kernels.sgmv_shrink import sgmv_shrink

from bench_sgmv import DEVICE, Case, Inputs, Timer, check, copy_bandwidth, warm_up  # noqa: I001 (script dir)

# bucket T -> its cases (kind, shape, rank, t, n): distinct adapters (Punica's Distinct), then guards
CASES: dict[int, list[Case]] = {
    64: [Case("decode", s, 16, 64, 64) for s in ("qo", "kv", "up", "down")]
    + [Case("decode", "qo", 16, 64, 1), Case("decode", "up", 16, 64, 8), Case("decode", "down", 16, 16, 1)],
    256: [Case("decode", s, 16, 256, 256) for s in ("qo", "up", "down")]
    + [Case("decode", "qo", 16, 256, 8), Case("decode", "down", 16, 256, 8), Case("decode", "up", 16, 128, 128)],
    1024: [Case("decode", "qo", 16, 1024, 1024), Case("decode", "up", 16, 1024, 1),
           Case("decode", "up", 16, 1024, 64), Case("decode", "down", 16, 1024, 1)],
    # the last bucket: an engine's mixed step (64 decode tokens of distinct adapters, then prefill segments),
    # S-LoRA's rank 8, then pure prefill guards
    2048: [Case("mixed", s, 8, 2048, 64) for s in ("qo", "kv", "up", "down")]
    + [Case("prefill128", "qo", 16, 4096, 8), Case("prefill128", "up", 16, 4096, 32)],
}

# field -> values tried in round 1 (the table's own value is skipped)
FIELDS = {
    "programs_per_sm": (4, 16, 32),
    "shrink_warps": (2, 4, 8),
    "shrink_stages": (1, 2, 3, 4),
    "block_k": (64, 128, 256),
    "k_chunk": (256, 512, 1024),
    "expand_warps": (2, 4, 8),
    "block_n": (64, 128, 256, 512),
    "n_blocks": (1, 2, 4, 8),
    "block_t": (16, 32, 64),
}
# a few joint moves that one-at-a-time cannot find: small programs, many of them
JOINT = {
    "w2_p32": {"shrink_warps": 2, "expand_warps": 2, "programs_per_sm": 32},
    "w4_p16": {"shrink_warps": 4, "expand_warps": 4, "programs_per_sm": 16},
    "w2_p16_nb1": {"shrink_warps": 2, "expand_warps": 2, "programs_per_sm": 16, "n_blocks": 1},
    # one load per work item: the whole K chunk, the whole column group (all of it in flight at once)
    "k512_1": {"k_chunk": 512, "block_k": 512, "shrink_stages": 1},
    "k512_1_w8": {"k_chunk": 512, "block_k": 512, "shrink_stages": 1, "shrink_warps": 8},
    "k1024_1_w8": {"k_chunk": 1024, "block_k": 1024, "shrink_stages": 1, "shrink_warps": 8},
    "n512_1": {"block_n": 512, "n_blocks": 1, "expand_warps": 4},
    "n512_1_w8": {"block_n": 512, "n_blocks": 1, "expand_warps": 8},
    "n256_1_w4_p16": {"block_n": 256, "n_blocks": 1, "expand_warps": 4, "programs_per_sm": 16},
    "n512_1_w4_p16": {"block_n": 512, "n_blocks": 1, "expand_warps": 4, "programs_per_sm": 16},
    "one_load": {"k_chunk": 512, "block_k": 512, "shrink_stages": 1, "shrink_warps": 8, "block_n": 512,
                 "n_blocks": 1, "expand_warps": 8},
    "one_load_p16": {"k_chunk": 512, "block_k": 512, "shrink_stages": 1, "shrink_warps": 4, "block_n": 256,
                     "n_blocks": 1, "expand_warps": 4, "programs_per_sm": 16},
}


def round1(base: SgmvConfig, only: tuple[str, ...] = ()) -> dict[str, SgmvConfig]:
    """The table's config, one field changed at a time, and the joint moves; only the variants whose name
    starts with one of `only` when given."""
    out = {"table": base}
    for field, values in FIELDS.items():
        for v in values:
            if getattr(base, field) != v and not (field == "block_k" and v > base.k_chunk):
                out[f"{field}={v}"] = dataclasses.replace(base, **{field: v})
    for name, change in JOINT.items():
        out[name] = dataclasses.replace(base, **change)
    return {n: c for n, c in out.items() if n == "table" or not only or n.startswith(only)}


def alone(inp: Inputs, cfg: SgmvConfig):
    """The shrink alone and the expand alone (on the shrink's workspace), neither with PDL."""
    meta = inp.meta(cfg.block_t)
    ranks = inp.ranks.unsqueeze(0)
    ws = sgmv_shrink(inp.x, (inp.lora_a,), ranks, meta, cfg)

    def shrink() -> None:
        sgmv_shrink(inp.x, (inp.lora_a,), ranks, meta, cfg)

    def expand() -> None:
        sgmv_expand(inp.y, (inp.lora_b,), ranks, inp.scales, ws, meta, cfg)

    return shrink, expand


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def score(times: dict[str, list[float]], name: str) -> float:
    return geomean([t / b for t, b in zip(times[name], times["table"], strict=True)])


def time_variants(inps: list[Inputs], variants: dict[str, SgmvConfig], timer: Timer, times: dict, errs: dict) -> None:
    for name, cfg in variants.items():
        if name in times:
            continue
        try:
            for inp in inps:  # the timed replays of the last variant kept adding into y: start it afresh
                inp.y.normal_()
            errs[name] = max(check(inp, inp.ours(cfg)) for inp in inps)
            times[name] = [timer(inp.ours(cfg)) for inp in inps]
        except Exception as exc:  # noqa: BLE001 - a variant that does not fit (shared memory, registers) is reported
            errs[name] = f"{type(exc).__name__}: {str(exc)[:160]}"


def compile_only(shard: tuple[int, int], buckets: list[int], only: tuple[str, ...]) -> None:
    jobs = [(case, cfg) for t in buckets for case in CASES[t] for cfg in round1(sgmv_config(t, DEVICE), only).values()]
    inputs: dict[Case, Inputs] = {}
    for i, (case, cfg) in enumerate(jobs):
        if i % shard[1] != shard[0]:
            continue
        if case not in inputs:
            inputs[case] = Inputs(case, DEVICE)  # the real n: it sets the split plan
        inp = inputs[case]
        try:
            inp.ours(cfg)()
        except Exception as exc:  # noqa: BLE001 - the timed run reports it
            print(f"{case.label} {cfg}: {type(exc).__name__}", flush=True)
    torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("sweep_out"))
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--compile-only", action="store_true")
    parser.add_argument("--shard", default="0/1")
    parser.add_argument("--buckets", default="64,256,1024")
    parser.add_argument("--only", default="", help="comma-separated prefixes of the round-1 variants to run")
    args = parser.parse_args()
    only = tuple(p for p in args.only.split(",") if p)
    buckets = [int(b) for b in args.buckets.split(",")]
    if args.compile_only:
        compile_only(tuple(int(v) for v in args.shard.split("/")), buckets, only)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    timer = Timer(args.reps)
    warm_up()
    bw = copy_bandwidth(timer)
    result = {"info": {"device": torch.cuda.get_device_name(0), "copy_bw_TBps": bw / 1e12,
                       "torch": torch.__version__}, "buckets": {}}
    t0 = time.time()
    for bucket in buckets:
        base = sgmv_config(bucket, DEVICE)
        inps = [Inputs(case, DEVICE) for case in CASES[bucket]]
        floors = [inp.floor_bytes() / bw * 1e6 for inp in inps]
        split_times = [tuple(timer(fn) for fn in alone(inp, base)) for inp in inps]
        times: dict[str, list[float]] = {}
        errs: dict[str, object] = {}
        variants = round1(base, only)
        time_variants(inps, variants, timer, times, errs)
        # Round 2: every field's best value that beat the table, combined; and each pair of them.
        best = {}
        for field in FIELDS:
            cands = [(score(times, n), n) for n in times if n.startswith(f"{field}=")]
            if cands and min(cands)[0] < 0.98:
                best[field] = getattr(variants[min(cands)[1]], field)
        combos = {}
        if len(best) > 1:
            combos["all_best"] = dataclasses.replace(base, **best)
            items = sorted(best.items())
            for i in range(len(items)):
                for j in range(i + 1, len(items)):
                    combos[f"{items[i][0]}={items[i][1]},{items[j][0]}={items[j][1]}"] = dataclasses.replace(
                        base, **{items[i][0]: items[i][1], items[j][0]: items[j][1]})
        variants |= combos
        time_variants(inps, combos, timer, times, errs)
        ranked = sorted((score(times, n), n) for n in times)
        result["buckets"][str(bucket)] = {
            "table": dataclasses.asdict(base),
            "cases": [c.label for c in CASES[bucket]],
            "floor_us": floors,
            "shrink_alone_us": [s for s, _ in split_times],
            "expand_alone_us": [e for _, e in split_times],
            "times_us": times,
            "errors": {n: e for n, e in errs.items() if isinstance(e, str) or e > 0.02},
            "ranked": ranked,
            "configs": {n: dataclasses.asdict(variants[n]) for _, n in ranked[:8]},
        }
        print(f"[{time.time() - t0:.0f}s] bucket T <= {bucket}:", flush=True)
        for case, f, (s, e), t in zip(CASES[bucket], floors, split_times, times["table"], strict=True):
            print(f"  {case.label}: table {t:.1f} us (shrink alone {s:.1f}, expand alone {e:.1f}), floor {f:.1f}")
        for sc, n in ranked[:8]:
            print(f"  {sc:.3f} {n}: " + ", ".join(f"{v:.1f}" for v in times[n]), flush=True)
        (args.out / "sweep.json").write_text(json.dumps(result, indent=1))
        del inps
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
