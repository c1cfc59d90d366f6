"""Launch configs of the paged decode attention kernel (kernels/paged_attention.py), per decode shape.

For Llama-3-8B's attention (32 query heads, 8 KV heads, head dim 128) and Llama-3.2-1B's (head dim 64), bf16,
16-token blocks in a shuffled cache: each shape is timed with the kernel's defaults, then every (block_n,
num_warps, num_stages) with the default split count, then every split count with the best of those. Times are
triton.testing.do_bench medians (L2 cleared before each run), in microseconds; `kv_GBps` is the K and V bytes
read over the time. `--layouts nhd hnd` times each shape on both cache layouts: the engine's [blocks,
block_size, KV heads, D] (a KV head's rows of a block 1 KiB apart at 8 heads of 64) and [blocks, KV heads,
block_size, D] (a KV head's rows of a block contiguous), the latter passed to the kernel as a permuted view.
Run on a GPU:

    python benchmarks/kernels/sweep_paged_attention.py --json paged_attention_sweep.json
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
import triton.testing

from loraledger.kernels.paged_attention import paged_attention

HEADS = {"llama-3-8b": (32, 8, 128), "llama-3.2-1b": (32, 8, 64)}  # query heads, KV heads, head dim
SHAPES = {
    "llama-3-8b": ((64, 512), (128, 512), (256, 512), (32, 1024), (64, 2048), (8, 4096), (1, 32768)),
    "llama-3.2-1b": ((64, 512), (128, 512), (256, 512), (64, 2048)),
}
LAUNCH = [{"block_n": n, "num_warps": w, "num_stages": s} for n, w, s in itertools.product((32, 64, 128), (2, 4, 8), (2, 3, 4))]
SPLITS = (1, 2, 4, 8, 16)


def inputs(batch: int, context: int, heads: int, kv_heads: int, head_dim: int, block_size: int = 16,
           layout: str = "nhd"):
    blocks_per_seq = -(-context // block_size)
    num_blocks = batch * blocks_per_seq
    gen = torch.Generator(device="cuda").manual_seed(0)
    if layout == "nhd":
        k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, device="cuda", generator=gen).bfloat16()
        v_cache = torch.randn_like(k_cache)
    else:  # stored [blocks, KV heads, block_size, D], seen by the kernel as [blocks, block_size, KV heads, D]
        k_cache = torch.randn(num_blocks, kv_heads, block_size, head_dim, device="cuda", generator=gen).bfloat16()
        v_cache = torch.randn_like(k_cache)
        k_cache, v_cache = k_cache.transpose(1, 2), v_cache.transpose(1, 2)
    tables = torch.randperm(num_blocks, device="cuda", generator=gen).view(batch, blocks_per_seq)
    lens = torch.full((batch,), context, dtype=torch.int64, device="cuda")
    q = torch.randn(batch, heads, head_dim, device="cuda", generator=gen).bfloat16()
    return q, k_cache, v_cache, tables, lens


def time_us(args: tuple, context: int, **launch) -> float | None:
    q = args[0]
    try:
        return 1e3 * triton.testing.do_bench(
            lambda: paged_attention(*args, q.shape[2] ** -0.5, max_context_len=context, **launch), warmup=10, rep=60
        )
    except Exception:  # noqa: BLE001 - a config that does not fit (shared memory) is skipped
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(SHAPES))
    p.add_argument("--layouts", nargs="+", default=["nhd"], choices=["nhd", "hnd"])
    p.add_argument("--no-splits", action="store_true", help="time the default split count only")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    report = {"device": torch.cuda.get_device_name(), "rows": []}
    for model in args.models:
        heads, kv_heads, head_dim = HEADS[model]
        for (batch, context), layout in itertools.product(SHAPES[model], args.layouts):
            tensors = inputs(batch, context, heads, kv_heads, head_dim, layout=layout)
            kv_bytes = 2 * batch * context * kv_heads * head_dim * 2
            row = {"model": model, "layout": layout, "batch": batch, "context": context,
                   "default_us": time_us(tensors, context)}
            launch = {json.dumps(cfg): time_us(tensors, context, **cfg) for cfg in LAUNCH}
            best_launch = min((k for k in launch if launch[k] is not None), key=launch.get)
            cfg = json.loads(best_launch)
            splits = {n: time_us(tensors, context, num_splits=n, **cfg) for n in (() if args.no_splits else SPLITS)}
            splits = splits or {0: launch[best_launch]}  # 0: the default count
            best_split = min((n for n in splits if splits[n] is not None), key=splits.get)
            row |= {"best_launch": cfg, "best_launch_us": launch[best_launch], "best_splits": best_split,
                    "best_us": splits[best_split], "launch_us": launch, "splits_us": splits}
            row["default_kv_GBps"] = kv_bytes / row["default_us"] / 1e3
            row["best_kv_GBps"] = kv_bytes / row["best_us"] / 1e3
            report["rows"].append(row)
            print(f"{model} {layout} B={batch} ctx={context}: default {row['default_us']:.1f} us "
                  f"({row['default_kv_GBps']:.0f} GB/s), best {row['best_us']:.1f} us ({row['best_kv_GBps']:.0f} GB/s) "
                  f"with {cfg}, splits {best_split}", flush=True)
            del tensors
            if args.json:
                args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
