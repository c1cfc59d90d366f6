"""What the compiler makes of the kernels for Hopper, checked without a GPU (benchmarks/kernels/inspect_kernels.py
compiles them for sm_90 in a child process): loads as wide as the data allows, tensor-core dots, no spills.

These are the properties a slow kernel lost silently before: a pool padded to rank 8 had its B rows loaded 2
bytes at a time, and the first split-K matmul loaded everything 2 bytes at a time without async copies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    if not PTXAS.exists():
        pytest.skip("Triton's ptxas is not installed")
    out = tmp_path_factory.mktemp("codegen") / "rows.json"
    only = ",".join(("expand 8B o T64 n8 r8", "expand 8B qkv T64", "skinny 1B qkv M64", "skinny 1B o M16",
                     "shrink 8B qkv T64", "whole-K one launch 8B o T64 n8 r8", "cooperative 8B o T64 n8 r8",
                     "paged attention 8B", "rms_norm", "silu_and_mul"))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernels" / "inspect_kernels.py"), "--only", only,
         "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=540, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert not [r for r in rows if "error" in r], rows
    return {r["launch"]: r for r in rows}


@pytest.mark.parametrize("launch", ["expand 8B o T64 n8 r8", "expand 8B qkv T64 distinct r16"])
def test_expand_loads_b_sixteen_bytes_at_a_time(compiled: dict, launch: str) -> None:
    row = compiled[launch]
    assert row["ptx"].get("ld.global 2B", 0) == 0, row  # no bf16 element loaded on its own
    assert row["ptx"].get("ld.global 16B", 0) >= 2, row
    assert row.get("local", 0) == 0, row  # no spills


@pytest.mark.parametrize("launch", ["skinny 1B qkv M64 split 4", "skinny 1B o M16 split 8"])
def test_skinny_matmul_streams_with_async_copies(compiled: dict, launch: str) -> None:
    row = compiled[launch]
    ptx = row["ptx"]
    assert ptx.get("cp.async 16B", 0) >= 16, row
    assert not any(k.startswith("cp.async") and k != "cp.async 16B" for k in ptx), row
    assert ptx.get("ld.global 2B", 0) == 0, row
    assert ptx.get("wgmma", 0) + ptx.get("mma.sync", 0) > 0, row  # tensor cores
    assert row.get("local", 0) == 0, row


def test_no_kernel_spills_or_loads_bf16_one_element_at_a_time(compiled: dict) -> None:
    """Every compiled launch of the list: no local memory (register spills), no 2-byte global loads."""
    assert len(compiled) >= 10, sorted(compiled)
    bad = {name: (row.get("local", 0), row["ptx"].get("ld.global 2B", 0)) for name, row in compiled.items()
           if row.get("local", 0) or row["ptx"].get("ld.global 2B", 0)}  # fmt: skip
    assert not bad, bad
