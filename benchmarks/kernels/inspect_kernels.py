"""Compile the project's Triton kernels for a GPU without one (Hopper, sm_90, by default) and report what
the compiler made of each launch: registers, spills, shared memory, and how the loads and dots came out.

The kernels' own launch wrappers run on CPU tensors shaped like a real call (a decode step at Llama-3-8B
or Llama-3.2-1B dimensions), with Triton's driver replaced by one that only names the target: each
`kernel[grid](...)` compiles (Triton's usual specialisation: pointer alignment, integers divisible by 16
or equal to 1) and returns without launching. The cubin's resource usage comes from `cuobjdump` (shipped
with Triton), the instruction counts from the PTX. What this cannot see is time: a spill, scalar loads
where 16-byte ones were meant, or a dot that missed the tensor cores show up here; how fast it runs is
still the GPU machine's question (benchmarks/kernels/bench_sgmv.py, sweep_*.py).

    python benchmarks/kernels/inspect_kernels.py [--arch 90] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") == "1":
    raise SystemExit("run without TRITON_INTERPRET: this compiles for a GPU target")

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction


class _OfflineDriver:
    """Triton's active driver for compiling only: a target, device 0, no stream, CPU tensors."""

    def __init__(self, arch: int) -> None:
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

_COMPILED: list = []
_run = JITFunction.run


def _compile_only(self, *args, grid, warmup, **kwargs):
    """JITFunction.run that compiles (warmup) and records the kernel instead of launching it."""
    kernel = _run(self, *args, grid=grid, warmup=True, **kwargs)
    _COMPILED.append(kernel)
    return kernel


def _ptxas_tools() -> Path:
    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def resources(cubin: bytes) -> dict:
    """REG, STACK, SHARED, LOCAL (spill bytes) of the cubin's one function, from cuobjdump."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(_ptxas_tools() / "cuobjdump"), "--dump-resource-usage", f.name],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    found = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", out))
    return {k.lower(): int(v) for k, v in found.items()}


def ptx_counts(ptx: str) -> dict:
    """Global loads and stores by width, async copies by size, tensor-core instructions, griddepcontrol (PDL)."""
    counts: dict[str, int] = {}

    def add(key: str, n: int = 1) -> None:
        counts[key] = counts.get(key, 0) + n

    for line in ptx.splitlines():
        line = line.strip()
        m = re.match(r"(?:@%p\d+ )?(ld|st)\.global(?:\.[a-z0-9_:]+)*?(\.v[248])?\.(b|u|s|f)(\d+)", line)
        if m:
            vec = int(m.group(2)[2:]) if m.group(2) else 1
            add(f"{m.group(1)}.global {vec * int(m.group(4)) // 8}B")
            continue
        m = re.search(r"cp\.async\.c[ag]\.shared\.global[^,]*,[^,]*, (0x[0-9a-f]+|\d+)", line)
        if m:
            add(f"cp.async {int(m.group(1), 0)}B")
            continue
        if "cp.async.bulk.tensor" in line:
            add("tma load")
        elif line.startswith("wgmma.mma_async"):
            add("wgmma")
        elif re.match(r"(?:@%p\d+ )?mma\.sync", line):
            add("mma.sync")
        elif line.startswith("griddepcontrol."):
            add(line.split(";")[0])
        elif re.match(r"(?:@%p\d+ )?atom\.", line):
            add("atomic")
    return dict(sorted(counts.items()))


def report(name: str, kernel) -> dict:
    res = resources(kernel.asm["cubin"])
    row = {"launch": name, "kernel": kernel.name, "warps": kernel.metadata.num_warps,
           "stages": kernel.metadata.num_stages, "dynamic_shared": kernel.metadata.shared, **res,
           "ptx": ptx_counts(kernel.asm["ptx"])}  # fmt: skip
    return row


def _cases() -> dict[str, Callable[[], object]]:
    """Launch wrappers on CPU tensors of real decode-step shapes (bf16)."""
    from loraledger.kernels import LoraMeta
    from loraledger.kernels.configs import fused_config, hopper_gather_config, hopper_sgmv_config
    from loraledger.kernels.fused_ops_triton import launch_rms_norm, launch_rope_and_cache, launch_silu_and_mul
    from loraledger.kernels.paged_attention import Rotary, paged_attention
    from loraledger.kernels.sgmv_coop import sgmv_coop
    from loraledger.kernels.sgmv_expand import sgmv_expand
    from loraledger.kernels.sgmv_fused import sgmv_fused
    from loraledger.kernels.sgmv_gather import sgmv_gather
    from loraledger.kernels.sgmv_shrink import sgmv_shrink
    from loraledger.kernels.skinny_matmul import skinny_matmul
    from loraledger.kernels.configs import SkinnyConfig

    bf = torch.bfloat16
    cases: dict[str, Callable[[], object]] = {}

    def lora(t: int, slots: int, rank: int, k: int, widths: tuple[int, ...], label: str, one_launch=False) -> None:
        x = torch.randn(t, k, dtype=bf)
        a = tuple(torch.randn(slots, rank, k, dtype=bf) for _ in widths)
        b = tuple(torch.randn(slots, n, rank, dtype=bf) for n in widths)
        ranks = torch.full((len(widths), slots), rank, dtype=torch.int32)
        scales = torch.ones(slots)
        token_slots = torch.arange(t, dtype=torch.int32) % slots
        meta = LoraMeta(t, torch.device("cpu")).build(token_slots, hopper_sgmv_config(t, rank).block_t)
        cfg = hopper_sgmv_config(t, rank)
        y = torch.zeros(t, sum(widths), dtype=bf)

        def shrink():
            return sgmv_shrink(x, a, ranks, meta, cfg, pdl=cfg.pdl)

        cases[f"shrink {label}"] = shrink

        def expand():
            ws = sgmv_shrink(x, a, ranks, meta, cfg, pdl=cfg.pdl)  # its workspace; the shrink is not reported
            _COMPILED.clear()
            return sgmv_expand(y, b, ranks, scales, ws, meta, cfg, pdl=cfg.pdl)

        cases[f"expand {label}"] = expand
        cases[f"gather {label}"] = lambda: sgmv_gather(y, x, a, b, ranks, scales, token_slots, hopper_gather_config(t))
        if one_launch:  # the two one-launch paths, forced (the Hopper table picks neither)
            cases[f"whole-K one launch {label}"] = lambda: sgmv_fused(y, x, a, b, ranks, scales, meta,
                                                                      fused_config(torch.device("cuda")))  # fmt: skip
            cases[f"cooperative {label}"] = lambda: sgmv_coop(y, x, a, b, ranks, scales, meta, cfg)

    lora(64, 64, 16, 4096, (4096, 1024, 1024), "8B qkv T64 distinct r16")
    lora(64, 64, 16, 4096, (14336, 14336), "8B gate_up T64 distinct r16")
    lora(64, 64, 16, 14336, (4096,), "8B down T64 distinct r16")
    lora(256, 256, 16, 4096, (4096,), "8B o T256 distinct r16")
    lora(1024, 1024, 16, 4096, (4096,), "8B o T1024 distinct r16")
    lora(64, 64, 64, 4096, (4096,), "8B o T64 distinct r64")
    lora(64, 8, 8, 4096, (4096,), "8B o T64 n8 r8", one_launch=True)
    lora(64, 64, 8, 4096, (4096, 1024, 1024), "8B qkv T64 distinct r8")
    lora(16, 16, 16, 4096, (4096, 1024, 1024), "8B qkv T16 distinct r16", one_launch=True)

    def skinny(m: int, n: int, k: int, cfg: SkinnyConfig, label: str) -> None:
        x, w = torch.randn(m, k, dtype=bf), torch.randn(n, k, dtype=bf)
        cases[f"skinny {label}"] = lambda: skinny_matmul(x, w, None, cfg)

    skinny(64, 3072, 2048, SkinnyConfig(64, 128, 4, 4), "1B qkv M64 split 4")
    skinny(64, 2048, 8192, SkinnyConfig(64, 256, 4, 3), "1B down M64 split 4")
    skinny(16, 2048, 2048, SkinnyConfig(64, 128, 8, 5), "1B o M16 split 8")

    def attention(b: int, ctx: int, heads: int, kv_heads: int, dim: int, label: str) -> None:
        blocks = ctx // 16
        q = torch.randn(b, heads, dim, dtype=bf)
        kc = torch.randn(b * blocks + 1, 16, kv_heads, dim, dtype=bf)
        tables = torch.arange(b * blocks, dtype=torch.int32).view(b, blocks)
        lens = torch.full((b,), ctx, dtype=torch.int32)
        cases[f"paged attention {label}"] = lambda: paged_attention(q, kc, kc, tables, lens, dim**-0.5,
                                                                    max_context_len=ctx)  # fmt: skip
        new = torch.randn(b, kv_heads, dim, dtype=bf)
        rows = torch.randn(b, dim, dtype=bf)
        cases[f"paged attention + rotary {label}"] = lambda: paged_attention(
            q, kc, kc, tables, lens, dim**-0.5, max_context_len=ctx, rotary=Rotary(new, new, rows, rows))

    attention(64, 512, 32, 8, 128, "8B B64 ctx512")
    attention(128, 512, 32, 8, 64, "1B B128 ctx512")
    attention(64, 512, 32, 8, 64, "1B B64 ctx512")

    h = torch.randn(64, 4096, dtype=bf)
    wn = torch.ones(4096, dtype=bf)
    cases["rms_norm 8B T64"] = lambda: launch_rms_norm(torch.empty_like(h), h, None, wn, 1e-5)
    gu = torch.randn(64, 2 * 14336, dtype=bf)
    cases["silu_and_mul 8B T64"] = lambda: launch_silu_and_mul(torch.empty(64, 14336, dtype=bf), gu)
    qk = torch.randn(64, 40, 128, dtype=bf)
    kv_cache = torch.randn(1024, 8, 128, dtype=bf)
    rows = torch.randn(64, 128, dtype=bf)
    slots = torch.arange(64)
    cases["rope_and_cache 8B T64"] = lambda: launch_rope_and_cache(qk, qk[:, 32:], rows, rows, kv_cache, kv_cache, slots)
    return cases


def _target_launches_pdl(arch: int) -> None:
    """The decoder's kernels ask configs.launches_pdl (through kernels/pdl.py) of their tensors' device, here
    the CPU (no): answer for the target instead, so their PDL variants are the ones compiled."""
    from loraledger.kernels import pdl

    pdl.launches_pdl = lambda device: arch >= 90


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90 = Hopper)")
    p.add_argument("--only", help="comma-separated substrings of the launch names")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    driver.set_active(_OfflineDriver(args.arch))
    JITFunction.run = _compile_only
    _target_launches_pdl(args.arch)
    rows = []
    for name, launch in _cases().items():
        if args.only and not any(s in name for s in args.only.split(",")):
            continue
        _COMPILED.clear()
        try:
            launch()
        except Exception as exc:  # noqa: BLE001 - one launch that does not compile is a row, not a stop
            rows.append({"launch": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
            print(f"{name}: {rows[-1]['error']}", file=sys.stderr)
            continue
        for kernel in _COMPILED:
            row = report(name, kernel)
            rows.append(row)
            print(f"{name:<36} {row['kernel'][:28]:<28} warps {row['warps']} regs {row.get('reg')} "
                  f"spill {row.get('local', 0)}B smem {row['dynamic_shared']} {row['ptx']}", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"arch": args.arch, "triton": triton.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
