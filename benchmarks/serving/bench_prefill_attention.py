"""The prefill-chunk attention of a mixed step (runtime/engine/attention.py's torch path) under each SDPA
backend, over a sequence of step shapes that never repeat, as in serving, and then over the same shapes again.

Why: in a serving window the piecewise-graphed mixed steps took 85 ms on average against 13-14 ms for one
such step timed alone, and the engine thread's stack samples sat in the SDPA call. A backend that builds a
plan per new shape (cuDNN's) pays that on every step of a server, whose shapes are always new.

    python benchmarks/serving/bench_prefill_attention.py --json out.json     # CUDA
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from loraledger.runtime.engine import attention
from loraledger.runtime.engine.attention import AttentionMetadata


def step_shapes(n: int, seed: int, max_rows: int, len_range: tuple[int, int]) -> list[tuple[list[int], list[int]]]:
    """n steps of prefill rows: (chunk lengths, tokens already cached) per row, U[len_range] chunks."""
    gen = torch.Generator().manual_seed(seed)
    steps = []
    for _ in range(n):
        rows = int(torch.randint(1, max_rows + 1, (1,), generator=gen))
        lens = torch.randint(len_range[0], len_range[1] + 1, (rows,), generator=gen).tolist()
        cached = [int(v) if i % 2 else 0 for i, v in enumerate(torch.randint(0, 512, (rows,), generator=gen))]
        steps.append((lens, cached))
    return steps


def metadata(lens: list[int], cached: list[int], block_size: int, device) -> tuple[AttentionMetadata, int]:
    """The engine's attention metadata for prefill rows (runtime/engine/engine.py Engine._prepare), and the
    blocks its tables use."""
    rows, tokens = len(lens), sum(lens)
    ctx = [c + n for c, n in zip(cached, lens, strict=True)]
    max_blocks = max(-(-c // block_size) for c in ctx)
    tables = torch.zeros(rows, max_blocks, dtype=torch.int64)
    nxt = 1
    for r, c in enumerate(ctx):
        nb = -(-c // block_size)
        tables[r, :nb] = torch.arange(nxt, nxt + nb)
        nxt += nb
    len_t = torch.tensor(lens, device=device)
    start_t = torch.tensor(cached, device=device)
    tables = tables.to(device)
    arange = torch.arange(max(tokens, max(lens)), device=device)
    token_seq = torch.repeat_interleave(arange[:rows], len_t, output_size=tokens)
    first = torch.cumsum(len_t, 0) - len_t
    token_index = arange[:tokens] - first[token_seq]
    positions = start_t[token_seq] + token_index
    q = arange[: max(lens)]
    return AttentionMetadata(
        slot_mapping=tables[token_seq, positions // block_size] * block_size + positions % block_size,
        block_tables=tables,
        context_lens=start_t + len_t,
        token_seq=token_seq,
        token_index=token_index,
        positions_padded=torch.where(q < len_t[:, None], start_t[:, None] + q, 0),
        max_query_len=max(lens),
        max_context_len=max(ctx),
        num_decode_rows=0,
        max_prefill_context_len=max(ctx),
    ), nxt


BACKENDS = {
    "default": None,
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
    "flash": [SDPBackend.FLASH_ATTENTION],  # no arbitrary masks: expected to fail, reported as such
    "math": [SDPBackend.MATH],
    "engine": "engine",  # attention.paged_attention as the engine calls it (its own backend choice)
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--max-rows", type=int, default=6)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    steps = step_shapes(args.steps, 0, args.max_rows, (8, 512))
    metas = [metadata(lens, cached, args.block_size, device) for lens, cached in steps]
    num_blocks = max(n for _, n in metas) + 1
    k_cache = torch.randn(num_blocks, args.block_size, args.kv_heads, args.head_dim, device=device, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    qs = [torch.randn(sum(lens), args.heads, args.head_dim, device=device, dtype=dtype) for lens, _ in steps]
    scale = args.head_dim**-0.5
    result = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "torch": torch.__version__, "steps": len(steps),
              "tokens_per_step_mean": statistics.mean(sum(lens) for lens, _ in steps), "backends": {}}
    reference = None
    for name, backends in BACKENDS.items():
        ctx = contextlib.nullcontext() if backends in (None, "engine") else sdpa_kernel(backends)
        fn = attention.paged_attention if backends == "engine" else attention._gathered_attention
        passes, outs, error = [], [], None
        try:
            with ctx:
                for _ in range(2):  # new shapes, then the same shapes again
                    times = []
                    for (meta, _), q in zip(metas, qs, strict=True):
                        sync()
                        t0 = time.perf_counter()
                        out = fn(q, k_cache, v_cache, meta, scale, None)
                        sync()
                        times.append((time.perf_counter() - t0) * 1e3)
                        if len(passes) == 0:
                            outs.append(out)
                    passes.append(times)
        except RuntimeError as exc:
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
        row = {"error": error}
        if not error:
            row |= {"new_shapes_ms_mean": statistics.mean(passes[0]), "new_shapes_ms_median": statistics.median(passes[0]),
                    "same_shapes_ms_mean": statistics.mean(passes[1]), "same_shapes_ms_median": statistics.median(passes[1])}
            if reference is None:
                reference = outs
            row["max_abs_diff_vs_default"] = max((o.float() - r.float()).abs().max().item()
                                                 for o, r in zip(outs, reference, strict=True))
        result["backends"][name] = row
        print(name, json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
