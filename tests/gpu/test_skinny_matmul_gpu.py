"""kernels/skinny_matmul.py on CUDA (bf16, fp16, fp32) against float64: split-K counts reset, graphs replay."""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

TOLERANCE = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1.5e-2}  # fp32: IEEE dots
CASES = (  # rows, N, K, block_n, block_k, split_k, bias
    (1, 3072, 2048, 64, 128, 8, False),
    (64, 2048, 8192, 64, 256, 4, True),
    (37, 1000, 1000, 32, 128, 3, True),  # N, K not multiples of the blocks; K split unevenly
    (64, 4096, 14336, 128, 256, 7, False),
    (100, 512, 4096, 64, 128, 2, False),  # two row blocks
    (16, 6144, 4096, 128, 128, 1, True),
)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_skinny_matmul_matches_float64(case: tuple, dtype: torch.dtype) -> None:
    from loraledger.kernels.configs import SkinnyConfig
    from loraledger.kernels.skinny_matmul import skinny_matmul

    rows, n, k, block_n, block_k, split_k, with_bias = case
    gen = torch.Generator().manual_seed(rows * 7 + n)
    x = torch.randn(rows, k, generator=gen, dtype=torch.float64)
    w = torch.randn(n, k, generator=gen, dtype=torch.float64) * k**-0.5
    b = torch.randn(n, generator=gen, dtype=torch.float64) if with_bias else None
    ref = x @ w.T + (0 if b is None else b)
    cfg = SkinnyConfig(block_n, block_k, split_k, stages=3)
    xd, wd, bd = x.to(dtype).cuda(), w.to(dtype).cuda(), None if b is None else b.to(dtype).cuda()
    first = None
    for _ in range(3):  # the counts must be back at zero after each launch; the result the same each time
        out = torch.full((rows, n), float("nan"), dtype=dtype, device="cuda")
        skinny_matmul(xd, wd, bd, cfg, out=out)
        torch.cuda.synchronize()
        err = float((out.double().cpu() - ref).norm() / ref.norm())
        assert err <= TOLERANCE[dtype], err
        if first is None:
            first = out.clone()
        assert torch.equal(out, first)  # deterministic: partials summed in split order


def test_skinny_matmul_in_a_graph_over_new_inputs() -> None:
    from loraledger.kernels.configs import SkinnyConfig
    from loraledger.kernels.skinny_matmul import skinny_matmul

    cfg = SkinnyConfig(64, 128, 6, stages=4)
    x = torch.randn(64, 2048, device="cuda", dtype=torch.bfloat16)
    ws = [torch.randn(2048 + 64 * i, 2048, device="cuda", dtype=torch.bfloat16) * 2048**-0.5 for i in range(3)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        [skinny_matmul(x, w, None, cfg) for w in ws]
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [skinny_matmul(x, w, None, cfg) for w in ws]
    for _ in range(20):
        x.copy_(torch.randn_like(x))
        for o in outs:
            o.fill_(float("nan"))
        graph.replay()
        for w, o in zip(ws, outs, strict=True):
            ref = x.double() @ w.double().T
            assert float((o.double() - ref).norm() / ref.norm()) < 1.5e-2


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability()[0] != 9, reason="Hopper table")
def test_linear_follows_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """kernels.linear takes skinny_matmul for a shape and row bucket the table lists, F.linear otherwise."""
    from loraledger.kernels import configs, linear

    monkeypatch.setitem(configs._HOPPER_SKINNY, (1024, 512), {16: (64, 128, 2, 3), 64: (32, 128, 4, 3)})
    configs._skinny_table.cache_clear()
    try:
        dev = torch.device("cuda", torch.cuda.current_device())
        assert configs.skinny_config(16, 1024, 512, dev) == configs.SkinnyConfig(64, 128, 2, 3)
        assert configs.skinny_config(40, 1024, 512, dev) == configs.SkinnyConfig(32, 128, 4, 3)
        assert configs.skinny_config(65, 1024, 512, dev) is None
        assert configs.skinny_config(16, 1024, 513, dev) is None
        w = torch.randn(1024, 512, device="cuda", dtype=torch.bfloat16) * 512**-0.5
        b = torch.randn(1024, device="cuda", dtype=torch.bfloat16)
        for rows in (3, 40, 65):
            x = torch.randn(rows, 512, device="cuda", dtype=torch.bfloat16)
            ref = x.double() @ w.double().T + b.double()
            assert float((linear(x, w, b).double() - ref).norm() / ref.norm()) < 1.5e-2
    finally:
        configs._skinny_table.cache_clear()
