"""The Triton SGMV kernels on CUDA (bf16, fp16, fp32) against the float64 reference; graphs and host syncs."""

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

# The cases and their checker are shared with the interpreter tests (tests/unit/test_kernels_interpret.py).
_spec = importlib.util.spec_from_file_location(
    "kernel_cases", Path(__file__).resolve().parents[1] / "unit" / "test_kernels_interpret.py"
)
cases = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cases  # dataclasses look their module up there
_spec.loader.exec_module(cases)
Case = cases.Case

# Shapes that reach every bucket of the block-size table (T <= 64, <= 256, <= 1024, larger).
GPU_CASES = (
    Case("gpu_t1", 1, 4096, (4096,), 4, 64, "random"),
    Case("gpu_decode_distinct", 200, 4096, (1024,), 256, 16, "distinct"),
    Case("gpu_decode_mixed", 1000, 1000, (3000,), 40, 64, "random"),
    Case("gpu_down", 65, 14336, (4096,), 8, 16, "random"),
    Case("gpu_qkv", 64, 4096, (4096, 1024, 1024), 16, 16, "random", meta=True),
    Case("gpu_gate_up_view", 300, 1024, (2000, 2000), 8, 8, "two", y_view=True),
    Case("gpu_prefill_shared", 1500, 2048, (1000,), 5, 16, "shared"),
    Case("gpu_prefill_mixed", 2100, 1000, (1000,), 12, 32, "random"),
    Case("gpu_down_56_splits", 40, 14336, (4096,), 8, 16, "random", k_chunk=256, max_splits=64),
    Case("gpu_qkv_56_splits", 33, 14336, (1024, 256, 256), 6, 64, "random", k_chunk=256, max_splits=64),
    Case("gpu_down_few_tiles", 16, 14336, (4096,), 4, 16, "shared", hint=True),  # the table's 28 chunks
    # Distinct adapters past 256 tokens: the rule's second gather bucket (qkv under GQA).
    Case("gpu_qkv_distinct_700", 700, 4096, (4096, 1024, 1024), 720, 16, "distinct", hint=True),
)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _poison_allocator() -> None:
    """Fill the caching allocator's free blocks with NaN, so a kernel reading workspace it never wrote
    (or an unwritten output) shows up as NaN instead of passing on stale zeros."""
    junk = torch.full((64 << 20,), float("nan"), device="cuda")
    del junk


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", cases.PATHS)
@pytest.mark.parametrize("case", cases.CASES + GPU_CASES, ids=lambda c: c.name)
def test_kernels_match_float64_reference(case: Case, path: str, dtype: str) -> None:
    for seed in (11, 12):  # twice: a second run over reused (poisoned) memory and warm kernels
        _poison_allocator()
        result = cases.run_case(case, DTYPES[dtype], "cuda", seed, path)
        cases.check(result, DTYPES[dtype])


def _forced(path: str):
    """lora_apply_fused's signature on one forced path: "one" (whole-K) launch, "two", "coop" or "gather"
    (which takes no metadata)."""
    from loraledger.kernels.sgmv import sgmv, sgmv_cooperative, sgmv_gathered, sgmv_one_launch

    if path == "gather":

        def gathered(y, x, lora_a, lora_b, ranks, scales, token_slots, *, meta=None):
            return sgmv_gathered(y, x, tuple(lora_a), tuple(lora_b), ranks, scales, token_slots)

        return gathered
    run = {"one": sgmv_one_launch, "two": sgmv, "coop": sgmv_cooperative}[path]

    def apply(y, x, lora_a, lora_b, ranks, scales, token_slots, *, meta=None):
        return run(y, x, tuple(lora_a), tuple(lora_b), ranks, scales, token_slots, meta)

    return apply


@pytest.mark.parametrize("path", ["one", "two", "coop", "gather"])
def test_no_host_synchronisation_on_each_path(path: str) -> None:
    """Each path, with the metadata built with and without the adapters hint, never waits for the device."""
    from loraledger.kernels import LoraMeta

    apply = _forced(path)
    gen = torch.Generator().manual_seed(7)
    inp = cases.make_inputs(Case("sync", 40, 1024, (512, 128, 128), 10, 16, "random"), torch.bfloat16, "cuda", gen)
    meta = LoraMeta(64, "cuda")
    args = (inp["x"], inp["lora_a"], inp["lora_b"], inp["ranks"], inp["scales"], inp["token_slots"])

    def step() -> None:
        meta.build(inp["token_slots"], num_adapters=10)
        apply(inp["y"], *args, meta=meta)
        meta.build(inp["token_slots"])
        apply(inp["y"], *args, meta=meta)
        apply(inp["y"], *args)

    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_no_host_synchronisation() -> None:
    """Building the metadata and applying LoRA must never wait for the device (CUDA-graph safe)."""
    from loraledger.kernels import LoraMeta, lora_apply, lora_apply_fused

    gen = torch.Generator().manual_seed(5)
    inp = cases.make_inputs(Case("sync", 48, 512, (256, 64, 64), 10, 16, "random"), torch.bfloat16, "cuda", gen)
    meta = LoraMeta(64, "cuda")
    args = (inp["x"], inp["lora_a"], inp["lora_b"], inp["ranks"], inp["scales"], inp["token_slots"])

    def step() -> None:
        meta.build(inp["token_slots"])
        lora_apply_fused(inp["y"], *args, meta=meta)
        x, a, b, ranks, scales, slots = args
        lora_apply(inp["y"][:, :256], x, a[0], b[0], ranks[0], scales, slots, meta=meta)
        lora_apply(inp["y"][:, :256], x, a[0], b[0], ranks[0], scales, slots)  # builds its own meta

    step()  # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.parametrize("path", ["auto", "one", "two", "coop", "gather"])
def test_cuda_graph_replays_with_new_batches(path: str) -> None:
    """The engine's pattern: capture meta.build + the projections once, then per step copy new token
    slots and activations into the static buffers and replay. Many steps and replays: the cooperative
    kernel's grid barrier must advance by exactly one span per replay."""
    from loraledger.kernels import LoraMeta, lora_apply_fused, lora_apply_fused_ref
    from loraledger.kernels.sgmv_coop import BARRIER_SPAN

    if path != "auto":
        lora_apply_fused = _forced(path)
    case = Case("graph", 64, 1024, (1024, 256, 256), 12, 16, "random")
    gen = torch.Generator().manual_seed(6)
    static = cases.make_inputs(case, torch.bfloat16, "cuda", gen)
    meta = LoraMeta(64, "cuda")
    args = ("x", "lora_a", "lora_b", "ranks", "scales", "token_slots")

    def step() -> None:
        meta.build(static["token_slots"])
        lora_apply_fused(static["y"], *(static[k] for k in args), meta=meta)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm up (compiles) outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    for step_seed in range(12):
        fresh = cases.make_inputs(case, torch.bfloat16, "cuda", torch.Generator().manual_seed(100 + step_seed))
        for k in ("x", "token_slots", "y"):
            static[k].copy_(fresh[k])
        y0 = static["y"].double().cpu()
        graph.replay()
        torch.cuda.synchronize()
        ref = y0.clone()
        lora_apply_fused_ref(
            ref,
            static["x"].double().cpu(),
            tuple(t.double().cpu() for t in static["lora_a"]),
            tuple(t.double().cpu() for t in static["lora_b"]),
            static["ranks"].cpu(),
            static["scales"].double().cpu(),
            static["token_slots"].cpu(),
        )
        err = (static["y"].double().cpu() - ref).norm() / (ref - y0).norm()
        assert err < cases.TOLERANCE[torch.bfloat16], (step_seed, float(err))
    launches = meta.barrier.item()
    for _ in range(200):
        graph.replay()
    torch.cuda.synchronize()
    if path == "coop":  # one span per launch: the graph holds one launch
        assert meta.barrier.item() - launches == 200 * BARRIER_SPAN


@pytest.mark.parametrize("dtype", DTYPES)
def test_cooperative_launches_of_different_shapes_share_one_barrier(dtype: str) -> None:
    """qkv, then down (K = 14336 in 56 splits) and a rank-64 qkv, back to back on one LoraMeta over
    new batches: right results, the barrier's counter one span further per launch."""
    shapes = (
        Case("coop_qkv", 64, 4096, (4096, 1024, 1024), 16, 16, "random"),
        Case("coop_down", 64, 14336, (4096,), 16, 16, "random", k_chunk=256, max_splits=64),
        Case("coop_qkv_r64", 64, 1024, (512, 128, 128), 16, 64, "random"),
    )
    _poison_allocator()
    result = cases.run_shared_meta(shapes, DTYPES[dtype], "cuda", seed=21, steps=4)
    assert result["barrier_launches"] == result["launches"], result
    assert result["err"] <= cases.TOLERANCE[DTYPES[dtype]], result


def test_every_table_config_runs_two_launches_without_pdl() -> None:
    """The PDL flag off (other GPUs' table) gives the same results as on."""
    from loraledger.kernels.configs import sgmv_config
    from loraledger.kernels.sgmv import sgmv

    case = Case("nopdl", 300, 2048, (1024,), 20, 16, "random")
    for t in (1, 64, 256, 1024, 2048):
        case = dataclasses.replace(case, t=t)
        inp = cases.make_inputs(case, torch.bfloat16, "cuda", torch.Generator().manual_seed(t))
        y_pdl = inp["y"].clone()
        cfg = sgmv_config(t, inp["x"].device)
        names = ("x", "lora_a", "lora_b", "ranks", "scales", "token_slots")
        sgmv(y_pdl, *(inp[k] for k in names), cfg=dataclasses.replace(cfg, pdl=True))
        sgmv(inp["y"], *(inp[k] for k in names), cfg=dataclasses.replace(cfg, pdl=False))
        torch.testing.assert_close(y_pdl, inp["y"], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_variants_agree_and_match_the_reference(dtype: str) -> None:
    """The token-gather pair over its launch parameters (tokens per program, K chunks, column blocks, PDL on
    and off) on qkv under GQA and a long-K down: every variant within tolerance of float64, and the PDL
    flag changes no bit."""
    from loraledger.kernels.configs import GatherConfig
    from loraledger.kernels.sgmv import sgmv_gathered

    def cfg(st: int, kc: int, bk: int, sw: int, et: int, bn: int, ew: int) -> GatherConfig:
        return GatherConfig(max_tokens=64, min_adapter_share=0.5, shrink_tokens=st, k_chunk=kc, block_k=bk,
                            shrink_warps=sw, expand_tokens=et, block_n=bn, expand_warps=ew, pdl=True)

    variants = [cfg(1, 512, 256, 4, 1, 256, 4), cfg(2, 1024, 256, 8, 2, 512, 8), cfg(4, 256, 128, 4, 4, 128, 4),
                cfg(1, 512, 128, 2, 1, 1024, 8), cfg(1, 1024, 256, 4, 1, 512, 4)]
    shapes = (
        Case("gather_qkv", 61, 4096, (4096, 1024, 1024), 40, 16, "random"),
        Case("gather_down", 37, 14336, (4096,), 40, 8, "distinct"),
        Case("gather_odd", 13, 1000, (300, 77), 9, 24, "random"),
    )
    names = ("x", "lora_a", "lora_b", "ranks", "scales", "token_slots")
    for case in shapes:
        inp = cases.make_inputs(case, DTYPES[dtype], "cuda", torch.Generator().manual_seed(len(case.name)))
        y0 = inp["y"].clone()
        ref = y0.double().cpu()
        from loraledger.kernels import lora_apply_fused_ref

        lora_apply_fused_ref(ref, inp["x"].double().cpu(), tuple(a.double().cpu() for a in inp["lora_a"]),
                             tuple(b.double().cpu() for b in inp["lora_b"]), inp["ranks"].cpu(),
                             inp["scales"].double().cpu(), inp["token_slots"].cpu())
        for variant in variants:
            outs = []
            for pdl in (True, False):
                _poison_allocator()
                y = y0.clone()
                sgmv_gathered(y, *(inp[k] for k in names), cfg=dataclasses.replace(variant, pdl=pdl))
                outs.append(y)
            torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
            err = ((outs[0].double().cpu() - ref).norm() / (ref - y0.double().cpu()).norm()).item()
            assert err <= cases.TOLERANCE[DTYPES[dtype]], (case.name, variant, err)
