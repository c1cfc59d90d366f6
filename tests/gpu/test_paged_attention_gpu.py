"""The paged decode-attention kernel on CUDA (bf16, fp16, fp32) against the float64 reference; host syncs,
CUDA-graph replay, and a timing helper.

Timing (prints a table of the kernel against the gather + SDPA path it replaces, in GB/s of KV read and
as a fraction of the measured copy bandwidth):

    python tests/gpu/test_paged_attention_gpu.py            # the default shapes
    python tests/gpu/test_paged_attention_gpu.py --sweep    # also every launch config, per shape
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

# The cases and their checker are shared with the interpreter tests (tests/unit/test_paged_attention.py).
_spec = importlib.util.spec_from_file_location(
    "paged_attention_cases", Path(__file__).resolve().parents[1] / "unit" / "test_paged_attention.py"
)
cases = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cases  # dataclasses look their module up there
_spec.loader.exec_module(cases)
Case = cases.Case


def _lens(n: int, lo: int, hi: int, seed: int) -> tuple[int, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(lo, hi + 1, (n,), generator=gen).tolist())


# Real model shapes: Llama-3-8B and Llama-3.2-1B attention (32 query heads over 8 KV heads, D 128 / 64),
# a GQA group of 7 (Qwen2-7B: 28 over 4), many short sequences, one long one (split by default).
GPU_CASES = (
    Case("gpu_llama8b_b64", _lens(64, 1, 2048, 1), 32, 8, 128, 16),
    Case("gpu_llama1b_b32", _lens(32, 1, 1000, 2), 32, 8, 64, 16),
    Case("gpu_group7", _lens(16, 1, 700, 3), 28, 4, 128, 16),
    Case("gpu_long_auto_split", (30000, 17), 32, 8, 128, 16),
    Case("gpu_long_split8", (9000, 1, 4097), 32, 8, 128, 16, num_splits=8),
    Case("gpu_window", _lens(8, 1, 5000, 4), 32, 8, 128, 16, sliding_window=4096),
    Case("gpu_block32_int32", _lens(24, 1, 1500, 5), 32, 8, 128, 32, index_dtype=torch.int32),
    # rotary: the rotary + KV write in the same launch; many short sequences where every split may hold the new key
    Case("gpu_rotary_llama8b_b64", _lens(64, 1, 2048, 6), 32, 8, 128, 16, rotary=True, q_view=True),
    Case("gpu_rotary_llama1b_b128", _lens(128, 1, 1000, 7), 32, 8, 64, 16, rotary=True, q_view=True),
    Case("gpu_rotary_long_split8", (9000, 1, 4097, 0), 32, 8, 128, 16, num_splits=8, rotary=True),
    Case("gpu_rotary_window", _lens(8, 1, 5000, 8), 32, 8, 128, 16, sliding_window=4096, rotary=True),
)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _poison_allocator() -> None:
    """Fill the caching allocator's free blocks with NaN, so an unwritten output or split workspace
    shows up as NaN instead of passing on stale values."""
    junk = torch.full((64 << 20,), float("nan"), device="cuda")
    del junk


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", cases.CASES + GPU_CASES, ids=lambda c: c.name)
def test_kernel_matches_float64_reference(case: Case, dtype: str) -> None:
    for seed in (11, 12):  # twice: a second run over reused (poisoned) memory and warm kernels
        _poison_allocator()
        result = cases.run_case(case, DTYPES[dtype], "cuda", seed)
        cases.check(result, DTYPES[dtype])


@pytest.mark.parametrize("num_splits", [1, 2, 5, 16])
def test_splits_agree(num_splits: int) -> None:
    case = dataclasses.replace(GPU_CASES[0], num_splits=num_splits)
    cases.check(cases.run_case(case, torch.bfloat16, "cuda", 7), torch.bfloat16)


def _static_inputs(batch: int, max_len: int, dtype: torch.dtype) -> dict:
    case = Case("static", (max_len,) * batch, 32, 8, 128, 16, spare_blocks=0)
    return cases.make_inputs(case, dtype, "cuda", torch.Generator().manual_seed(0))


def test_no_host_synchronisation() -> None:
    from loraledger.kernels.paged_attention import paged_attention

    inp = _static_inputs(8, 3000, torch.bfloat16)

    def step() -> torch.Tensor:
        return paged_attention(**inp, scale=0.1, max_context_len=3000)

    step()  # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        paged_attention(**inp, scale=0.1, num_splits=4)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_cuda_graph_replays_with_new_lengths_and_tables() -> None:
    """The engine's pattern: capture once with a fixed num_splits, then per step copy new queries, block
    tables and context lengths (shorter, longer, padding rows of 0) into the static buffers and replay."""
    from loraledger.kernels.paged_attention import paged_attention
    from loraledger.kernels.reference import paged_attention_ref

    batch, max_len = 8, 2048
    static = _static_inputs(batch, max_len, torch.bfloat16)

    def step() -> torch.Tensor:
        return paged_attention(**static, scale=128**-0.5, num_splits=4)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # compile outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()

    num_blocks = static["k_cache"].shape[0]  # all filled: any table of distinct blocks is valid
    blocks_per_seq = max_len // 16
    for i in range(3):
        gen = torch.Generator().manual_seed(100 + i)
        lens = torch.randint(1, max_len + 1, (batch,), generator=gen)
        lens[0] = 0  # a padding row of the bucket
        static["context_lens"].copy_(lens)
        tables = torch.stack([torch.randperm(num_blocks, generator=gen)[:blocks_per_seq] for _ in range(batch)])
        static["block_tables"][:, :blocks_per_seq].copy_(tables)
        static["q"].copy_(torch.randn(static["q"].shape, generator=gen))
        graph.replay()
        torch.cuda.synchronize()
        ref = paged_attention_ref(
            *(static[k].double().cpu() for k in ("q", "k_cache", "v_cache")),
            static["block_tables"].cpu(),
            lens,
            128**-0.5,
        )
        got = out.double().cpu()
        assert (got[0] == 0).all()
        err = ((got - ref)[1:].flatten(1).norm(dim=1) / ref[1:].flatten(1).norm(dim=1)).max().item()
        assert err < cases.TOLERANCE[torch.bfloat16], (i, err)


# --- timing ---------------------------------------------------------------------------------------


def copy_bandwidth_gbs() -> float:
    """Measured device-to-device copy bandwidth (read + write bytes per second), the roofline's rate."""
    import triton.testing

    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200)
    return 2 * src.numel() / ms / 1e6


def gather_sdpa_decode(q, k_cache, v_cache, block_tables, context_lens, scale, max_context_len):
    """The engine's previous decode path: gather each sequence's blocks into a padded copy, then SDPA."""
    num_seqs, heads, dim = q.shape
    block_size, kv_heads = k_cache.shape[1:3]
    tables = block_tables[:, : -(-max_context_len // block_size)]
    keys = k_cache[tables].reshape(num_seqs, -1, kv_heads, dim).transpose(1, 2)
    values = v_cache[tables].reshape(num_seqs, -1, kv_heads, dim).transpose(1, 2)
    mask = torch.arange(keys.shape[2], device=q.device)[None, :] < context_lens[:, None]
    return torch.nn.functional.scaled_dot_product_attention(
        q[:, :, None], keys, values, attn_mask=mask[:, None, None], scale=scale, enable_gqa=heads != kv_heads
    )[:, :, 0]


def time_paged_attention(
    batch: int,
    context_len: int,
    *,
    heads: int = 32,
    kv_heads: int = 8,
    head_dim: int = 128,
    block_size: int = 16,
    dtype: torch.dtype = torch.bfloat16,
    baseline: bool = True,
    **launch,
) -> dict:
    """One decode step's attention for one layer: `batch` sequences of `context_len` keys each, in a cache
    of shuffled blocks. Returns microseconds of the kernel (with `launch`: num_splits, block_n, num_warps,
    num_stages) and of the gather + SDPA path, and the kernel's KV read rate in GB/s."""
    import triton.testing

    from loraledger.kernels.paged_attention import paged_attention

    blocks_per_seq = -(-context_len // block_size)
    num_blocks = batch * blocks_per_seq
    gen = torch.Generator(device="cuda").manual_seed(0)
    k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, device="cuda", generator=gen).to(dtype)
    v_cache = torch.randn_like(k_cache)
    tables = torch.randperm(num_blocks, device="cuda", generator=gen).view(batch, blocks_per_seq)
    lens = torch.full((batch,), context_len, dtype=torch.int64, device="cuda")
    q = torch.randn(batch, heads, head_dim, device="cuda", generator=gen).to(dtype)
    scale = head_dim**-0.5
    kernel = lambda: paged_attention(  # noqa: E731
        q, k_cache, v_cache, tables, lens, scale, max_context_len=context_len, **launch
    )
    kernel_us = triton.testing.do_bench(kernel, warmup=25, rep=100) * 1e3
    kv_bytes = 2 * batch * context_len * kv_heads * head_dim * dtype.itemsize
    result = {
        "batch": batch,
        "context_len": context_len,
        "kernel_us": round(kernel_us, 1),
        "kv_gbs": round(kv_bytes / kernel_us / 1e3, 1),
        **launch,
    }
    if baseline:
        old = lambda: gather_sdpa_decode(q, k_cache, v_cache, tables, lens, scale, context_len)  # noqa: E731
        result["gather_sdpa_us"] = round(triton.testing.do_bench(old, warmup=10, rep=100) * 1e3, 1)
    return result


def test_timing_helper_runs() -> None:
    result = time_paged_attention(4, 300, baseline=True)
    assert result["kernel_us"] > 0 and result["gather_sdpa_us"] > 0


SHAPES = ((1, 1024), (1, 32768), (8, 4096), (32, 1024), (64, 512), (64, 2048), (128, 1024), (256, 512))
SWEEP = [
    {"block_n": bn, "num_warps": w, "num_stages": s}
    for bn in (16, 32, 64, 128)
    for w in (2, 4, 8)
    for s in (1, 2, 3)
] + [{"num_splits": n} for n in (1, 2, 4, 8, 16, 32)]


def _main(sweep: bool) -> None:
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {copy_bandwidth_gbs():.0f} GB/s (read + write)")
    print("Llama-3-8B attention (32 query heads, 8 KV heads, D 128), bf16, block 16; one layer")
    for batch, ctx in SHAPES:
        print(time_paged_attention(batch, ctx))
        if sweep:
            best = min(
                (time_paged_attention(batch, ctx, baseline=False, **cfg) for cfg in SWEEP),
                key=lambda r: r["kernel_us"],
            )
            print("  best config:", best)


if __name__ == "__main__":
    _main("--sweep" in sys.argv)
