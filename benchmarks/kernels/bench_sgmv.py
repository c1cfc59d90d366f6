"""SGMV kernels vs torch baselines, the memory floor and the base layer on Llama-3-8B shapes.

Every Triton path is timed side by side: split-K as two launches (shrink + expand, "two") and as one
cooperative launch (kernels/sgmv_coop.py, "coop") in every case, with K split in 28 and 56 chunks too
where K > 4096 ("split variants"); the whole-K one launch (kernels/sgmv_fused.py, "one"; with
--one-launch-sweep also a sweep of its block sizes up to T = 256) in every decode case up to T = 1024; the token-gather pair
(kernels/sgmv_gather.py, "gather") in every case up to its config's max_tokens. "ours" is the path the
dispatch picks for the case (kernels.configs.prefers_gather with the batch's adapter count, as the engine
passes it, then prefers_fused, then the table's `coop`; report.py applies the rule again, so a rule set from
these numbers reports the path it picks). Every time is the median of
CUDA-graph replays with L2 flushed before each, in microseconds; the metadata build is not timed (the
engine builds it once per step for all projections). With --compare NAME=DIR (a copy of another kernels/
package, e.g. an earlier commit's or an experiment's) every case is timed with that package's two launches
too ("NAME_us"), in the same run. Run on a GPU:

    python benchmarks/kernels/bench_sgmv.py --out results/            # everything
    python benchmarks/kernels/bench_sgmv.py --small-floor --out q/    # decode T <= 64 and T = 256 n <= 8 only
    python benchmarks/kernels/bench_sgmv.py --compile-only --shard 0/8 # warm Triton's cache in parallel
    python benchmarks/kernels/bench_sgmv.py --small-floor --compare prev=/tmp/prev/kernels --out ab/
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import triton
import triton.language as tl

from loraledger.kernels import LoraMeta
from loraledger.kernels.configs import (
    FusedConfig,
    SgmvConfig,
    fused_config,
    gather_config,
    prefers_fused,
    prefers_gather,
    sgmv_config,
)
from loraledger.kernels.sgmv import sgmv, sgmv_cooperative, sgmv_gathered, sgmv_one_launch

DTYPE = torch.bfloat16
DEVICE = torch.device("cuda")
SHAPES = {"qo": (4096, 4096), "kv": (4096, 1024), "up": (4096, 14336), "down": (14336, 4096)}  # name: (K, N)
RANKS = (8, 16, 64)
DECODE_T = (1, 16, 64, 256, 1024)
DECODE_N = (1, 8, 64)  # and T (all distinct)
SKEWED_N = (8, 64)  # Punica's Skewed mix: n adapters with Zipf(1.5) shares of the batch
PREFILL = ((128, 8), (128, 32), (512, 8))  # T=4096 in segments of 128 or 512 tokens over n adapters
MIXED_DECODES = 64  # decode tokens of a "mixed" case (the rest are prefill segments)

# ../shared/DESIGN.md "Kernels to beat": rank 16, bf16, K=4096, H100 80GB HBM3, 2026-11-22.
# (kind, T, n) -> {N: (floor_us, best_anchor_us, base_us)}
ANCHORS = {
    ("decode", 64, 1): {4096: (0.6, 14.1, 22.4), 14336: (1.6, 15.4, 55.7)},
    ("decode", 64, 8): {4096: (1.2, 16.1, 22.5), 14336: (3.0, 22.4, 55.4)},
    ("decode", 64, 64): {4096: (6.2, 29.0, 22.3), 14336: (14.2, 50.7, 55.7)},
    ("decode", 256, 8): {4096: (2.8, 25.3, 27.8), 14336: (7.3, 33.8, 60.0)},
    ("decode", 256, 256): {4096: (24.9, 66.2, 28.0), 14336: (56.8, 146.9, 59.3)},
    ("decode", 1024, 1): {4096: (8.6, 30.3, 47.6), 14336: (22.9, 48.4, 155.2)},
    ("decode", 1024, 64): {4096: (14.2, 65.4, 46.8), 14336: (35.5, 161.7, 163.7)},
    ("decode", 1024, 1024): {4096: (99.4, 220.7, 47.0), 14336: (227.3, 545.6, 164.0)},
    ("prefill128", 4096, 8): {4096: (34.8, 71.0, 183.4), 14336: (92.5, 160.1, 613.4)},
    ("prefill128", 4096, 32): {4096: (36.9, 77.9, 184.0), 14336: (97.3, 192.2, 687.3)},
}


@dataclasses.dataclass(frozen=True)
class Case:
    kind: str  # decode | skewed | prefill128 | prefill512 | mixed
    shape: str
    rank: int
    t: int
    n: int  # distinct adapters in the batch

    @property
    def k(self) -> int:
        return SHAPES[self.shape][0]

    @property
    def width(self) -> int:
        return SHAPES[self.shape][1]

    @property
    def label(self) -> str:
        return f"{self.kind} T={self.t} n={self.n} {self.shape} r={self.rank}"


def grid_cases() -> list[Case]:
    cases = []
    for shape in SHAPES:
        for rank in RANKS:
            for t in DECODE_T:
                for n in sorted({n for n in DECODE_N if n <= t} | {t}):
                    cases.append(Case("decode", shape, rank, t, n))
                for n in (n for n in SKEWED_N if n < t):
                    cases.append(Case("skewed", shape, rank, t, n))
            for seg, n in PREFILL:
                cases.append(Case(f"prefill{seg}", shape, rank, 4096, n))
    return cases


def small_floor(case: Case) -> bool:
    """The decode cases whose memory floor is under 5 us (the <= 8 us goal's), where launches dominate."""
    return case.kind in ("decode", "skewed") and (case.t <= 64 or (case.t == 256 and case.n <= 8))


def anchor_cases() -> list[Case]:
    shape_of = {4096: "qo", 14336: "up"}
    return [Case(kind, shape_of[w], 16, t, n) for (kind, t, n), by_w in ANCHORS.items() for w in by_w]


def token_slots(case: Case, gen: torch.Generator) -> torch.Tensor:
    """Decode: T tokens spread uniformly over n adapters, in shuffled batch order (Punica's Identical for n = 1,
    Distinct for n = T, Uniform otherwise). Skewed (Punica's): adapter i's share of the T tokens is proportional
    to 1 / (i + 1)^1.5 (Zipf, alpha 1.5), every adapter at least one token, shuffled. Prefill: segments of seg
    tokens, segment i on adapter i mod n. Mixed (an engine step of decodes and prefill chunks): 64 decode tokens on
    adapters 0..63, then the rest in prefill segments of 256 tokens, segment i on adapter i mod n (n >= 64)."""
    if case.kind == "mixed":
        decodes = torch.arange(MIXED_DECODES)
        return torch.cat((decodes, (torch.arange(case.t - MIXED_DECODES) // 256) % case.n))
    if case.kind == "decode":
        slots = torch.arange(case.t) % case.n
        return slots[torch.randperm(case.t, generator=gen)]
    if case.kind == "skewed":
        weights = 1.0 / torch.arange(1, case.n + 1, dtype=torch.float64) ** 1.5
        counts = 1 + torch.floor((case.t - case.n) * weights / weights.sum()).long()
        counts[0] += case.t - int(counts.sum())
        slots = torch.repeat_interleave(torch.arange(case.n), counts)
        return slots[torch.randperm(case.t, generator=gen)]
    seg = int(case.kind.removeprefix("prefill"))
    return (torch.arange(case.t) // seg) % case.n


class Inputs:
    """A slot pool of n adapters at rank r (padded rank R = r), activations, and the base weight."""

    def __init__(self, case: Case, device: torch.device, seed: int = 0) -> None:
        gen = torch.Generator(device=device).manual_seed(seed)
        k, w, r, s = case.k, case.width, case.rank, case.n
        self.x = torch.randn(case.t, k, device=device, dtype=DTYPE, generator=gen)
        self.y = torch.randn(case.t, w, device=device, dtype=DTYPE, generator=gen)
        self.lora_a = (torch.randn(s, r, k, device=device, dtype=DTYPE, generator=gen) * k**-0.5).contiguous()
        self.lora_b = (torch.randn(s, w, r, device=device, dtype=DTYPE, generator=gen) * r**-0.5).contiguous()
        self.ranks = torch.full((s,), r, dtype=torch.int32, device=device)
        self.scales = torch.rand(s, device=device, dtype=torch.float32, generator=gen) + 0.5
        self.slots_cpu = token_slots(case, torch.Generator().manual_seed(seed))
        self.slots = self.slots_cpu.to(torch.int32).to(device)
        self.case = case

    def meta(self, block_t: int) -> LoraMeta:
        """The step's metadata, built with the batch's adapter count as the engine's hint."""
        return LoraMeta(self.case.t, self.x.device).build(self.slots, block_t=block_t, num_adapters=self.case.n)

    def ours(self, cfg: SgmvConfig) -> Callable[[], None]:
        """Two launches: split-K shrink, then expand."""
        meta = self.meta(cfg.block_t)
        ranks = self.ranks.unsqueeze(0)

        def run() -> None:
            sgmv(self.y, self.x, (self.lora_a,), (self.lora_b,), ranks, self.scales, self.slots, meta, cfg)

        return run

    def other(self, kernels) -> Callable[[], None]:
        """Another kernels package's two launches on its own table and metadata (see --compare)."""
        meta = kernels.LoraMeta(self.case.t, self.x.device).build(self.slots, num_adapters=self.case.n)
        ranks = self.ranks.unsqueeze(0)
        sgmv_other = kernels.sgmv.sgmv

        def run() -> None:
            sgmv_other(self.y, self.x, (self.lora_a,), (self.lora_b,), ranks, self.scales, self.slots, meta)

        return run

    def coop(self, cfg: SgmvConfig) -> Callable[[], None]:
        """The same split-K in one cooperative launch."""
        meta = self.meta(cfg.block_t)
        ranks = self.ranks.unsqueeze(0)

        def run() -> None:
            sgmv_cooperative(self.y, self.x, (self.lora_a,), (self.lora_b,), ranks, self.scales, self.slots, meta, cfg)

        return run

    def one(self, fcfg: FusedConfig) -> Callable[[], None]:
        """One launch (sgmv_fused), on the metadata's default tiles for T."""
        meta = self.meta(sgmv_config(self.case.t, self.x.device).block_t)
        ranks = self.ranks.unsqueeze(0)

        def run() -> None:
            sgmv_one_launch(self.y, self.x, (self.lora_a,), (self.lora_b,), ranks, self.scales, self.slots, meta, fcfg)

        return run

    def gather(self) -> Callable[[], None]:
        """The token-gather pair (kernels/sgmv_gather.py; no metadata)."""
        ranks = self.ranks.unsqueeze(0)

        def run() -> None:
            sgmv_gathered(self.y, self.x, (self.lora_a,), (self.lora_b,), ranks, self.scales, self.slots)

        return run

    def torch_loop(self) -> Callable[[], None]:
        """One gather, two matmuls and an index_add per adapter of the batch (groups known on the host)."""
        groups = []
        for s in torch.unique(self.slots_cpu).tolist():
            idx = (self.slots_cpu == s).nonzero(as_tuple=True)[0].to(self.x.device)
            groups.append((idx, self.lora_a[s], self.lora_b[s], float(self.scales[s])))

        def run() -> None:
            for idx, a, b, scale in groups:
                delta = (self.x.index_select(0, idx) @ a.T) @ b.T
                self.y.index_add_(0, idx, delta, alpha=scale)

        return run

    def torch_bmm(self) -> Callable[[], None]:
        """Gather each token's A and B, then two batched matmuls (every token, its own adapter copy)."""
        slots = self.slots.long()

        def run() -> None:
            a = self.lora_a.index_select(0, slots)  # [T, r, K]
            b = self.lora_b.index_select(0, slots)  # [T, N, r]
            h = torch.bmm(self.x.unsqueeze(1), a.transpose(1, 2))  # [T, 1, r]
            delta = torch.bmm(h, b.transpose(1, 2)).squeeze(1)  # [T, N]
            self.y.add_(delta * self.scales.index_select(0, slots)[:, None].to(DTYPE))

        return run

    def floor_bytes(self) -> int:
        c, e = self.case, self.x.element_size()
        return e * (c.t * c.k + c.n * c.rank * (c.k + c.width) + 2 * c.t * c.width)


class Timer:
    """Median of CUDA-graph replays, L2 flushed (a memset larger than L2) before each replay."""

    def __init__(self, reps: int) -> None:
        self.reps = reps
        self.spread: list[float] = []  # max / min of the two medians, per measurement
        self.flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")

    def __call__(self, fn: Callable[[], None]) -> float:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        graph.replay()
        medians = []
        for _ in range(2):  # two batches, the lower median: a transient slowdown of the machine shows as a gap
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(self.reps)]
            for start, end in events:
                self.flush.zero_()
                start.record()
                graph.replay()
                end.record()
            torch.cuda.synchronize()
            medians.append(statistics.median(s.elapsed_time(e) * 1000 for s, e in events))
        del graph
        self.spread.append(max(medians) / min(medians))
        return min(medians)


@triton.jit
def _chase_kernel(ptr, out_ptr, DEPTH: tl.constexpr):
    """DEPTH dependent loads from cold memory, then one store: the latency of a chain of misses."""
    v = tl.load(ptr)
    for _ in tl.static_range(DEPTH - 1):
        v = tl.load(ptr + v)
    tl.store(out_ptr, v)


def calibration(timer: Timer) -> dict:
    """What the method itself costs: a graph of one or two near-empty kernels, and chains of misses."""
    buf = torch.zeros(1 << 20, dtype=torch.int32, device="cuda")
    buf[0 : 1 << 16 : 4096] = torch.arange(1, 17, dtype=torch.int32, device="cuda") * 4096  # 16 KB hops
    out = torch.empty(1, dtype=torch.int32, device="cuda")
    res = {}
    for depth in (1, 2, 3, 4):
        res[f"chain{depth}_us"] = timer(lambda d=depth: _chase_kernel[(1,)](buf, out, DEPTH=d))
    res["two_kernels_us"] = timer(lambda: (_chase_kernel[(1,)](buf, out, DEPTH=1), _chase_kernel[(1,)](buf, out, DEPTH=1)))
    res["two_kernels_pdl_us"] = timer(
        lambda: (_chase_kernel[(1,)](buf, out, DEPTH=1), _chase_kernel[(1,)](buf, out, DEPTH=1, launch_pdl=True))
    )
    return res


def warm_up() -> None:
    """A second of matrix products, so clocks are up before anything is timed."""
    a = torch.randn(8192, 8192, device="cuda", dtype=DTYPE)
    end = time.time() + 1.0
    while time.time() < end:
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()


def copy_bandwidth(timer: Timer) -> float:
    """Device-to-device copy, bytes read plus written per second: the best of a few sizes."""
    best = 0.0
    for numel in (64 << 20, 256 << 20, 512 << 20):
        src = torch.randn(numel, device="cuda", dtype=DTYPE)
        dst = torch.empty_like(src)
        us = timer(lambda: dst.copy_(src))  # noqa: B023
        best = max(best, 2 * src.numel() * src.element_size() / (us * 1e-6))
        del src, dst
    return best


def check(inp: Inputs, run: Callable[[], None]) -> float:
    """Relative error of one application against the float64 reference (a sanity check per case)."""
    from loraledger.kernels import lora_apply_ref

    y0 = inp.y.clone()
    run()
    ref = lora_apply_ref(
        y0.double(), inp.x.double(), inp.lora_a.double(), inp.lora_b.double(), inp.ranks, inp.scales.double(), inp.slots
    )
    err = ((inp.y.double() - ref).norm() / (ref - y0.double()).norm()).item()
    inp.y.copy_(y0)
    return err


def fused_variants(device: torch.device) -> dict[str, FusedConfig]:
    """The table's one-launch config and neighbours: column-group width, K step, depth, warps."""
    base = fused_config(device)
    r = dataclasses.replace
    return {
        "table": base,
        "nb1": r(base, n_blocks=1),
        "nb2": r(base, n_blocks=2),
        "nb8": r(base, n_blocks=8),
        "w8": r(base, warps=8),
        "k512": r(base, block_k=512),
        "s5": r(base, stages=5),
    }


FUSED_MAX_T = 1024  # the one-launch path is timed up to this T (decode), its sweep up to SWEEP_MAX_T
SWEEP_MAX_T = 256
# K cut into chunks of 512 or 256 elements where K is large, whatever the table's split rules say.
SPLIT_VARIANTS = {
    "s28": {"k_chunk": 512, "max_splits": 64, "few_tiles_max_splits": 64},
    "s56": {"k_chunk": 256, "max_splits": 64, "few_tiles_max_splits": 64},
}


def split_variants(case: Case, cfg: SgmvConfig) -> dict[str, SgmvConfig]:
    """The split-K variants timed for this case (both split-K paths each): K > 4096 only."""
    if case.k <= 4096:
        return {}
    return {name: dataclasses.replace(cfg, **v) for name, v in SPLIT_VARIANTS.items()}


def rule_inputs(case: Case, device: torch.device) -> dict:
    """The host quantities kernels.configs.prefers_fused reads, as the dispatch sees them (hint = n)."""
    meta_bt = sgmv_config(case.t, device).block_t
    max_tiles = min(case.t, -(-case.t // meta_bt) + case.n - 1)
    return {"max_tiles": max_tiles, "block_t": meta_bt, "element_size": DTYPE.itemsize}


def picks_fused(row: dict, fcfg: FusedConfig) -> bool:
    return prefers_fused(fcfg, row["t"], row["max_tiles"], row["block_t"], (row["width"],), row["k"], row["rank"],
                         row["element_size"])


def goals(row: dict) -> dict:
    out = {}
    if row.get("anchor_us") is not None:
        out["beats_anchor"] = row["ours_us"] < row["anchor_us"]
    if row["floor_us"] >= 20:
        out["within_1.25x_floor"] = row["ours_us"] <= 1.25 * row["floor_us"]
    if row["floor_us"] < 5:
        out["at_most_8us"] = row["ours_us"] <= 8
    if row["kind"] == "decode" and row["n"] == row["t"] and row.get("best_torch_us"):
        out["5x_better_torch"] = row["ours_us"] * 5 <= row["best_torch_us"]
    return out


def load_kernels(name: str, path: Path):
    """Another copy of the kernels package (a directory holding its __init__.py), imported as NAME_kernels."""
    module_name = f"{name}_kernels"
    spec = importlib.util.spec_from_file_location(module_name, path / "__init__.py",
                                                  submodule_search_locations=[str(path)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    importlib.import_module(f"{module_name}.sgmv")
    return module


def run_case(case: Case, timer: Timer, bw: float, base_cache: dict, with_torch: bool, variants: dict | None,
             one_launch: bool = True, others: dict | None = None) -> dict:
    device = DEVICE
    inp = Inputs(case, device)
    cfg = sgmv_config(case.t, device, case.rank)
    fcfg = fused_config(device)
    row = dataclasses.asdict(case) | {"k": case.k, "width": case.width} | rule_inputs(case, device)
    one_too = one_launch and case.kind == "decode" and case.t <= FUSED_MAX_T
    splits = split_variants(case, cfg)
    # Check before timing: the timed replays keep adding into y, whose growing magnitude would then
    # swamp the delta in bf16.
    gcfg = gather_config(device, case.t)
    gather_too = case.t <= gcfg.max_tokens
    row["err_two"] = check(inp, inp.ours(cfg))
    if gather_too:
        row["err_gather"] = check(inp, inp.gather())
    row["err_coop"] = check(inp, inp.coop(cfg))
    if one_too:
        row["err_one"] = check(inp, inp.one(fcfg))
    for name, v in splits.items():
        row["err_coop"] = max(row["err_coop"], check(inp, inp.coop(v)))
        row["err_two"] = max(row["err_two"], check(inp, inp.ours(v)))
    row["two_us"] = timer(inp.ours(cfg))
    if gather_too:
        row["gather_us"] = timer(inp.gather())
    for name, kernels in (others or {}).items():
        row[f"err_{name}"] = check(inp, inp.other(kernels))
        row[f"{name}_us"] = timer(inp.other(kernels))
    row["coop_us"] = timer(inp.coop(cfg))
    if one_too:
        row["one_us"] = timer(inp.one(fcfg))
    if splits:
        row["split_variants_us"] = {}
        for name, v in splits.items():
            row["split_variants_us"][f"two_{name}"] = timer(inp.ours(v))
            row["split_variants_us"][f"coop_{name}"] = timer(inp.coop(v))
    row["gather"] = gather_too and prefers_gather(gcfg, case.t, case.n)  # the engine's count of adapters: n
    row["fused"] = not row["gather"] and "one_us" in row and picks_fused(row, fcfg)
    row["coop"] = not row["fused"] and not row["gather"] and cfg.coop
    row["ours_us"] = (row["gather_us"] if row["gather"] else row["one_us"] if row["fused"] else row["coop_us"]
                      if row["coop"] else row["two_us"])
    row["err"] = max(row["err_two"], row["err_coop"], row.get("err_one", 0.0), row.get("err_gather", 0.0))
    row["floor_us"] = inp.floor_bytes() / bw * 1e6
    key = (case.shape, case.t)
    if key not in base_cache:
        w = torch.randn(case.width, case.k, device=device, dtype=DTYPE)
        out = torch.empty(case.t, case.width, device=device, dtype=DTYPE)
        base_cache[key] = timer(lambda: torch.mm(inp.x, w.T, out=out))
        del w, out
    row["base_us"] = base_cache[key]
    row["lora_over_base"] = row["ours_us"] / row["base_us"]
    if with_torch:
        row["loop_us"] = timer(inp.torch_loop())
        # gather+bmm copies every token's adapter: skip where that copy alone exceeds 4 GB
        bmm_bytes = case.t * case.rank * (case.k + case.width) * 2
        row["bmm_us"] = timer(inp.torch_bmm()) if bmm_bytes < 4 << 30 else None
        row["best_torch_us"] = min(v for v in (row["loop_us"], row["bmm_us"]) if v is not None)
    anchor = ANCHORS.get((case.kind, case.t, case.n), {}).get(case.width) if case.rank == 16 and case.k == 4096 else None
    if anchor:
        row["anchor_floor_us"], row["anchor_us"], row["anchor_base_us"] = anchor
    if variants:
        row["variants_us"] = {}
        for name, v in variants.items():
            try:
                row["variants_us"][name] = row["one_us"] if v == fcfg else timer(inp.one(v))
            except Exception as exc:  # a variant that does not fit the chip (shared memory) is reported, not fatal
                row["variants_us"][name] = None
                row.setdefault("variant_errors", {})[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
    row["goals"] = goals(row)
    del inp
    torch.cuda.empty_cache()
    return row


MULTI_SLICE_CASES = (
    ("qkv", ("qo", "kv", "kv"), (("decode", 1, 1), ("decode", 16, 1), ("decode", 64, 8), ("decode", 256, 8),
                                  ("decode", 256, 64), ("decode", 1024, 1024), ("prefill128", 4096, 8))),
    ("gate_up", ("up", "up"), (("decode", 1, 1), ("decode", 16, 1), ("decode", 64, 8), ("decode", 256, 8))),
)


def fused_rows(timer: Timer, max_t: int = 1 << 62, others: dict | None = None) -> list[dict]:
    """Multi-slice forms at rank 16, batches up to max_t tokens: lora_apply_fused as dispatched, in the
    whole-K one launch, split-K in two launches and in one cooperative launch, and one lora_apply per slice
    (and each --compare package's lora_apply_fused)."""
    from loraledger.kernels import lora_apply, lora_apply_fused
    from loraledger.kernels.sgmv import sgmv

    device = DEVICE
    fcfg = fused_config(device)
    rows = []
    for name, shapes, batches in MULTI_SLICE_CASES:
        for kind, t, n in batches:
            if t > max_t:
                continue
            parts = [Inputs(Case(kind, shape, 16, t, n), device, seed=i) for i, shape in enumerate(shapes)]
            slots, scales = parts[0].slots, parts[0].scales
            width = sum(p.lora_b.shape[1] for p in parts)
            y = torch.randn(t, width, device=device, dtype=DTYPE)
            ranks = torch.stack([p.ranks for p in parts])
            meta = LoraMeta(t, device).build(slots, num_adapters=n)
            lora_a = tuple(p.lora_a for p in parts)
            lora_b = tuple(p.lora_b for p in parts)
            x = parts[0].x

            def public() -> None:
                lora_apply_fused(y, x, lora_a, lora_b, ranks, scales, slots, meta=meta)

            def one() -> None:
                sgmv_one_launch(y, x, lora_a, lora_b, ranks, scales, slots, meta, fcfg)

            def two() -> None:
                sgmv(y, x, lora_a, lora_b, ranks, scales, slots, meta)

            coop = functools.partial(sgmv_cooperative, y, x, lora_a, lora_b, ranks, scales, slots, meta)

            def separate() -> None:
                col = 0
                for i, p in enumerate(parts):
                    w = p.lora_b.shape[1]
                    lora_apply(y[:, col : col + w], x, p.lora_a, p.lora_b, ranks[i], scales, slots, meta=meta)
                    col += w

            row = {"name": name, "kind": kind, "t": t, "n": n, "width": width, "public_us": timer(public),
                   "two_us": timer(two), "coop_us": timer(coop), "separate_us": timer(separate)}
            row["one_us"] = timer(one) if t <= FUSED_MAX_T else None
            for other, kernels in (others or {}).items():
                other_meta = kernels.LoraMeta(t, device).build(slots, num_adapters=n)
                row[f"{other}_us"] = timer(lambda k=kernels, m=other_meta: k.lora_apply_fused(
                    y, x, lora_a, lora_b, ranks, scales, slots, meta=m))  # noqa: B023
            rows.append(row)
            print(f"{name} {kind} T={t} n={n}: public {row['public_us']:.1f}, one {row['one_us']}, two {row['two_us']:.1f},"
                  f" coop {row['coop_us']:.1f}, separate {row['separate_us']:.1f}", flush=True)
            del parts, y
            torch.cuda.empty_cache()
    return rows


def compile_only(cases: list[Case], shard: tuple[int, int], one_launch: bool, one_launch_sweep: bool) -> None:
    device = DEVICE
    variants = fused_variants(device) if one_launch_sweep else {"table": fused_config(device)}
    for i, case in enumerate(cases):
        if i % shard[1] != shard[0]:
            continue
        inp = Inputs(dataclasses.replace(case, n=min(case.n, 8)), device)
        cfg = sgmv_config(case.t, device, case.rank)
        for v in (cfg, *split_variants(case, cfg).values()):
            inp.ours(v)()
            inp.coop(v)()
        if case.t <= gather_config(device, case.t).max_tokens:
            inp.gather()()
        if one_launch and case.kind == "decode" and case.t <= FUSED_MAX_T:
            for name, v in variants.items():
                if name == "table" or case.t <= SWEEP_MAX_T:
                    try:
                        inp.one(v)()
                    except Exception as exc:  # noqa: BLE001 - reported again by the timed run
                        print(f"{case.label} {name}: {type(exc).__name__}", flush=True)
        del inp
    torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--compile-only", action="store_true")
    parser.add_argument("--shard", default="0/1")
    parser.add_argument("--no-grid", action="store_true", help="only the anchor cases")
    parser.add_argument("--budget-s", type=float, default=1e9, help="start no new grid case after this many seconds")
    parser.add_argument("--small-floor", action="store_true",
                        help="only the decode cases with T <= 64 or T = 256, n <= 8 (floors under 5 us), split-K paths "
                             "only (no whole-K one launch, no torch baselines), multi-slice forms up to T = 64")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated projections to run (grid cases)")
    parser.add_argument("--compare", nargs="*", default=[], metavar="NAME=DIR",
                        help="other kernels/ packages to time side by side (their two launches)")
    parser.add_argument("--ranks", help="comma-separated ranks to keep (every case list; default all)")
    parser.add_argument("--anchors-too", action="store_true", help="with --small-floor: the anchor cases first")
    parser.add_argument("--one-launch-sweep", action="store_true",
                        help="also time the whole-K one launch's block-size variants in every decode case up to "
                             "T = 256 (their compiles take a third of a full run; the rule never picks the path)")
    args = parser.parse_args()
    shard = tuple(int(v) for v in args.shard.split("/"))
    shapes = set(args.shapes.split(","))

    anchors = anchor_cases()
    # Anchors first, then the decode batches the one-launch path is for, then the rest of the grid.
    rest = [] if args.no_grid else [c for c in grid_cases() if c not in anchors]
    rest.sort(key=lambda c: (not (c.kind == "decode" and c.t <= SWEEP_MAX_T), c.t, c.n))
    cases = anchors + rest
    if args.small_floor:
        cases = [c for c in grid_cases() if small_floor(c) and c.shape in shapes]
        cases.sort(key=lambda c: (c.t, c.n, c.shape, c.rank))
        if args.anchors_too:
            cases = anchors + [c for c in cases if c not in anchors]
        else:
            anchors = []
    if args.ranks:
        keep = {int(r) for r in args.ranks.split(",")}
        cases = [c for c in cases if c.rank in keep and (c.shape in shapes or c in anchors)]
        anchors = [c for c in anchors if c.rank in keep]
    if args.compile_only:
        compile_only(cases, shard, one_launch=not args.small_floor, one_launch_sweep=args.one_launch_sweep)
        return

    args.out.mkdir(parents=True, exist_ok=True)
    timer = Timer(args.reps)
    props = torch.cuda.get_device_properties(0)
    warm_up()
    bw = copy_bandwidth(timer)
    device = DEVICE
    variants = fused_variants(device)
    others = {name: load_kernels(name, Path(path)) for name, path in (c.split("=", 1) for c in args.compare)}
    info = {"device": props.name, "sms": props.multi_processor_count, "copy_bw_TBps": bw / 1e12, "torch": torch.__version__,
            "triton": triton.__version__, "sgmv_configs": {str(t): dataclasses.asdict(sgmv_config(t, device))
                                                           for t in (1, 256, 1024, 4096)},
            "fused_variants": {name: dataclasses.asdict(v) for name, v in variants.items()},
            "split_variants": SPLIT_VARIANTS, "small_floor_only": args.small_floor,
            "compare": args.compare}
    info["calibration"] = calibration(timer)
    print(json.dumps(info), flush=True)
    base_cache: dict = {}
    rows = []
    t0 = time.time()
    for i, case in enumerate(cases):
        if time.time() - t0 > args.budget_s:
            info["stopped_early"] = f"{len(cases) - i} grid cases not run (--budget-s {args.budget_s})"
            print(info["stopped_early"], flush=True)
            break
        sweep = args.one_launch_sweep and case.kind == "decode" and case.t <= SWEEP_MAX_T and not args.small_floor
        with_torch = not args.small_floor and (case in anchors or (case.rank == 16 and case.t <= 256))
        row = run_case(case, timer, bw, base_cache, with_torch=with_torch, variants=variants if sweep else None,
                       one_launch=not args.small_floor, others=others)
        rows.append(row)
        one = f", one {row['one_us']:.1f}" if "one_us" in row else ""
        split = "".join(f", {n} {v:.1f}" for n, v in row.get("split_variants_us", {}).items())
        split += "".join(f", {name} {row[name + '_us']:.1f}" for name in others)
        print(f"[{i + 1}/{len(cases)} {time.time() - t0:.0f}s] {case.label}: two {row['two_us']:.1f}, coop "
              f"{row['coop_us']:.1f}{one}{split} -> "
              f"ours {row['ours_us']:.1f} us, floor {row['floor_us']:.1f}, base {row['base_us']:.1f}, "
              f"err {row['err']:.1e} {row['goals']}", flush=True)
        (args.out / "rows.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    fused = fused_rows(timer, max_t=64 if args.small_floor else 1 << 62, others=others)
    info["copy_bw_end_TBps"] = copy_bandwidth(timer) / 1e12
    info["timing_spread_max"] = max(timer.spread)
    info["timing_spread_p90"] = sorted(timer.spread)[int(0.9 * len(timer.spread))]
    (args.out / "rows.json").write_text(json.dumps({"info": info, "rows": rows, "fused": fused}, indent=1))


if __name__ == "__main__":
    main()
