"""The decoder's PDL-launched kernels (kernels/pdl.py) read what the kernel right before them wrote.

A chain shaped like a decode layer — cuBLAS matmuls and the kernels that launch programmatically (norm,
rotary + KV write, paged attention, SiLU-and-mul, the split-K matmul) — is captured once and replayed over
new inputs; every stage's output is checked against a float32 torch computation of the same inputs. A
kernel that read before its wait would read its input buffer as the previous replay left it (other random
values), an O(1) relative error where the chain's rounding is below 3%. The kernels that release their
successor at their start (rotary before attention, SiLU before the split-K matmul, the split-K matmul before
the norm) are where such a read could happen at all.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def test_pdl_chain_in_a_cuda_graph_reads_fresh_inputs() -> None:
    from loraledger.kernels import fused_ops as ops
    from loraledger.kernels.configs import SkinnyConfig, launches_pdl
    from loraledger.kernels.paged_attention import paged_attention
    from loraledger.kernels.skinny_matmul import skinny_matmul

    dev = torch.device("cuda")
    if not launches_pdl(dev):
        pytest.skip("PDL needs compute capability 9.0 or later")
    dt = torch.bfloat16
    t, hidden, heads, kv_heads, d, inter, k_in = 64, 2048, 32, 8, 64, 8192, 16384
    block, blocks_per_seq, ctx = 16, 8, 100
    gen = torch.Generator(device="cuda").manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(shape, device="cuda", generator=gen) * scale).to(dt)

    w_in = rand(hidden, k_in, scale=k_in**-0.5)  # a long matmul (K = 16384) writes the first norm's input
    w_qkv = rand((heads + 2 * kv_heads) * d, hidden, scale=hidden**-0.5)
    w_gu = rand(2 * inter, heads * d, scale=(heads * d) ** -0.5)
    w_down = rand(hidden, inter, scale=inter**-0.5)
    norm_w = (torch.rand(hidden, device="cuda", generator=gen) + 0.5).to(dt)
    num_blocks = t * blocks_per_seq
    k_cache = rand(num_blocks, block, kv_heads, d)
    v_cache = rand(num_blocks, block, kv_heads, d)
    tables = torch.randperm(num_blocks, device="cuda", generator=gen).view(t, blocks_per_seq).to(torch.int32)
    lens = torch.full((t,), ctx, device="cuda", dtype=torch.int32)
    pos = ctx - 1
    slots = (tables[:, pos // block].long() * block + pos % block).contiguous()
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d, 2, device="cuda").float() / d))
    freqs = torch.cat((pos * inv_freq, pos * inv_freq))[None, :].expand(t, d)
    cos, sin = freqs.cos().to(dt).contiguous(), freqs.sin().to(dt).contiguous()
    a = torch.empty(t, k_in, device="cuda", dtype=dt)
    residual = torch.empty(t, hidden, device="cuda", dtype=dt)
    skinny = SkinnyConfig(block_n=32, block_k=256, split_k=4, stages=3)

    def chain():
        h = torch.mm(a, w_in.T)
        ops.fused_add_rms_norm(h, residual, norm_w, 1e-5)
        qkv = torch.mm(h, w_qkv.T)
        qk = qkv[:, : (heads + kv_heads) * d].view(t, heads + kv_heads, d)
        v = qkv[:, (heads + kv_heads) * d :].view(t, kv_heads, d)
        ops.rotary_embedding_and_cache(qk, v, cos, sin, k_cache.view(-1, kv_heads, d), v_cache.view(-1, kv_heads, d),
                                       slots)  # fmt: skip
        attn = paged_attention(qk[:, :heads], k_cache, v_cache, tables, lens, d**-0.5, max_context_len=ctx)
        act = ops.silu_and_mul(torch.mm(attn.reshape(t, heads * d), w_gu.T))
        down = skinny_matmul(act, w_down, None, skinny)
        return h, qk, attn, act, down, ops.rms_norm(down, norm_w, 1e-5)

    def reference(a0: torch.Tensor, res0: torch.Tensor, kc0: torch.Tensor, vc0: torch.Tensor):
        h, new_res = ops.fused_add_rms_norm_ref((a0.float() @ w_in.float().T).to(dt), res0, norm_w, 1e-5)
        qkv = (h.float() @ w_qkv.float().T).to(dt)
        qk = ops.rope_ref(qkv[:, : (heads + kv_heads) * d].view(t, heads + kv_heads, d), cos, sin)
        v = qkv[:, (heads + kv_heads) * d :].view(t, kv_heads, d)
        kc, vc = kc0.clone().view(-1, kv_heads, d), vc0.clone().view(-1, kv_heads, d)
        kc[slots], vc[slots] = qk[:, heads:], v
        rows = (tables.long()[:, :, None] * block + torch.arange(block, device="cuda")).view(t, -1)[:, :ctx]
        keys = kc[rows].float().repeat_interleave(heads // kv_heads, dim=2)  # [t, ctx, heads, d]
        values = vc[rows].float().repeat_interleave(heads // kv_heads, dim=2)
        scores = torch.einsum("thd,tjhd->thj", qk[:, :heads].float(), keys) * d**-0.5
        attn = torch.einsum("thj,tjhd->thd", scores.softmax(-1), values).to(dt)
        act = ops.silu_and_mul_ref((attn.reshape(t, -1).float() @ w_gu.float().T).to(dt))
        down = (act.float() @ w_down.float().T).to(dt)
        return h, qk, attn, act, down, ops.rms_norm_ref(down, norm_w, 1e-5), new_res

    def fill() -> tuple[torch.Tensor, ...]:
        a.copy_(rand(t, k_in))
        residual.copy_(rand(t, hidden))
        return a.clone(), residual.clone(), k_cache.clone(), v_cache.clone()

    fill()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        chain()  # Triton compiles and cuBLAS picks its kernels outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = chain()
    names = ("norm", "rotary", "attention", "silu_and_mul", "split-K matmul", "last norm")
    for _ in range(20):
        inputs = fill()
        graph.replay()
        torch.cuda.synchronize()
        *wants, want_res = reference(*inputs)
        for name, got, want in zip(names, outs, wants):
            assert _rel_err(got, want) < 0.03, (name, _rel_err(got, want))
        assert _rel_err(residual, want_res) < 0.01
