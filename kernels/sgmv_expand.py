"""SGMV expand: y[t, slice columns] += scale * (sum of the shrink's partials) @ B[slot, :, :rank].T per tile."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import SgmvConfig, num_sms
from .meta import LoraMeta

__all__ = ["b_vector", "column_slice", "sgmv_expand", "slice_ptr", "split_group"]


def b_vector(b: torch.Tensor) -> int:
    """Elements of B [S, N, R] the kernels load at once along R: 16 bytes' worth where every row starts at a
    multiple of that (stride(1), the pool's padded rank, a multiple of it; R contiguous), else 1. A pool
    padded to rank 8 in bf16 has 16-byte rows: without the hint the compiler loads them 2 bytes at a time."""
    vec = 16 // b.element_size()
    return vec if b.stride(1) % vec == 0 and b.stride(2) == 1 else 1


def split_group(split_k: int) -> int:
    """Splits the expand sums per unrolled group of loads (all in flight at once): at most 16."""
    return min(split_k, 16)


@triton.jit
def slice_ptr(sl, p0, p1, p2, NUM_SLICES: tl.constexpr):
    """Slice sl's tensor of up to three (p1, p2 unused below NUM_SLICES slices), by branches on sl."""
    p = p0
    if NUM_SLICES > 1:
        if sl == 1:
            p = p1
    if NUM_SLICES > 2:
        if sl == 2:
            p = p2
    return p


@triton.jit
def column_slice(
    g,  # a column group (or block) index over every slice's groups
    b0_ptr,
    b1_ptr,
    b2_ptr,
    stride_b0s,
    stride_b1s,
    stride_b2s,
    N0: tl.constexpr,
    N1: tl.constexpr,
    N2: tl.constexpr,
    G0: tl.constexpr,
    G1: tl.constexpr,
    NUM_SLICES: tl.constexpr,
):
    """The slice that column group g falls in (groups run slice by slice: [0, G0) is slice 0, then G1 groups of
    slice 1, then slice 2's): (slice, its B, B's slot stride, its width, its first column in y, g within it)."""
    sl = tl.where(g >= G0, 1, 0) + tl.where(g >= G0 + G1, 1, 0)
    b_ptr = slice_ptr(sl, b0_ptr, b1_ptr, b2_ptr, NUM_SLICES)
    stride_bs = tl.where(sl == 0, stride_b0s, tl.where(sl == 1, stride_b1s, stride_b2s))
    n_size = tl.where(sl == 0, N0, tl.where(sl == 1, N1, N2))
    n_off = tl.where(sl == 0, 0, tl.where(sl == 1, N0, N0 + N1))
    g -= tl.where(sl == 0, 0, tl.where(sl == 1, G0, G0 + G1))
    return sl, b_ptr, stride_bs, n_size, n_off, g


@triton.jit
def _sum_splits(
    ws_ptrs,  # [BLOCK_T, BLOCK_R] pointers into split 0 of the workspace
    mask,  # [BLOCK_T, 1] rows to read
    split_stride,  # elements between two splits
    SPLIT_K: tl.constexpr,
    SPLIT_GROUP: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """sum_j ws[j] over the SPLIT_K splits in fp32, SPLIT_GROUP unrolled loads at a time; .cg: the shrink
    wrote them, L2 has them, this SM's L1 may hold stale lines."""
    p = tl.zeros((BLOCK_T, BLOCK_R), dtype=tl.float32)
    for j0 in range(0, SPLIT_K, SPLIT_GROUP):
        for j in tl.static_range(SPLIT_GROUP):
            if SPLIT_K % SPLIT_GROUP == 0:
                p += tl.load(ws_ptrs + (j0 + j) * split_stride, mask=mask, other=0.0, cache_modifier=".cg")
            else:
                p += tl.load(ws_ptrs + (j0 + j) * split_stride, mask=mask & (j0 + j < SPLIT_K), other=0.0,
                             cache_modifier=".cg")
    return p


# T and the work-item bounds change with the batch: unspecialised, one compiled variant serves every size.
@triton.jit(do_not_specialize=["T", "max_items"])
def _sgmv_expand_kernel(
    y_ptr,  # [T, >= sum N_i]: column offsets 0, N0, N0 + N1 of y's view
    b0_ptr,  # [S, N0, R] slice 0
    b1_ptr,  # [S, N1, R] slice 1 (b0 again when NUM_SLICES < 2)
    b2_ptr,  # [S, N2, R] slice 2 (b0 again when NUM_SLICES < 3)
    ranks_ptr,  # [NUM_SLICES, S] integer
    scales_ptr,  # [S] float32
    ws_ptr,  # [SPLIT_K, NUM_SLICES, T, BLOCK_R] fp32, from the shrink
    token_order_ptr,  # [>= T] int32
    tile_slot_ptr,  # [>= num_tiles] int32
    tile_start_ptr,  # [>= num_tiles] int32
    tile_end_ptr,  # [>= num_tiles] int32
    num_tiles_ptr,  # [1] int32
    max_items,  # host bound on num_tiles * (G0 + G1 + G2)
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
    G0: tl.constexpr,  # work items (column groups of N_BLOCKS * BLOCK_N) of slice 0
    G1: tl.constexpr,
    G2: tl.constexpr,
    EVEN_N: tl.constexpr,  # every N_i is a multiple of N_BLOCKS * BLOCK_N: no column masks
    NUM_SLICES: tl.constexpr,
    SPLIT_K: tl.constexpr,
    SPLIT_GROUP: tl.constexpr,  # splits summed per unrolled group: min(SPLIT_K, 16)
    BLOCK_T: tl.constexpr,
    BLOCK_R: tl.constexpr,
    R_VEC: tl.constexpr,  # B's elements per load: 16 bytes where each row starts aligned to them (b_vector)
    BLOCK_N: tl.constexpr,
    N_BLOCKS: tl.constexpr,
    IEEE_DOT: tl.constexpr,  # fp32 inputs: full-precision dot, not tf32
    PDL_WAIT: tl.constexpr,  # launched with PDL: wait for the shrink before reading ws
):
    """Semantics: for each tile (tokens p in [start, end) of slot s), slice i with r = ranks[i, s] > 0 and
    column group g: y[order[p], off_i + cols_g] += scales[s] * sum_j ws[j, i, p, :r] @ B_i[s, cols_g, :r].T.
    Work items (tile, column group) are strided over the programs up to a host bound; items of tiles
    past num_tiles (read on device) do nothing."""
    groups: tl.constexpr = G0 + G1 + G2
    # As in the shrink, the loads go in as few dependent rounds as possible; B and y of the first column
    # block do not depend on the shrink, so they are in flight before the PDL wait.
    num_tiles = tl.load(num_tiles_ptr)
    offs_t = tl.arange(0, BLOCK_T)
    offs_r = tl.arange(0, BLOCK_R)
    offs_n = tl.arange(0, BLOCK_N)
    for w in range(tl.program_id(0), max_items, tl.num_programs(0)):
        tile = w // groups
        sl, b_ptr, stride_bs, n_size, n_off, g = column_slice(w % groups, b0_ptr, b1_ptr, b2_ptr, stride_b0s,
                                                               stride_b1s, stride_b2s, N0, N1, N2, G0, G1, NUM_SLICES)
        live = tile < num_tiles  # records past num_tiles are stale: mask every load through them
        slot = tl.load(tile_slot_ptr + tile)
        pos = tl.load(tile_start_ptr + tile) + offs_t
        t_mask = (pos < tl.load(tile_end_ptr + tile)) & live
        rank = tl.load(ranks_ptr + sl * stride_rank_slice + slot, mask=live, other=0)
        scale = tl.load(scales_ptr + slot, mask=live, other=0.0)
        tok = tl.load(token_order_ptr + pos, mask=t_mask, other=0).to(tl.int64)
        if rank > 0:
            r_mask = offs_r < rank
            # Load B's rank columns in whole 16-byte groups (one vector load each), then zero the
            # columns past the rank: the pool's padding is never trusted to be finite.
            r_load = (offs_r // R_VEC) < tl.cdiv(rank, R_VEC)
            n0 = g * (N_BLOCKS * BLOCK_N)
            # B's rows start R_VEC-aligned (the host checked stride_bn): lets the loads go 16 bytes at a time.
            b_rows = tl.multiple_of((n0 + offs_n)[:, None] * stride_bn, [R_VEC, R_VEC])
            b_ptrs = b_ptr + slot.to(tl.int64) * stride_bs + b_rows + offs_r[None, :] * stride_br
            y_ptrs = y_ptr + tok[:, None] * stride_yt + (n_off + n0 + offs_n)[None, :] * stride_yn
            if EVEN_N:
                b_mask = r_load[None, :]
                y_mask = t_mask[:, None]
            else:
                n_mask = (n0 + offs_n) < n_size
                b_mask = n_mask[:, None] & r_load[None, :]
                y_mask = t_mask[:, None] & n_mask[None, :]
            bv = tl.load(b_ptrs, mask=b_mask, other=0.0)
            yv = tl.load(y_ptrs, mask=y_mask, other=0.0)
            if PDL_WAIT:
                tl.extra.cuda.gdc_wait()
            # The split-K partials, in unrolled groups so that a group's loads are in flight at once.
            ws_ptrs = ws_ptr + (sl * T + pos)[:, None] * BLOCK_R + offs_r[None, :]
            p = _sum_splits(ws_ptrs, t_mask[:, None], NUM_SLICES * T * BLOCK_R, SPLIT_K, SPLIT_GROUP, BLOCK_T, BLOCK_R)
            p = (p * scale).to(b_ptr.dtype.element_ty)
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


def sgmv_expand(
    y: torch.Tensor,  # [T, sum N_i]
    lora_b: tuple[torch.Tensor, ...],  # n <= 3 x [S, N_i, R], one stride(1) and stride(2)
    ranks: torch.Tensor,  # [n, S] integer
    scales: torch.Tensor,  # [S] float32
    ws: torch.Tensor,  # [split_k, n, T, block_r] fp32 from sgmv_shrink
    meta: LoraMeta,
    cfg: SgmvConfig,
    pdl: bool = False,
) -> torch.Tensor:
    """Launch the expand into y in place; returns y. `pdl` launches it as a programmatic dependent
    launch of the shrink (which must have been launched with pdl=True too)."""
    num_slices = len(lora_b)
    b0 = lora_b[0]
    widths = [b.shape[1] for b in lora_b] + [0] * (3 - num_slices)
    block_r = ws.shape[3]
    block_n = min(cfg.block_n, 8192 // block_r, max(16, triton.next_power_of_2(max(widths))))
    group = block_n * cfg.n_blocks
    groups = [triton.cdiv(n, group) for n in widths]
    max_items = meta.max_tiles(b0.shape[0]) * sum(groups)
    if max_items == 0:
        return y
    grid = (min(max_items, num_sms(y.device) * cfg.programs_per_sm),)
    b1 = lora_b[1] if num_slices > 1 else b0
    b2 = lora_b[2] if num_slices > 2 else b0
    _sgmv_expand_kernel[grid](
        y,
        b0,
        b1,
        b2,
        ranks,
        scales,
        ws,
        meta.token_order,
        meta.tile_slot,
        meta.tile_start,
        meta.tile_end,
        meta.num_tiles,
        max_items,
        y.shape[0],
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
        G2=groups[2],
        EVEN_N=all(n % group == 0 for n in widths),
        NUM_SLICES=num_slices,
        SPLIT_K=ws.shape[0],
        SPLIT_GROUP=split_group(ws.shape[0]),
        BLOCK_T=meta.block_t,
        BLOCK_R=block_r,
        R_VEC=b_vector(b0),
        BLOCK_N=block_n,
        N_BLOCKS=cfg.n_blocks,
        IEEE_DOT=b0.dtype == torch.float32,
        PDL_WAIT=pdl,
        num_warps=cfg.expand_warps,
        **({"launch_pdl": True} if pdl else {}),
    )
    return y
