"""The Triton SGMV kernels on CPU through Triton's interpreter, against the float64 torch reference.

TRITON_INTERPRET=1 must be set before Triton defines the kernels and would leak into every other test
of the session, so the cases run in one child process (this file run as a script) and each test reads
its case's result. tests/gpu/test_kernels_gpu.py imports the case helpers from here and runs them on CUDA.

Every case runs on each path: "auto" (the public operator, which picks one), "one" (the one-launch
whole-K kernel, kernels/sgmv_fused.py), "two" (split-K shrink, then expand), "coop" (the same split-K
in one cooperative launch, kernels/sgmv_coop.py; one program under the interpreter) and "gather" (the
token-gather pair, kernels/sgmv_gather.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch

# ‖out − ref‖ / ‖ref − y0‖ (relative to the LoRA delta): fp32 dots are full precision (no tf32); fp16
# and bf16 cast the rank-r intermediate to the input dtype and round y to it.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2.5e-2}


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    t: int  # tokens
    k: int  # input features
    widths: tuple[int, ...]  # one slice: lora_apply; more: lora_apply_fused
    slots: int  # S, the pool's slots
    max_rank: int  # R, the pool's padded rank
    mix: str  # random | distinct | shared | none | two (two slots used, the rest unused)
    y_view: bool = False  # y is a column view of a wider tensor
    meta: bool = False  # pass a prebuilt LoraMeta (buffers poisoned before its build)
    block_t: int | None = None  # override the config table: tokens per tile
    k_chunk: int | None = None  # override: K per split
    max_splits: int | None = None  # override: most K splits
    hint: bool = False  # build the LoraMeta with num_adapters = the batch's distinct slots (implies meta)


CASES = (
    Case("t1", 1, 96, (80,), 3, 16, "random"),
    Case("mixed", 37, 200, (150,), 5, 24, "random"),
    Case("distinct", 45, 136, (72,), 64, 16, "distinct"),
    Case("shared", 45, 136, (72,), 7, 16, "shared"),
    Case("no_adapter", 19, 64, (48,), 4, 16, "none"),
    Case("unused_slots", 41, 160, (56,), 9, 32, "two"),
    Case("rank_pad64", 23, 128, (64,), 6, 64, "random"),
    Case("rank_pad8", 23, 128, (64,), 6, 8, "random"),
    Case("y_view", 29, 112, (40,), 5, 16, "random", y_view=True),
    Case("meta", 29, 112, (40,), 5, 16, "random", meta=True),
    Case("qkv", 33, 96, (48, 16, 16), 6, 16, "random", meta=True),
    Case("gate_up", 27, 80, (36, 36), 4, 16, "random", y_view=True),
    Case("tile64_nosplit", 70, 100, (90,), 3, 16, "random", block_t=64, k_chunk=1 << 20),
    Case("tile16_even_k", 52, 128, (64, 32), 3, 16, "two", block_t=16, k_chunk=64),
    # For the one-launch kernel: several column groups per slice with ragged ends, K not a multiple of
    # its K step, a tight grid from the adapters hint, one token, one shared adapter over many tiles.
    Case("t1_odd", 1, 200, (100,), 2, 16, "random", hint=True),
    Case("ragged_groups", 21, 72, (130, 70, 70), 7, 32, "random", hint=True),
    Case("hint_distinct", 24, 96, (72,), 40, 16, "distinct", hint=True),
    Case("hint_distinct_12", 12, 96, (40, 24), 20, 16, "distinct", hint=True),  # the second gather bucket, by the rule
    Case("hint_shared", 50, 96, (40, 40), 6, 8, "shared", hint=True),
    Case("hint_none", 13, 64, (24,), 3, 16, "none", hint=True),
    # More than 16 K splits (35, summed by the expands in unrolled groups of 16, the last one ragged).
    Case("many_splits", 21, 1100, (40, 24), 5, 16, "random", k_chunk=32, max_splits=64),
    # One adapter, one tile: the table's few-tiles rule cuts K into 25 chunks instead of 13.
    Case("few_tiles_long_k", 9, 1600, (40,), 3, 16, "shared", hint=True),
)
PATHS = ("auto", "one", "two", "coop", "gather")


def make_inputs(
    case: Case, dtype: torch.dtype, device: str, gen: torch.Generator, slots: torch.Tensor | None = None
) -> dict:
    """Fresh random inputs (never zeros) on device: x, y (a view when asked), slices, ranks, scales, slots
    (case.mix's, or the given [T] slots)."""
    t, k, s, r, n = case.t, case.k, case.slots, case.max_rank, len(case.widths)

    def randn(*shape: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * std

    x = randn(t, k)
    lora_a = [randn(s, r, k, std=k**-0.5) for _ in case.widths]
    lora_b = [randn(s, w, r, std=r**-0.5) for w in case.widths]
    ranks = torch.randint(1, r + 1, (n, s), generator=gen)
    ranks[torch.rand(n, s, generator=gen) < 0.2] = 0
    ranks[:, torch.randint(0, s, (1,), generator=gen)] = r
    scales = torch.rand(s, generator=gen, dtype=torch.float32) * 1.5 + 0.5
    if slots is not None:
        slots = slots.cpu().long()
    elif case.mix == "random":
        slots = torch.randint(-1, s, (t,), generator=gen)
    elif case.mix == "distinct":
        slots = torch.randperm(s, generator=gen)[:t]
    elif case.mix == "shared":
        slots = torch.full((t,), int(torch.randint(0, s, (1,), generator=gen)))
        ranks[:, slots[0]] = torch.randint(1, r + 1, (n,), generator=gen)
    elif case.mix == "none":
        slots = torch.full((t,), -1)
    elif case.mix == "two":
        pick = torch.randperm(s, generator=gen)[:2]
        slots = torch.where(torch.rand(t, generator=gen) < 0.15, -1, pick[torch.randint(0, 2, (t,), generator=gen)])
        ranks[:, pick] = torch.randint(1, r + 1, (n, 2), generator=gen)
    else:
        raise ValueError(case.mix)
    # What the kernels must never read is NaN: rows and columns past each slot's rank, unused slots.
    used = torch.zeros(s, dtype=torch.bool)
    used[slots[slots >= 0]] = True
    for i in range(n):
        for slot in range(s):
            rank = int(ranks[i, slot]) if used[slot] else 0
            lora_a[i][slot, rank:] = math.nan
            lora_b[i][slot, :, rank:] = math.nan
    lora_a = tuple(a.to(dtype).to(device) for a in lora_a)
    lora_b = tuple(b.to(dtype).to(device) for b in lora_b)
    x = x.to(dtype).to(device)
    width = sum(case.widths)
    pad = 7 if case.y_view else 0
    y_full = randn(t, width + 2 * pad).to(dtype).to(device)
    return {
        "x": x,
        "y_full": y_full,
        "y": y_full[:, pad : pad + width],
        "lora_a": lora_a,
        "lora_b": lora_b,
        "ranks": ranks.to(torch.int32).to(device),
        "scales": scales.to(device),
        "token_slots": slots.to(torch.int32).to(device),
    }


def apply_case(case: Case, inp: dict, path: str = "auto") -> None:
    """Run the public operator ("auto"), or force the whole-K launch ("one"), split-K in two ("two") or in
    one cooperative launch ("coop"), or the token-gather pair ("gather"), on inp in place."""
    from loraledger.kernels import LoraMeta, lora_apply, lora_apply_fused
    from loraledger.kernels.sgmv import sgmv, sgmv_cooperative, sgmv_gathered, sgmv_one_launch

    args = (inp["y"], inp["x"], inp["lora_a"], inp["lora_b"], inp["ranks"], inp["scales"], inp["token_slots"])
    meta = None
    if case.meta or case.hint or case.block_t is not None:
        meta = LoraMeta(case.t + 5, inp["x"].device)
        for buf in (meta.token_order, meta.tile_slot, meta.tile_start, meta.tile_end, meta.num_tiles):
            buf.fill_(12345)
        slots = inp["token_slots"].cpu()
        hint = len(set(slots[slots >= 0].tolist())) if case.hint else None
        meta.build(inp["token_slots"], case.block_t, num_adapters=hint)
    if path == "gather":  # no metadata: token_slots alone
        sgmv_gathered(*args)
        return
    if (case.block_t is not None or case.max_splits is not None) and path != "one":
        from loraledger.kernels.configs import sgmv_config

        table = sgmv_config(case.t, inp["x"].device)
        cfg = dataclasses.replace(table, block_t=case.block_t or table.block_t, k_chunk=case.k_chunk or table.k_chunk,
                                  max_splits=case.max_splits or table.max_splits)
        (sgmv_cooperative if path == "coop" else sgmv)(*args, meta, cfg)
        return
    if path == "one":
        sgmv_one_launch(*args, meta)
        return
    if path == "two":
        sgmv(*args, meta)
        return
    if path == "coop":
        sgmv_cooperative(*args, meta)
        return
    if len(case.widths) == 1:
        y, x, a, b, ranks, scales, slots = args
        lora_apply(y, x, a[0], b[0], ranks[0], scales, slots, meta=meta)
    else:
        lora_apply_fused(*args, meta=meta)


def run_case(case: Case, dtype: torch.dtype, device: str, seed: int, path: str = "auto") -> dict:
    """Run one case on one path; returns the relative error against float64 and whether untouched elements stayed."""
    from loraledger.kernels import lora_apply_fused_ref

    gen = torch.Generator().manual_seed(seed)
    inp = make_inputs(case, dtype, device, gen)
    y0_full = inp["y_full"].clone()
    ref_full = y0_full.double().cpu()
    pad = (y0_full.shape[1] - sum(case.widths)) // 2
    ref = ref_full[:, pad : pad + sum(case.widths)]
    as64 = lambda ts: tuple(t.double().cpu() for t in ts)  # noqa: E731
    lora_apply_fused_ref(
        ref,
        inp["x"].double().cpu(),
        as64(inp["lora_a"]),
        as64(inp["lora_b"]),
        inp["ranks"].cpu(),
        inp["scales"].double().cpu(),
        inp["token_slots"].cpu(),
    )
    apply_case(case, inp, path)
    out_full = inp["y_full"].double().cpu()

    # Elements no adapter touches (slot -1, rank 0 in that slice, columns outside the view) keep their bits.
    slots, ranks = inp["token_slots"].long().cpu(), inp["ranks"].long().cpu()
    touched = torch.zeros(out_full.shape, dtype=torch.bool)
    col = pad
    for i, w in enumerate(case.widths):
        r = torch.where(slots >= 0, ranks[i][slots.clamp(min=0)], 0)
        touched[:, col : col + w] = (r > 0)[:, None]
        col += w
    untouched_ok = bool(torch.equal(inp["y_full"].cpu()[~touched], y0_full.cpu()[~touched]))
    delta = (ref_full - y0_full.double().cpu()).norm().item()
    diff = (out_full - ref_full).norm().item()
    return {
        "err": diff / delta if delta > 0 else diff,
        "finite": bool(torch.isfinite(out_full).all()),
        "untouched_ok": untouched_ok,
        "touched": int(touched.sum()),
    }


SHARED_META_CASES = (
    Case("coop_qkv", 30, 96, (48, 16, 16), 6, 16, "random"),
    Case("coop_wide", 30, 200, (72,), 6, 32, "random"),
)


def run_shared_meta(cases: tuple[Case, ...], dtype: torch.dtype, device: str, seed: int, steps: int = 3) -> dict:
    """Cooperative launches of different shapes back to back on one LoraMeta (one grid barrier), over
    several steps with new batches: the worst relative error, and the barrier's counter at the end in
    launches (each adds BARRIER_SPAN)."""
    from loraledger.kernels import LoraMeta, lora_apply_fused_ref
    from loraledger.kernels.sgmv import sgmv_cooperative
    from loraledger.kernels.sgmv_coop import BARRIER_SPAN

    t = cases[0].t
    gen = torch.Generator().manual_seed(seed)
    meta = LoraMeta(t, device)
    worst = 0.0
    for _ in range(steps):
        slots = torch.randint(-1, min(c.slots for c in cases), (t,), generator=gen)
        meta.build(slots.to(torch.int32).to(device))
        inputs = [make_inputs(c, dtype, device, gen, slots) for c in cases]
        refs = []
        for inp in inputs:
            ref = inp["y"].double().cpu()
            lora_apply_fused_ref(ref, inp["x"].double().cpu(), tuple(a.double().cpu() for a in inp["lora_a"]),
                                 tuple(b.double().cpu() for b in inp["lora_b"]), inp["ranks"].cpu(),
                                 inp["scales"].double().cpu(), inp["token_slots"].cpu())
            refs.append((ref, inp["y"].double().cpu()))
        for inp in inputs:  # launched back to back, then checked
            sgmv_cooperative(inp["y"], inp["x"], inp["lora_a"], inp["lora_b"], inp["ranks"], inp["scales"],
                             inp["token_slots"], meta)
        for inp, (ref, y0) in zip(inputs, refs, strict=True):
            worst = max(worst, ((inp["y"].double().cpu() - ref).norm() / (ref - y0).norm()).item())
    return {"err": worst, "barrier_launches": meta.barrier.item() / BARRIER_SPAN, "launches": steps * len(cases)}


def check(result: dict, dtype: torch.dtype) -> None:
    assert result["finite"], result
    assert result["untouched_ok"], result
    assert result["err"] <= TOLERANCE[dtype], result


INTERPRETER_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}  # the interpreter's bf16 dot is wrong


def _run_all_interpreted() -> dict:
    """The child process: every case on every path in every interpreter dtype, fresh seeds, results as JSON."""
    seed = int.from_bytes(os.urandom(4), "little")
    out = {"seed": seed}
    for i, case in enumerate(CASES):
        for path in PATHS:
            for name, dtype in INTERPRETER_DTYPES.items():
                out[f"{case.name}-{path}-{name}"] = run_case(case, dtype, "cpu", seed + i, path)
    for name, dtype in INTERPRETER_DTYPES.items():
        out[f"shared_meta-{name}"] = run_shared_meta(SHARED_META_CASES, dtype, "cpu", seed)
    return out


@pytest.fixture(scope="module")
def interpreted() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=540, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("dtype", INTERPRETER_DTYPES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_interpreted_kernels_match_float64_reference(interpreted: dict, case: Case, path: str, dtype: str) -> None:
    result = interpreted[f"{case.name}-{path}-{dtype}"]
    check(result, INTERPRETER_DTYPES[dtype])
    assert math.isfinite(result["err"]), f"seed {interpreted['seed']}"


@pytest.mark.parametrize("dtype", INTERPRETER_DTYPES)
def test_interpreted_cooperative_launches_share_one_barrier(interpreted: dict, dtype: str) -> None:
    """Back-to-back cooperative launches of different shapes on one LoraMeta, three steps: right results,
    and the barrier's counter advanced by exactly one span per launch (what the next launch, or graph
    replay, counts from)."""
    result = interpreted[f"shared_meta-{dtype}"]
    assert result["barrier_launches"] == result["launches"], result
    assert result["err"] <= TOLERANCE[INTERPRETER_DTYPES[dtype]], f"{result}, seed {interpreted['seed']}"


if __name__ == "__main__":
    from loraledger.kernels import _triton_interpreting

    if not _triton_interpreting():
        raise SystemExit("run with TRITON_INTERPRET=1")
    print(json.dumps(_run_all_interpreted()))
