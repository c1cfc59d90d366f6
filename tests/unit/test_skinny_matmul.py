"""kernels/skinny_matmul.py through Triton's interpreter (fp32, fp16) against float64, and its dispatch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

CASES = (  # rows, N, K, block_n, block_k, split_k, bias
    (1, 40, 64, 16, 16, 1, False),
    (7, 100, 96, 32, 32, 3, True),  # K split 3 ways of 32, N not a multiple of the block
    (33, 64, 200, 32, 64, 2, True),  # K = 200: the second chunk masked past K; two row blocks
    (64, 48, 256, 16, 32, 8, False),
    (130, 24, 48, 16, 16, 4, True),  # three row blocks of 64
)


def _run_interpreted() -> str:
    import json

    from loraledger.kernels.configs import SkinnyConfig
    from loraledger.kernels.skinny_matmul import skinny_matmul

    results = []
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 2e-3)):
        for rows, n, k, block_n, block_k, split_k, with_bias in CASES:
            x = torch.randn(rows, k, generator=gen, dtype=torch.float64)
            w = torch.randn(n, k, generator=gen, dtype=torch.float64) * k**-0.5
            b = torch.randn(n, generator=gen, dtype=torch.float64) if with_bias else None
            ref = x @ w.T + (0 if b is None else b)
            cfg = SkinnyConfig(block_n, block_k, split_k, stages=2)
            for launch in range(2):  # twice: the counters must be back at zero after a launch
                out = torch.full((rows, n), float("nan"), dtype=dtype)
                skinny_matmul(x.to(dtype), w.to(dtype), None if b is None else b.to(dtype), cfg, out=out)
                err = float((out.double() - ref).norm() / ref.norm())
                results.append({"case": [rows, n, k, split_k], "dtype": str(dtype), "launch": launch, "err": err,
                                "ok": bool(torch.isfinite(out).all()) and err <= tol})
    return json.dumps(results)


def test_skinny_matmul_interpreted_matches_float64() -> None:
    """Every case in fp32 and fp16, twice each, under TRITON_INTERPRET=1 (a child process: the variable
    must be set before Triton is imported)."""
    import json

    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=540, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 2 * 2 * len(CASES)
    bad = [r for r in results if not r["ok"]]
    assert not bad, bad


def test_linear_on_cpu_is_f_linear() -> None:
    from loraledger.kernels import linear

    gen = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(5, 12, generator=gen), torch.randn(7, 12, generator=gen), torch.randn(7, generator=gen)
    assert torch.equal(linear(x, w, b), torch.nn.functional.linear(x, w, b))


def test_bad_shapes_are_refused() -> None:
    from loraledger.kernels.configs import SkinnyConfig
    from loraledger.kernels.skinny_matmul import skinny_matmul

    cfg = SkinnyConfig(16, 16, 1, 2)
    with pytest.raises(ValueError, match="unit stride"):
        skinny_matmul(torch.randn(4, 8), torch.randn(6, 9), None, cfg)
    with pytest.raises(ValueError, match="bias"):
        skinny_matmul(torch.randn(4, 8), torch.randn(6, 8), torch.randn(5), cfg)
    with pytest.raises(ValueError, match="out must be"):
        skinny_matmul(torch.randn(4, 8), torch.randn(6, 8), None, cfg, out=torch.empty(4, 5))


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1")
    print(_run_interpreted())
