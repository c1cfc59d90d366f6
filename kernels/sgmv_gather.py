"""Token-gather SGMV for small batches: each program takes a few tokens in batch order and gathers their own
adapters' rows, with no sorted metadata (token_slots is read directly).

The tile kernels (sgmv_shrink / sgmv_expand) sort tokens into one-slot tiles so that a tile reads its
adapter once for all its tokens, with a tensor-core dot. In a decode batch of many adapters a tile holds one
token: the dot works on one row of sixteen and each work item waits on a chain of dependent loads (tile
record, then rank and token, then data) before its few kilobytes move. Here a program's loads depend on one
round (the tokens' slots) and move [tokens, rows, K chunk] of A or [tokens, columns, rank] of B at once;
the products are fp32 multiply-adds over registers. Tokens that share an adapter read its rows more than
once, from L2 after the first: the path is for small batches whose tokens mostly have adapters of their own
(configs.prefers_gather: at most GatherConfig.max_tokens tokens, distinct adapters at least min_adapter_share
of them).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import GatherConfig
from .sgmv_expand import b_vector, column_slice, slice_ptr

__all__ = ["gather_plan", "sgmv_gather"]


def gather_plan(k: int, cfg: GatherConfig, block_r: int) -> tuple[int, int, int]:
    """(block_k, k_chunk, split_k) of the shrink for K = k: chunks of cfg.k_chunk elements walked in
    cfg.block_k steps (both shrunk to K's next power of two for a short K; the step to at most 8192 elements
    of A per token, block_r rows of it: a pool padded to a wide rank takes narrower steps)."""
    k_pow2 = max(16, triton.next_power_of_2(k))
    block_k = min(cfg.block_k, k_pow2, max(16, 8192 // block_r))
    k_chunk = max(block_k, min(cfg.k_chunk, k_pow2) // block_k * block_k)
    return block_k, k_chunk, triton.cdiv(k, k_chunk)


@triton.jit(do_not_specialize=["T"])
def _gather_shrink_kernel(
    x_ptr,  # [T, K]
    a0_ptr,  # [S, R, K] slice 0
    a1_ptr,  # [S, R, K] slice 1 (a0 again when NUM_SLICES < 2)
    a2_ptr,  # [S, R, K] slice 2 (a0 again when NUM_SLICES < 3)
    ranks_ptr,  # [NUM_SLICES, S] integer
    slots_ptr,  # [T] integer, -1 = no adapter
    ws_ptr,  # [SPLIT_K, NUM_SLICES, T, BLOCK_R] fp32, written for every token t < T
    T,
    K,
    stride_xt,
    stride_xk,
    stride_as,
    stride_ar,
    stride_ak,
    stride_rank_slice,
    NUM_SLICES: tl.constexpr,
    SPLIT_K: tl.constexpr,
    K_CHUNK: tl.constexpr,  # a multiple of BLOCK_K; SPLIT_K * K_CHUNK >= K
    EVEN_K: tl.constexpr,  # K == SPLIT_K * K_CHUNK: no K masks
    TOKENS: tl.constexpr,  # tokens per program
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    LAUNCH_DEPENDENTS: tl.constexpr,  # let a PDL-launched expand start now
):
    """Semantics: for tokens t of program (i, j, sl) (t in [i * TOKENS, (i + 1) * TOKENS)), s = slots[t] and
    r = ranks[sl, s]: ws[j, sl, t, :] = x[t, Kj] @ A_sl[s, :r, Kj].T over K range Kj = j * K_CHUNK + [0, K_CHUNK),
    zero past r and for tokens of slot -1 or rank 0 (which read nothing)."""
    if LAUNCH_DEPENDENTS:
        tl.extra.cuda.gdc_launch_dependents()
    split = tl.program_id(1)
    sl = tl.program_id(2)
    offs_t = tl.program_id(0) * TOKENS + tl.arange(0, TOKENS)
    offs_r = tl.arange(0, BLOCK_R)
    offs_k = tl.arange(0, BLOCK_K)
    t_in = offs_t < T
    slot = tl.load(slots_ptr + offs_t, mask=t_in, other=-1)
    has = slot >= 0
    slot = tl.where(has, slot, 0).to(tl.int64)
    rank = tl.load(ranks_ptr + sl * stride_rank_slice + slot, mask=has, other=0)  # [TOKENS]
    live = rank > 0
    a_ptr = slice_ptr(sl, a0_ptr, a1_ptr, a2_ptr, NUM_SLICES)
    k0 = split * K_CHUNK
    x_ptrs = x_ptr + offs_t.to(tl.int64)[:, None] * stride_xt + (k0 + offs_k)[None, :] * stride_xk
    a_ptrs = (
        a_ptr
        + slot[:, None, None] * stride_as
        + offs_r[None, :, None] * stride_ar
        + (k0 + offs_k)[None, None, :] * stride_ak
    )
    a_rows = (offs_r[None, :] < rank[:, None])[:, :, None]  # [TOKENS, BLOCK_R, 1]: A's rows up to the rank
    acc = tl.zeros((TOKENS, BLOCK_R, BLOCK_K), dtype=tl.float32)
    for k in tl.static_range(0, K_CHUNK, BLOCK_K):
        if EVEN_K:
            xv = tl.load(x_ptrs + k * stride_xk, mask=live[:, None], other=0.0)
            av = tl.load(a_ptrs + k * stride_ak, mask=a_rows, other=0.0)
        else:
            k_in = (k0 + k + offs_k) < K
            xv = tl.load(x_ptrs + k * stride_xk, mask=live[:, None] & k_in[None, :], other=0.0)
            av = tl.load(a_ptrs + k * stride_ak, mask=a_rows & k_in[None, None, :], other=0.0)
        acc += xv.to(tl.float32)[:, None, :] * av.to(tl.float32)
    part = tl.sum(acc, axis=2)  # [TOKENS, BLOCK_R]
    ws_ptrs = ws_ptr + ((split * NUM_SLICES + sl) * T + offs_t)[:, None] * BLOCK_R + offs_r[None, :]
    tl.store(ws_ptrs, part, mask=t_in[:, None])


@triton.jit(do_not_specialize=["T"])
def _gather_expand_kernel(
    y_ptr,  # [T, >= sum N_i]: column offsets 0, N0, N0 + N1 of y's view
    b0_ptr,  # [S, N0, R] slice 0
    b1_ptr,  # [S, N1, R] slice 1 (b0 again when NUM_SLICES < 2)
    b2_ptr,  # [S, N2, R] slice 2 (b0 again when NUM_SLICES < 3)
    ranks_ptr,  # [NUM_SLICES, S] integer
    scales_ptr,  # [S] float32
    slots_ptr,  # [T] integer, -1 = no adapter
    ws_ptr,  # [SPLIT_K, NUM_SLICES, T, BLOCK_R] fp32, from the shrink
    T,
    stride_yt,
    stride_yn,
    stride_b0s,
    stride_b1s,
    stride_b2s,
    stride_bn,
    stride_br,
    stride_rank_slice,
    N0: tl.constexpr,
    N1: tl.constexpr,
    N2: tl.constexpr,
    G0: tl.constexpr,  # column blocks of slice 0
    G1: tl.constexpr,  # of slice 1 (slice 2's follow)
    EVEN_N: tl.constexpr,  # every N_i is a multiple of BLOCK_N: no column masks
    NUM_SLICES: tl.constexpr,
    SPLIT_K: tl.constexpr,
    TOKENS: tl.constexpr,  # tokens per program
    BLOCK_R: tl.constexpr,
    R_VEC: tl.constexpr,  # B's elements per load: 16 bytes where each row starts aligned to them (b_vector)
    BLOCK_N: tl.constexpr,
    PDL_WAIT: tl.constexpr,  # launched with PDL: wait for the shrink before reading ws
):
    """Semantics: for tokens t of program (g, i), s = slots[t], the slice sl and columns of column block g,
    r = ranks[sl, s] > 0: y[t, off_sl + cols] += scales[s] * (sum_j ws[j, sl, t, :r]) @ B_sl[s, cols, :r].T."""
    g = tl.program_id(0)
    offs_t = tl.program_id(1) * TOKENS + tl.arange(0, TOKENS)
    offs_r = tl.arange(0, BLOCK_R)
    offs_n = tl.arange(0, BLOCK_N)
    sl, b_ptr, stride_bs, n_size, n_off, g = column_slice(g, b0_ptr, b1_ptr, b2_ptr, stride_b0s, stride_b1s,
                                                           stride_b2s, N0, N1, N2, G0, G1, NUM_SLICES)
    t_in = offs_t < T
    slot = tl.load(slots_ptr + offs_t, mask=t_in, other=-1)
    has = slot >= 0
    slot = tl.where(has, slot, 0).to(tl.int64)
    rank = tl.load(ranks_ptr + sl * stride_rank_slice + slot, mask=has, other=0)  # [TOKENS]
    scale = tl.load(scales_ptr + slot, mask=has, other=0.0)
    live = rank > 0
    n = g * BLOCK_N + offs_n
    # B's rank columns in whole 16-byte groups (one vector load each); the columns past the rank are zeroed
    # below: the pool's padding is never trusted to be finite.
    r_load = (offs_r[None, :] // R_VEC) < ((rank + R_VEC - 1) // R_VEC)[:, None]  # [TOKENS, BLOCK_R]
    b_rows = tl.multiple_of(n * stride_bn, R_VEC)  # rows start R_VEC-aligned (the host checked stride_bn)
    b_ptrs = b_ptr + slot[:, None, None] * stride_bs + b_rows[None, :, None] + offs_r[None, None, :] * stride_br
    y_ptrs = y_ptr + offs_t.to(tl.int64)[:, None] * stride_yt + (n_off + n)[None, :] * stride_yn
    if EVEN_N:
        b_mask = r_load[:, None, :]
        y_mask = live[:, None]
    else:
        n_in = n < n_size
        b_mask = r_load[:, None, :] & n_in[None, :, None]
        y_mask = live[:, None] & n_in[None, :]
    bv = tl.load(b_ptrs, mask=b_mask, other=0.0)  # [TOKENS, BLOCK_N, BLOCK_R]; B and y do not need the shrink
    yv = tl.load(y_ptrs, mask=y_mask, other=0.0)
    if PDL_WAIT:
        tl.extra.cuda.gdc_wait()
    ws_ptrs = ws_ptr + (sl * T + offs_t)[:, None] * BLOCK_R + offs_r[None, :]
    p = tl.zeros((TOKENS, BLOCK_R), dtype=tl.float32)
    for j in tl.static_range(SPLIT_K):  # every split's load in flight at once; .cg: L2 has the shrink's writes
        p += tl.load(ws_ptrs + j * (NUM_SLICES * T * BLOCK_R), mask=live[:, None], other=0.0, cache_modifier=".cg")
    r_in = offs_r[None, :] < rank[:, None]
    p = tl.where(r_in, p * scale[:, None], 0.0)
    bv = tl.where(r_in[:, None, :], bv.to(tl.float32), 0.0)
    delta = tl.sum(p[:, None, :] * bv, axis=2)  # [TOKENS, BLOCK_N]
    tl.store(y_ptrs, (yv.to(tl.float32) + delta).to(y_ptr.dtype.element_ty), mask=y_mask)


def sgmv_gather(
    y: torch.Tensor,  # [T, sum N_i]
    x: torch.Tensor,  # [T, K]
    lora_a: tuple[torch.Tensor, ...],  # n <= 3 x [S, R, K], one shape and strides
    lora_b: tuple[torch.Tensor, ...],  # n x [S, N_i, R], one stride(1) and stride(2)
    ranks: torch.Tensor,  # [n, S] integer
    scales: torch.Tensor,  # [S] float32
    token_slots: torch.Tensor,  # [T] integer, -1 = no adapter
    cfg: GatherConfig,
) -> torch.Tensor:
    """The shrink then the expand, both gathering per token (a programmatic dependent launch where cfg.pdl
    and the device allow), on inputs that sgmv.check_inputs checked; returns y."""
    t, k = x.shape
    if t == 0:
        return y
    num_slices = len(lora_a)
    a0, b0 = lora_a[0], lora_b[0]
    r_vec = b_vector(b0)
    block_r = max(4, r_vec, triton.next_power_of_2(a0.shape[1]))
    block_k, k_chunk, split_k = gather_plan(k, cfg, block_r)
    ws = torch.empty((split_k, num_slices, t, block_r), dtype=torch.float32, device=x.device)
    pdl = cfg.pdl and x.is_cuda
    a1 = lora_a[1] if num_slices > 1 else a0
    a2 = lora_a[2] if num_slices > 2 else a0
    _gather_shrink_kernel[(triton.cdiv(t, cfg.shrink_tokens), split_k, num_slices)](
        x, a0, a1, a2, ranks, token_slots, ws, t, k,
        x.stride(0), x.stride(1), a0.stride(0), a0.stride(1), a0.stride(2), ranks.stride(0),
        NUM_SLICES=num_slices, SPLIT_K=split_k, K_CHUNK=k_chunk, EVEN_K=split_k * k_chunk == k,
        TOKENS=cfg.shrink_tokens, BLOCK_R=block_r, BLOCK_K=block_k, LAUNCH_DEPENDENTS=pdl,
        num_warps=cfg.shrink_warps,
    )  # fmt: skip
    widths = [b.shape[1] for b in lora_b] + [0] * (3 - num_slices)
    block_n = min(cfg.block_n, max(16, triton.next_power_of_2(max(widths))), max(16, 16384 // block_r))
    groups = [triton.cdiv(n, block_n) for n in widths]
    b1 = lora_b[1] if num_slices > 1 else b0
    b2 = lora_b[2] if num_slices > 2 else b0
    _gather_expand_kernel[(sum(groups), triton.cdiv(t, cfg.expand_tokens))](
        y, b0, b1, b2, ranks, scales, token_slots, ws, t,
        y.stride(0), y.stride(1), b0.stride(0), b1.stride(0), b2.stride(0), b0.stride(1), b0.stride(2),
        ranks.stride(0),
        N0=widths[0], N1=widths[1], N2=widths[2], G0=groups[0], G1=groups[1],
        EVEN_N=all(n % block_n == 0 for n in widths), NUM_SLICES=num_slices, SPLIT_K=split_k,
        TOKENS=cfg.expand_tokens, BLOCK_R=block_r, R_VEC=r_vec, BLOCK_N=block_n, PDL_WAIT=pdl,
        num_warps=cfg.expand_warps, **({"launch_pdl": True} if pdl else {}),
    )  # fmt: skip
    return y
