"""The token-gather SGMV pair (kernels/sgmv_gather.py) against the table's two launches, on small decode batches.

Cases: Llama-3-8B projections (qo, kv, up, down) and the engine's multi-slice forms (qkv under GQA, gate_up)
at ranks 16 and 8, T = 1, 16, 64, 128, 256 with one, eight and T distinct adapters. Each case is timed as
bench_sgmv.py times (median of CUDA-graph replays, L2 flushed) on the table's two launches ("two", metadata
built with the batch's adapter count, not timed) and on gather variants: each shrink variant with the first
expand, each expand variant with the first shrink, then the best of each combined (scored by the geometric
mean of gather / two over every case). Every variant's result is checked against the float64 reference
first. Prints the per-batch ratios and the combined config for a bucket of configs._SM90_GATHER. Run on a GPU:

    python benchmarks/kernels/sweep_gather.py --compile-only --shard 0/8   # warm Triton's cache in parallel
    python benchmarks/kernels/sweep_gather.py --out sweep_gather.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sgmv import Timer, calibration, copy_bandwidth, warm_up  # noqa: E402

from loraledger.kernels import LoraMeta, lora_apply_fused_ref  # noqa: E402
from loraledger.kernels.configs import GatherConfig, gather_config, hopper_gather_config  # noqa: E402
from loraledger.kernels.sgmv import sgmv, sgmv_gathered  # noqa: E402

DTYPE = torch.bfloat16
FORMS = {  # name: (K, slice widths)
    "qo": (4096, (4096,)),
    "kv": (4096, (1024,)),
    "up": (4096, (14336,)),
    "down": (14336, (4096,)),
    "qkv": (4096, (4096, 1024, 1024)),
    "gate_up": (4096, (14336, 14336)),
}
BATCHES = ((1, 1), (16, 1), (16, 8), (16, 16), (64, 1), (64, 8), (64, 64), (128, 8), (128, 128), (256, 8), (256, 256))

# (shrink_tokens, k_chunk, block_k, shrink_warps) and (expand_tokens, block_n, expand_warps); the first of each
# is the pair the others vary around.
SHRINKS = ((1, 512, 256, 4), (1, 1024, 256, 4), (1, 256, 256, 4), (2, 512, 256, 4), (4, 256, 128, 4),
           (1, 512, 128, 2), (2, 256, 256, 8))
EXPANDS = ((1, 256, 4), (1, 512, 4), (2, 256, 4), (4, 128, 4), (1, 128, 2), (1, 1024, 8), (2, 512, 8))

# --set large: batches past 256 tokens, distinct or partly shared adapters, around the table's pair.
LARGE_BATCHES = ((256, 256), (256, 192), (512, 512), (512, 384), (512, 256), (1024, 1024), (1024, 896), (1024, 768),
                 (1024, 640), (1024, 512))
LARGE_SHRINKS = ((1, 1024, 256, 4), (1, 2048, 256, 4), (1, 512, 256, 4), (2, 1024, 256, 4), (1, 1024, 256, 8),
                 (1, 1024, 512, 8))
LARGE_EXPANDS = ((1, 512, 4), (1, 1024, 4), (1, 1024, 8), (2, 512, 4), (1, 256, 4), (1, 512, 8))
# --set table: the small batches again, around the first bucket's pair, with the second bucket's parameters.
TABLE_SHRINKS = ((1, 1024, 256, 4), (1, 1024, 512, 8), (1, 512, 512, 8), (1, 2048, 512, 8))
TABLE_EXPANDS = ((1, 512, 4), (1, 1024, 4), (1, 1024, 8))
SETS = {"small": (BATCHES, SHRINKS, EXPANDS, 64), "large": (LARGE_BATCHES, LARGE_SHRINKS, LARGE_EXPANDS, 1 << 30),
        "table": (BATCHES, TABLE_SHRINKS, TABLE_EXPANDS, 1 << 30)}


def variant(shrink: tuple, expand: tuple, max_tokens: int = 1024) -> GatherConfig:
    st, kc, bk, sw = shrink
    et, bn, ew = expand
    return dataclasses.replace(hopper_gather_config(1), max_tokens=max_tokens, shrink_tokens=st, k_chunk=kc,
                               block_k=bk, shrink_warps=sw, expand_tokens=et, block_n=bn, expand_warps=ew, pdl=True)


def variants(shrinks: tuple = SHRINKS, expands: tuple = EXPANDS) -> dict[str, GatherConfig]:
    out = {f"s{i}": variant(s, expands[0]) for i, s in enumerate(shrinks)}
    out |= {f"e{i}": variant(shrinks[0], e) for i, e in enumerate(expands) if i}
    return out


@dataclasses.dataclass(frozen=True)
class Case:
    form: str
    rank: int
    t: int
    n: int

    @property
    def label(self) -> str:
        return f"{self.form} r{self.rank} T={self.t} n={self.n}"


def cases(forms: list[str], ranks: list[int], batches: tuple = BATCHES) -> list[Case]:
    return [Case(f, r, t, n) for t, n in batches for f in forms for r in ranks]


class Inputs:
    """A pool of n adapters (rank r, padded rank r) over the form's slices, x, y and shuffled token slots."""

    def __init__(self, case: Case, seed: int = 0) -> None:
        gen = torch.Generator(device="cuda").manual_seed(seed)
        k, widths = FORMS[case.form]
        r, s = case.rank, case.n
        self.x = torch.randn(case.t, k, device="cuda", dtype=DTYPE, generator=gen)
        self.y = torch.randn(case.t, sum(widths), device="cuda", dtype=DTYPE, generator=gen)
        self.a = tuple(torch.randn(s, r, k, device="cuda", dtype=DTYPE, generator=gen) * k**-0.5 for _ in widths)
        self.b = tuple(torch.randn(s, w, r, device="cuda", dtype=DTYPE, generator=gen) * r**-0.5 for w in widths)
        self.ranks = torch.full((len(widths), s), r, dtype=torch.int32, device="cuda")
        self.scales = torch.rand(s, device="cuda", generator=gen) + 0.5
        order = torch.randperm(case.t, generator=torch.Generator().manual_seed(seed))
        self.slots = (torch.arange(case.t) % s)[order].to(torch.int32).cuda()
        self.case = case
        self.floor_bytes = 2 * (case.t * k + s * r * (k * len(widths) + sum(widths)) + 2 * case.t * sum(widths))

    def args(self) -> tuple:
        return (self.y, self.x, self.a, self.b, self.ranks, self.scales, self.slots)

    def two(self):
        meta = LoraMeta(self.case.t, "cuda").build(self.slots, num_adapters=self.case.n)
        return lambda: sgmv(*self.args(), meta)

    def gather(self, cfg: GatherConfig):
        return lambda: sgmv_gathered(*self.args(), cfg)

    def error(self, run) -> float:
        """One application's relative error against float64 (the reference computed once per Inputs); y is
        restored after."""
        y0 = self.y.clone()
        if getattr(self, "_ref", None) is None:
            self._ref = y0.double()
            lora_apply_fused_ref(self._ref, self.x.double(), tuple(a.double() for a in self.a),
                                 tuple(b.double() for b in self.b), self.ranks, self.scales.double(), self.slots)
        run()
        ref = self._ref
        err = ((self.y.double() - ref).norm() / (ref - y0.double()).norm()).item()
        self.y.copy_(y0)
        return err


def geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("sweep_gather.json"))
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--ranks", default="16,8")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--compile-only", action="store_true")
    parser.add_argument("--shard", default="0/1")
    parser.add_argument("--budget-s", type=float, default=1e9)
    parser.add_argument("--set", choices=SETS, default="small",
                        help="small: T <= 256 (scored over T <= 64); large: T = 256 to 1024, partly shared (all scored); "
                             "table: T <= 256 around the first bucket's pair with the second bucket's parameters")
    args = parser.parse_args()
    batches, shrinks, expands, score_t = SETS[args.set]
    todo = cases(args.forms.split(","), [int(r) for r in args.ranks.split(",")], batches)
    var = variants(shrinks, expands)
    if args.compile_only:
        i, n = (int(v) for v in args.shard.split("/"))
        for j, case in enumerate(todo):
            if j % n == i:
                inp = Inputs(dataclasses.replace(case, n=min(case.n, 8)))
                inp.two()()
                for cfg in var.values():
                    inp.gather(cfg)()
        torch.cuda.synchronize()
        return

    timer = Timer(args.reps)
    warm_up()
    bw = copy_bandwidth(timer)
    info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "copy_bw_TBps": bw / 1e12,
            "calibration": calibration(timer), "set": args.set, "shrinks": shrinks, "expands": expands,
            "table_gather": [dataclasses.asdict(gather_config(torch.device("cuda"), t)) for t in (1, 1024)]}
    print(json.dumps(info), flush=True)
    rows = []
    t0 = time.time()
    for i, case in enumerate(todo):
        if time.time() - t0 > args.budget_s:
            info["stopped_early"] = f"{len(todo) - i} cases not run"
            break
        inp = Inputs(case)
        row = dataclasses.asdict(case) | {"floor_us": inp.floor_bytes / bw * 1e6}
        # Every check before any timing: the timed replays keep adding into y, whose growing magnitude would
        # then swamp the delta in bf16.
        row["err_two"] = inp.error(inp.two())
        row["err"] = {name: inp.error(inp.gather(cfg)) for name, cfg in var.items()}
        row["two_us"] = timer(inp.two())
        row["us"] = {name: timer(inp.gather(cfg)) for name, cfg in var.items()}
        best = min(row["us"], key=row["us"].get)
        print(f"[{i + 1}/{len(todo)} {time.time() - t0:.0f}s] {case.label}: two {row['two_us']:.1f}, "
              f"gather s0e0 {row['us']['s0']:.1f}, best {best} {row['us'][best]:.1f} us, floor {row['floor_us']:.1f}, "
              f"err {max(row['err'].values()):.1e}", flush=True)
        rows.append(row)
        del inp
    # The best shrink and the best expand by geometric mean over the set's scored cases, then that pair.
    small = [r for r in rows if r["t"] <= score_t]
    score = {name: geomean([r["us"][name] / r["two_us"] for r in small]) for name in var}
    best_s = min((n for n in var if n.startswith("s")), key=score.get)
    best_e = min(["s0", *(n for n in var if n.startswith("e"))], key=score.get)
    combo = variant(shrinks[int(best_s[1:])], expands[0 if best_e == "s0" else int(best_e[1:])])
    info |= {"score": score, "best_shrink": best_s, "best_expand": best_e, "combo": dataclasses.asdict(combo)}
    for row in rows:
        inp = Inputs(Case(row["form"], row["rank"], row["t"], row["n"]))
        row["err"]["combo"] = inp.error(inp.gather(combo))
        row["us"]["combo"] = timer(inp.gather(combo))
        del inp
    info["copy_bw_end_TBps"] = copy_bandwidth(timer) / 1e12
    info["timing_spread_max"] = max(timer.spread)
    args.out.write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    print(f"score (gather / two, geomean over the scored cases): " + ", ".join(f"{k} {v:.3f}" for k, v in score.items()))
    print(f"combo {best_s}+{best_e}: {combo}")
    for t, n in batches:
        sel = [r for r in rows if (r["t"], r["n"]) == (t, n)]
        if sel:
            print(f"T={t} n={n}: combo / two {geomean([r['us']['combo'] / r['two_us'] for r in sel]):.3f}, "
                  f"two / floor {geomean([r['two_us'] / r['floor_us'] for r in sel]):.2f}, "
                  f"combo / floor {geomean([r['us']['combo'] / r['floor_us'] for r in sel]):.2f}")
    for form in FORMS:
        sel = [r for r in rows if r["form"] == form and r["t"] == 64 and r["n"] == 64]
        for r in sel:
            print(f"  {form} r{r['rank']} T=64 distinct: two {r['two_us']:.1f}, combo {r['us']['combo']:.1f}, "
                  f"floor {r['floor_us']:.1f} us")


if __name__ == "__main__":
    main()
