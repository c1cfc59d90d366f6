"""Registered adapters 100 → 1,000 → 5,000 on one engine: GPU memory flat, host memory bounded by the pinned budget.

    python benchmarks/serving/bench_adapter_scale.py --preset llama-3.2-1b --sizes 100 1000 5000 \
        --slots 64 --cpu-cache-gb 2 --json adapter_scale.json
    python benchmarks/serving/bench_adapter_scale.py --preset tiny --device cpu --sizes 10 100 500 \
        --requests-per-size 16                                                                     # smoke

One engine; adapters are registered in steps up to each size (--distinct-files folders on disk, reused under
many ids, so each id is read, validated and packed like its own file), and after each step a short offline
workload (--requests-per-size requests, uniform over every registered id, lengths U[--len-range]) runs
through generate_batch. At each size: registration time, output tokens/s, the adapter cache's counters
(device misses, host hits, disk reads, fault-in latency p50/p99), torch's allocated / peak allocated / peak
reserved GPU memory, the host tier's arena (images it may hold, images held, bytes pinned) and the process's
RSS. The device slot pool is fixed (--slots), so GPU memory should not move with the registry; the host tier
is an LRU arena within --cpu-cache-gb of pinned memory (plus two spare images for disk reads), so RSS should
stay under (RSS before registering) + that budget + the registry's bookkeeping, while `unbounded_host_gib`
shows what holding every adapter on the host would take.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import torch
from bench_serving import (
    PRESETS,
    SETTINGS,
    build_model,
    engine_config,
    free_engine,
    gpu_memory,
    host_rss_gib,
    log,
    model_config,
    offline,
    register,
    save,
    stat_delta,
    sync,
    warm_up,
    write_adapters,
)
from loraledger.runtime.engine import Engine

HOST_TIER_KEYS = ("host_capacity_images", "host_used_images", "host_image_bytes", "host_pinned_bytes")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="llama-3.2-1b", choices=[*PRESETS, "tiny"])
    p.add_argument("--layers", type=int)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--setting", default="slora", choices=sorted(SETTINGS))
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000], help="registered adapters, ascending")
    p.add_argument("--distinct-files", type=int, default=16)
    p.add_argument("--register-workers", type=int, default=8)
    p.add_argument("--slots", type=int, default=64)
    p.add_argument("--cpu-cache-gb", type=float, default=2.0, help="pinned host tier budget")
    p.add_argument("--requests-per-size", type=int, default=128)
    p.add_argument("--len-range", type=int, nargs=2, default=(8, 128))
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-batched-tokens", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    t_start = time.perf_counter()
    config = model_config(args.preset, args.layers)
    rss_before_model = host_rss_gib()
    model = build_model(config, args.device, args.seed)
    rank, targets = SETTINGS[args.setting]
    shapes = config.projection_shapes()
    dtype_bytes = next(model.parameters()).element_size()
    adapter_bytes = config.num_layers * rank * sum(sum(shapes[t]) for t in targets) * dtype_bytes
    engine = Engine(
        model, None, engine_config(args, rank=rank, targets=targets, max_model_len=2 * args.len_range[1] + 80)
    )
    report = {
        "mode": "adapter_scale",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "adapter_bytes": adapter_bytes,
        "cpu_budget_gib": args.cpu_cache_gb,
        "rss_before_model_gib": rss_before_model,
        "sizes": [],
    }
    if args.device == "cuda":
        report["device"] = torch.cuda.get_device_name()
        report["slot_pool_gib"] = engine.slot_pool.nbytes / 2**30
    g = torch.Generator().manual_seed(args.seed)
    lo, hi = args.len_range
    with tempfile.TemporaryDirectory() as tmp:
        files = write_adapters(config, Path(tmp), min(args.distinct_files, args.sizes[0]), rank, targets, args.seed)
        ids: list[str] = []
        report["rss_before_adapters_gib"] = host_rss_gib()
        for size in sorted(args.sizes):
            new = [f"a{i}" for i in range(len(ids), size)]
            # register() maps index j to files[j % len(files)]: keep the mapping continuous across steps.
            sources = [files[(len(ids) + j) % len(files)] for j in range(len(files))]
            log(f"registering {len(new)} more adapters")
            register_s = register(engine, new, sources, args.register_workers)
            log(f"{size} registered ({register_s:.1f} s)")
            ids += new
            if "warmup_s" not in report:  # graphs and kernels, before anything is measured
                report["warmup_s"] = warm_up(engine, ids[: args.max_num_seqs], config.vocab_size, hi)
            gc.collect()
            picks = torch.randint(size, (args.requests_per_size,), generator=g).tolist()
            workload = [
                (0.0, torch.randint(config.vocab_size, (int(torch.randint(lo, hi + 1, (1,), generator=g)),),
                                    generator=g).tolist(), int(torch.randint(lo, hi + 1, (1,), generator=g)), pick)
                for pick in picks
            ]  # fmt: skip
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            before = engine.stats()["adapters"]
            served = offline(engine, workload, ids)
            sync(args.device)
            after = engine.stats()["adapters"]
            row = {
                "registered": size,
                "register_s": register_s,
                "output_tokens_per_s": served["output_tokens_per_s"],
                "serve_s": served["elapsed_s"],
                "requests": served["requests"],
                "adapters": stat_delta(before, after),
                "host_tier": {k: after[k] for k in HOST_TIER_KEYS},  # gauges: as they are after the window
                "host_rss_gib": host_rss_gib(),
                "unbounded_host_gib": size * adapter_bytes / 2**30,
                **gpu_memory(args.device),
            }
            row["rss_over_budget_gib"] = row["host_rss_gib"] - report["rss_before_adapters_gib"] - args.cpu_cache_gb
            report["sizes"].append(row)
            print(f"{size:>6} adapters: register {register_s:.1f} s, {served['output_tokens_per_s']:.0f} tok/s, "
                  f"RSS {row['host_rss_gib']:.2f} GiB (all on host would be {row['unbounded_host_gib']:.2f}), "
                  f"pinned {after['host_pinned_bytes'] / 2**30:.2f} GiB, "
                  f"GPU alloc {row.get('gpu_allocated_gib', 0):.2f} / peak reserved "
                  f"{row.get('gpu_max_reserved_gib', 0):.2f} GiB", flush=True)  # fmt: skip
            save(report, args.json)
    free_engine(engine)
    rows = report["sizes"]
    if args.device == "cuda" and len(rows) > 1:
        report["gpu_allocated_growth_gib"] = rows[-1]["gpu_allocated_gib"] - rows[0]["gpu_allocated_gib"]
    report["total_s"] = time.perf_counter() - t_start
    print(json.dumps(report, indent=2, default=str))
    save(report, args.json)


if __name__ == "__main__":
    main()
