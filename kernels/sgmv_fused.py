"""One-launch SGMV (Punica's BGMV idea): each program shrinks its tile over the whole K, then expands a column group."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import FusedConfig, fused_group_width
from .meta import LoraMeta
from .sgmv_expand import b_vector, column_slice, slice_ptr

__all__ = ["sgmv_fused"]


@triton.jit
def _sgmv_fused_kernel(
    y_ptr,  # [T, >= sum N_i]: column offsets 0, N0, N0 + N1 of y's view
    x_ptr,  # [T, K]
    a0_ptr,  # [S, R, K] slice 0
    a1_ptr,  # [S, R, K] slice 1 (a0 again when NUM_SLICES < 2)
    a2_ptr,  # [S, R, K] slice 2 (a0 again when NUM_SLICES < 3)
    b0_ptr,  # [S, N0, R] slice 0
    b1_ptr,  # [S, N1, R] slice 1 (b0 again when NUM_SLICES < 2)
    b2_ptr,  # [S, N2, R] slice 2 (b0 again when NUM_SLICES < 3)
    ranks_ptr,  # [NUM_SLICES, S] integer
    scales_ptr,  # [S] float32
    token_order_ptr,  # [>= T] int32: token index at each sorted position
    tile_slot_ptr,  # [> grid tiles] int32
    tile_start_ptr,  # [> grid tiles] int32
    tile_end_ptr,  # [> grid tiles] int32
    num_tiles_ptr,  # [1] int32
    K,
    stride_xt,
    stride_xk,
    stride_as,
    stride_ar,
    stride_ak,
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
    G0: tl.constexpr,  # column groups (N_BLOCKS * BLOCK_N columns each) of slice 0
    G1: tl.constexpr,
    EVEN_N: tl.constexpr,  # every N_i is a multiple of N_BLOCKS * BLOCK_N: no column masks
    EVEN_K: tl.constexpr,  # K is a multiple of BLOCK_K: no K masks
    NUM_SLICES: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    R_VEC: tl.constexpr,  # B's elements per load (sgmv_expand.b_vector)
    BLOCK_N: tl.constexpr,
    N_BLOCKS: tl.constexpr,
    STAGES: tl.constexpr,
    IEEE_DOT: tl.constexpr,  # fp32 inputs: full-precision dot, not tf32
):
    """Semantics: for each tile (tokens p in [start, end) of slot s), slice i with r = ranks[i, s] > 0 and
    column group g of slice i: h = x[order[p]] @ A_i[s, :r].T over the whole K (fp32), then
    y[order[p], off_i + cols_g] += (scales[s] * h) @ B_i[s, cols_g, :r].T.
    Program (g, tile): g runs over the column groups of every slice, slice by slice; tiles past num_tiles
    (read on device) do nothing. Every column group of a tile recomputes h: A comes from L2 after the first."""
    g = tl.program_id(0)
    tile = tl.program_id(1)
    # Three dependent rounds of loads before x and A: the tile's record (with num_tiles), its slot's rank
    # and its token indices, then the data.
    num_tiles = tl.load(num_tiles_ptr)
    slot = tl.load(tile_slot_ptr + tile)
    start = tl.load(tile_start_ptr + tile)
    end = tl.load(tile_end_ptr + tile)
    if tile < num_tiles:  # records past num_tiles are stale: nothing below may read through them
        sl, b_ptr, stride_bs, n_size, n_off, g = column_slice(g, b0_ptr, b1_ptr, b2_ptr, stride_b0s, stride_b1s,
                                                              stride_b2s, N0, N1, N2, G0, G1, NUM_SLICES)
        a_ptr = slice_ptr(sl, a0_ptr, a1_ptr, a2_ptr, NUM_SLICES)
        rank = tl.load(ranks_ptr + sl * stride_rank_slice + slot)
        offs_t = tl.arange(0, BLOCK_T)
        offs_r = tl.arange(0, BLOCK_R)
        offs_k = tl.arange(0, BLOCK_K)
        offs_n = tl.arange(0, BLOCK_N)
        pos = start + offs_t
        t_mask = pos < end
        tok = tl.load(token_order_ptr + pos, mask=t_mask, other=0).to(tl.int64)
        if rank > 0:
            scale = tl.load(scales_ptr + slot)
            r_mask = offs_r < rank
            # B's rank columns load in whole 16-byte groups (one vector load each); the columns past the
            # rank are zeroed before use: the pool's padding is never trusted to be finite.
            r_load = (offs_r // R_VEC) < tl.cdiv(rank, R_VEC)
            n0 = g * (N_BLOCKS * BLOCK_N)
            b_ptrs = (
                b_ptr
                + slot.to(tl.int64) * stride_bs
                + tl.multiple_of((n0 + offs_n)[:, None] * stride_bn, [R_VEC, R_VEC])  # aligned rows (b_vector)
                + offs_r[None, :] * stride_br
            )
            y_ptrs = y_ptr + tok[:, None] * stride_yt + (n_off + n0 + offs_n)[None, :] * stride_yn
            if EVEN_N:
                b_mask = r_load[None, :]
                y_mask = t_mask[:, None]
            else:
                n_mask = (n0 + offs_n) < n_size
                b_mask = n_mask[:, None] & r_load[None, :]
                y_mask = t_mask[:, None] & n_mask[None, :]
            # The first column block's B and y do not depend on the shrink: in flight during it.
            bv = tl.load(b_ptrs, mask=b_mask, other=0.0)
            yv = tl.load(y_ptrs, mask=y_mask, other=0.0)

            x_ptrs = x_ptr + tok[:, None] * stride_xt + offs_k[None, :] * stride_xk
            a_ptrs = a_ptr + slot.to(tl.int64) * stride_as + offs_r[:, None] * stride_ar + offs_k[None, :] * stride_ak
            h = tl.zeros((BLOCK_T, BLOCK_R), dtype=tl.float32)
            for k in tl.range(0, K, BLOCK_K, num_stages=STAGES):
                if EVEN_K:
                    xv = tl.load(x_ptrs, mask=t_mask[:, None], other=0.0)
                    av = tl.load(a_ptrs, mask=r_mask[:, None], other=0.0)
                else:
                    k_mask = (k + offs_k) < K
                    xv = tl.load(x_ptrs, mask=t_mask[:, None] & k_mask[None, :], other=0.0)
                    av = tl.load(a_ptrs, mask=r_mask[:, None] & k_mask[None, :], other=0.0)
                if IEEE_DOT:
                    h = tl.dot(xv, tl.trans(av), h, input_precision="ieee")
                else:
                    h = tl.dot(xv, tl.trans(av), h)
                x_ptrs += BLOCK_K * stride_xk
                a_ptrs += BLOCK_K * stride_ak
            p = (h * scale).to(b_ptr.dtype.element_ty)

            for nb in range(N_BLOCKS):
                bv = tl.where(r_mask[None, :], bv, 0.0)
                if IEEE_DOT:
                    delta = tl.dot(p, tl.trans(bv), input_precision="ieee")
                else:
                    delta = tl.dot(p, tl.trans(bv))
                tl.store(y_ptrs, (yv.to(tl.float32) + delta).to(y_ptr.dtype.element_ty), mask=y_mask)
                # Prefetch the next column block (all masked off after the last one).
                more = nb + 1 < N_BLOCKS
                b_ptrs += BLOCK_N * stride_bn
                y_ptrs += BLOCK_N * stride_yn
                if EVEN_N:
                    b_mask = r_load[None, :] & more
                    y_mask = t_mask[:, None] & more
                else:
                    n_mask = ((n0 + (nb + 1) * BLOCK_N + offs_n) < n_size) & more
                    b_mask = n_mask[:, None] & r_load[None, :]
                    y_mask = t_mask[:, None] & n_mask[None, :]
                bv = tl.load(b_ptrs, mask=b_mask, other=0.0)
                yv = tl.load(y_ptrs, mask=y_mask, other=0.0)


def sgmv_fused(
    y: torch.Tensor,  # [T, sum N_i]
    x: torch.Tensor,  # [T, K]
    lora_a: tuple[torch.Tensor, ...],  # n <= 3 x [S, R, K], one shape and strides
    lora_b: tuple[torch.Tensor, ...],  # n x [S, N_i, R], one stride(1) and stride(2)
    ranks: torch.Tensor,  # [n, S] integer
    scales: torch.Tensor,  # [S] float32
    meta: LoraMeta,
    cfg: FusedConfig,
) -> torch.Tensor:
    """Launch the one-kernel shrink + expand into y in place; returns y. Inputs are checked by the caller."""
    num_slices = len(lora_a)
    a0, b0 = lora_a[0], lora_b[0]
    k = x.shape[1]
    widths = [b.shape[1] for b in lora_b] + [0] * (3 - num_slices)
    block_r = max(16, triton.next_power_of_2(a0.shape[1]))
    block_k = min(cfg.block_k, max(16, triton.next_power_of_2(k)))
    # The pipelined K loop keeps stages - 1 tiles of x and A in shared memory: at most 128 KB of them.
    while block_k > 32 and (meta.block_t + block_r) * block_k * x.element_size() * max(cfg.stages - 1, 1) > 128 << 10:
        block_k //= 2
    group = fused_group_width(cfg, a0.shape[1], tuple(widths[:num_slices]))
    block_n = group // cfg.n_blocks
    groups = [triton.cdiv(n, group) for n in widths]
    tiles = meta.max_tiles(a0.shape[0])
    if tiles == 0:
        return y
    if tiles > 65535:
        raise ValueError(f"the one-launch path takes at most 65535 tiles, got a bound of {tiles}")
    a1, b1 = (lora_a[1], lora_b[1]) if num_slices > 1 else (a0, b0)
    a2, b2 = (lora_a[2], lora_b[2]) if num_slices > 2 else (a0, b0)
    # Column groups on the fast axis: every group of a live tile is dispatched before any dead tile.
    _sgmv_fused_kernel[(sum(groups), tiles)](
        y,
        x,
        a0,
        a1,
        a2,
        b0,
        b1,
        b2,
        ranks,
        scales,
        meta.token_order,
        meta.tile_slot,
        meta.tile_start,
        meta.tile_end,
        meta.num_tiles,
        k,
        x.stride(0),
        x.stride(1),
        a0.stride(0),
        a0.stride(1),
        a0.stride(2),
        y.stride(0),
        y.stride(1),
        b0.stride(0),
        b1.stride(0),
        b2.stride(0),
        b0.stride(1),
        b0.stride(2),
        ranks.stride(0),
        N0=widths[0],
        N1=widths[1],
        N2=widths[2],
        G0=groups[0],
        G1=groups[1],
        EVEN_N=all(n % group == 0 for n in widths),
        EVEN_K=k % block_k == 0,
        NUM_SLICES=num_slices,
        BLOCK_T=meta.block_t,
        BLOCK_R=block_r,
        BLOCK_K=block_k,
        R_VEC=b_vector(b0),
        BLOCK_N=block_n,
        N_BLOCKS=cfg.n_blocks,
        STAGES=cfg.stages,
        IEEE_DOT=x.dtype == torch.float32,
        num_warps=cfg.warps,
    )
    return y
