"""The fused elementwise kernels on CUDA (bf16, fp16, fp32) against their torch references; graphs, host syncs, timings."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

# The cases and their checker are shared with the interpreter tests (tests/unit/test_fused_ops.py).
_spec = importlib.util.spec_from_file_location(
    "fused_op_cases", Path(__file__).resolve().parents[1] / "unit" / "test_fused_ops.py"
)
cases = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cases  # dataclasses look their module up there
_spec.loader.exec_module(cases)
Case = cases.Case

# Real sizes: Llama 3.2 1B (hidden 2048, I 8192, 32/8 heads of 64), Llama 3 8B (4096, 14336, 32/8 of 128),
# 70B-like heads (64/8 of 128: several head blocks per token), decode (T 1, 64) and prefill (T 333).
GPU_CASES = tuple(
    [Case(f"gpu_norm_t{t}_h{h}", "rms_norm", t, n=h) for t in (1, 64, 333) for h in (2048, 4096)]
    + [Case("gpu_norm_t64_h8192_view", "rms_norm", 64, n=8192, view=True)]
    + [Case(f"gpu_add_norm_t{t}_h{h}", "fused_add_rms_norm", t, n=h) for t in (1, 64, 333) for h in (2048, 4096)]
    + [Case("gpu_add_norm_t333_h5120_view", "fused_add_rms_norm", 333, n=5120, view=True)]
    + [Case(f"gpu_silu_t{t}_i{i}", "silu_and_mul", t, n=i) for t in (1, 64, 333) for i in (8192, 14336)]
    + [Case("gpu_silu_t64_i11008_view", "silu_and_mul", 64, n=11008, view=True)]
    + [
        Case(f"gpu_rope_cache_t{t}_{h}x{kvh}x{d}", "rotary_embedding_and_cache", t, heads=h, kv_heads=kvh, head_dim=d,
             view=True)
        for t in (1, 64, 333)
        for h, kvh, d in ((32, 8, 64), (32, 8, 128), (64, 8, 128))
    ]
    + [Case("gpu_rope_t333_32x8x128", "rotary_embedding", 333, heads=32, kv_heads=8, head_dim=128, view=True)]
    + [Case(f"gpu_write_t{t}", "write_kv_cache", t, kv_heads=8, head_dim=128, view=True) for t in (1, 64, 333)]
)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _poison_allocator() -> None:
    """Fill the caching allocator's free blocks with NaN, so an output element the kernel never wrote shows
    up as NaN instead of passing on stale values."""
    junk = torch.full((64 << 20,), float("nan"), device="cuda")
    del junk


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", cases.CASES + GPU_CASES, ids=lambda c: c.name)
def test_kernels_match_reference(case: Case, dtype: str) -> None:
    for seed in (11, 12):  # twice: a second run over reused (poisoned) memory and warm kernels
        _poison_allocator()
        result = cases.run_case(case, DTYPES[dtype], "cuda", seed, cases.TOLERANCE[DTYPES[dtype]])
        cases.check(result)


def test_no_host_sync() -> None:
    """Every operator runs without a host synchronisation (what CUDA graphs and overlap need)."""
    for op in cases.OPS:
        case = next(c for c in GPU_CASES if c.op == op)
        inp = cases.make_inputs(case, torch.bfloat16, "cuda", torch.Generator().manual_seed(1))
        cases.apply(case, inp, reference=False)  # compile first
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            cases.apply(case, inp, reference=False, copy=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_decoder_layer_ops_in_a_cuda_graph() -> None:
    """add + norm, rotary + KV write and SiLU-and-mul captured once, replayed over new inputs: the outputs
    and the cache follow the inputs as the eager references do."""
    from loraledger.kernels import fused_ops as ops

    t, hidden, heads, kv_heads, d, inter, num_slots = 64, 2048, 32, 8, 64, 8192, 512
    dt = torch.bfloat16
    weight = torch.rand(hidden, device="cuda", dtype=dt) + 0.5
    static = {
        "x": torch.empty(t, hidden, device="cuda", dtype=dt),
        "residual": torch.empty(t, hidden, device="cuda", dtype=dt),
        "qkv": torch.empty(t, (heads + 2 * kv_heads) * d, device="cuda", dtype=dt),
        "cos": torch.empty(t, d, device="cuda", dtype=dt),
        "sin": torch.empty(t, d, device="cuda", dtype=dt),
        "gate_up": torch.empty(t, 2 * inter, device="cuda", dtype=dt),
        "slots": torch.empty(t, device="cuda", dtype=torch.int64),
    }
    k_cache = torch.zeros(num_slots, kv_heads, d, device="cuda", dtype=dt)
    v_cache = torch.zeros_like(k_cache)

    def layer():
        qk = static["qkv"][:, : (heads + kv_heads) * d].view(t, heads + kv_heads, d)
        v = static["qkv"][:, (heads + kv_heads) * d :].view(t, kv_heads, d)
        ops.fused_add_rms_norm(static["x"], static["residual"], weight, 1e-5)
        ops.rotary_embedding_and_cache(qk, v, static["cos"], static["sin"], k_cache, v_cache, static["slots"])
        return ops.silu_and_mul(static["gate_up"])

    def fill(seed: int) -> dict:
        gen = torch.Generator(device="cuda").manual_seed(seed)
        fresh = {}
        for name, buf in static.items():
            if name == "slots":
                fresh[name] = torch.randperm(num_slots, device="cuda", generator=gen)[:t]
            elif name in ("cos", "sin"):
                half = torch.rand(t, d // 2, device="cuda", generator=gen) * 2 - 1
                fresh[name] = torch.cat((half, half), dim=-1).to(dt)
            else:
                fresh[name] = torch.randn(buf.shape, device="cuda", generator=gen).to(dt)
            buf.copy_(fresh[name])
        return fresh

    fill(0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        layer()  # warm-up: Triton compiles outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = layer()
    for seed in (1, 2):
        inp = fill(seed)
        graph.replay()
        torch.cuda.synchronize()
        want_x, want_res = ops.fused_add_rms_norm_ref(inp["x"], inp["residual"], weight, 1e-5)
        qk_in = inp["qkv"][:, : (heads + kv_heads) * d].view(t, heads + kv_heads, d)
        want_qk = ops.rope_ref(qk_in, inp["cos"], inp["sin"])
        atol, rtol = cases.TOLERANCE[dt]
        torch.testing.assert_close(static["x"], want_x, atol=atol, rtol=rtol)
        torch.testing.assert_close(static["residual"], want_res, atol=atol, rtol=rtol)
        torch.testing.assert_close(out, ops.silu_and_mul_ref(inp["gate_up"]), atol=atol, rtol=rtol)
        torch.testing.assert_close(k_cache[inp["slots"]], want_qk[:, heads:], atol=atol, rtol=rtol)
        v_in = inp["qkv"][:, (heads + kv_heads) * d :].view(t, kv_heads, d)
        torch.testing.assert_close(v_cache[inp["slots"]], v_in, atol=0, rtol=0)


def _time_us(fn, iters: int = 200) -> float:
    for _ in range(10):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / iters


def test_timings_against_torch() -> None:
    """Eager time per call, kernel vs its torch reference, at Llama 3.2 1B sizes in bf16 (run with -s to see
    the table). Host launch cost included: that is what an eager step pays. Asserts nothing about speed."""
    rows = []
    for t in (64, 333):
        for case in (
            Case(f"norm_t{t}", "rms_norm", t, n=2048),
            Case(f"add_norm_t{t}", "fused_add_rms_norm", t, n=2048),
            Case(f"silu_t{t}", "silu_and_mul", t, n=8192),
            Case(f"rope_t{t}", "rotary_embedding", t, heads=32, kv_heads=8, head_dim=64, view=True),
            Case(f"rope_cache_t{t}", "rotary_embedding_and_cache", t, heads=32, kv_heads=8, head_dim=64, view=True),
            Case(f"write_t{t}", "write_kv_cache", t, kv_heads=8, head_dim=64, view=True),
        ):
            inp = cases.make_inputs(case, torch.bfloat16, "cuda", torch.Generator().manual_seed(0))
            kernel = _time_us(lambda case=case, inp=inp: cases.apply(case, inp, reference=False, copy=False))
            torch_ref = _time_us(lambda case=case, inp=inp: cases.apply(case, inp, reference=True, copy=False))
            rows.append(f"{case.name:20s} kernel {kernel:8.1f} us   torch {torch_ref:8.1f} us")
    print("\n" + "\n".join(rows))
