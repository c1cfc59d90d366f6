"""Cooperative SGMV: the split-K shrink and the expand in one persistent launch, a grid barrier between."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import SgmvConfig, num_sms, shrink_stages
from .meta import LoraMeta
from .sgmv_expand import _sum_splits, b_vector, split_group
from .sgmv_shrink import _shrink_item, split_plan

__all__ = ["BARRIER_SPAN", "sgmv_coop"]

# Every launch advances the grid barrier's counter by exactly this much (a power of two >= the grid).
BARRIER_SPAN = 1024


@triton.jit
def _expand_load(
    w,  # work item (tile, column group); w >= max_items loads nothing
    max_items,
    num_tiles,
    y_ptr,
    b0_ptr,
    b1_ptr,
    b2_ptr,
    ranks_ptr,
    scales_ptr,
    ws_ptr,
    token_order_ptr,
    tile_slot_ptr,
    tile_start_ptr,
    tile_end_ptr,
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
    G0: tl.constexpr,
    G1: tl.constexpr,
    G2: tl.constexpr,
    NUM_SLICES: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_R: tl.constexpr,
    R_VEC: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The loads of one expand item that do not read the workspace: its record, rank, scale and token
    indices, B's tile and y's tile. Masks, not branches, so that the first item's loads can be in flight
    across the grid barrier; a rank-0 (or dead) item reads no B or y and writes nothing."""
    groups: tl.constexpr = G0 + G1 + G2
    offs_t = tl.arange(0, BLOCK_T)
    offs_r = tl.arange(0, BLOCK_R)
    offs_n = tl.arange(0, BLOCK_N)
    exists = w < max_items
    tile = tl.where(exists, w // groups, 0)
    g = w % groups
    # Column groups run slice by slice: g in [0, G0) is slice 0, then G1 groups of slice 1, ...
    sl = (g >= G0).to(tl.int32) + (g >= G0 + G1).to(tl.int32)
    b_ptr = tl.where(sl == 0, b0_ptr, tl.where(sl == 1, b1_ptr, b2_ptr))  # b1, b2 are b0 for fewer slices
    stride_bs = tl.where(sl == 0, stride_b0s, tl.where(sl == 1, stride_b1s, stride_b2s))
    n_size = tl.where(sl == 0, N0, tl.where(sl == 1, N1, N2))
    n_off = tl.where(sl == 0, 0, tl.where(sl == 1, N0, N0 + N1))
    g -= tl.where(sl == 0, 0, tl.where(sl == 1, G0, G0 + G1))
    live = exists & (tile < num_tiles)  # records past num_tiles are stale: mask every load through them
    slot = tl.load(tile_slot_ptr + tile)
    pos = tl.load(tile_start_ptr + tile) + offs_t
    t_mask = (pos < tl.load(tile_end_ptr + tile)) & live
    rank = tl.load(ranks_ptr + sl * stride_rank_slice + slot, mask=live, other=0)
    scale = tl.load(scales_ptr + slot, mask=live, other=0.0)
    tok = tl.load(token_order_ptr + pos, mask=t_mask, other=0).to(tl.int64)
    rows = t_mask & (rank > 0)
    # B's rank columns in whole 16-byte groups (one vector load each); _expand_finish zeroes the columns
    # past the rank: the pool's padding is never trusted to be finite.
    r_load = (offs_r // R_VEC) < tl.cdiv(rank, R_VEC)
    n0 = g * BLOCK_N
    n_mask = (n0 + offs_n) < n_size
    b_rows = tl.multiple_of((n0 + offs_n)[:, None] * stride_bn, [R_VEC, R_VEC])  # R_VEC-aligned rows (b_vector)
    b_ptrs = b_ptr + slot.to(tl.int64) * stride_bs + b_rows + offs_r[None, :] * stride_br
    y_ptrs = y_ptr + tok[:, None] * stride_yt + (n_off + n0 + offs_n)[None, :] * stride_yn
    y_mask = rows[:, None] & n_mask[None, :]
    bv = tl.load(b_ptrs, mask=n_mask[:, None] & r_load[None, :], other=0.0)
    yv = tl.load(y_ptrs, mask=y_mask, other=0.0)
    ws_ptrs = ws_ptr + (sl * T + pos)[:, None] * BLOCK_R + offs_r[None, :]
    return bv, yv, y_ptrs, y_mask, ws_ptrs, rows, offs_r < rank, scale


@triton.jit
def _expand_finish(
    bv,  # [BLOCK_N, BLOCK_R] B's tile
    yv,  # [BLOCK_T, BLOCK_N] y's tile
    y_ptrs,
    y_mask,
    ws_ptrs,  # [BLOCK_T, BLOCK_R] split 0 of the item's partials
    rows,  # [BLOCK_T] rows to read and write
    r_mask,  # [BLOCK_R] columns under the rank
    scale,
    split_stride,
    SPLIT_K: tl.constexpr,
    SPLIT_GROUP: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_R: tl.constexpr,
    IEEE_DOT: tl.constexpr,
):
    """Sum the item's partials, scale, expand through B and add into y."""
    p = _sum_splits(ws_ptrs, rows[:, None], split_stride, SPLIT_K, SPLIT_GROUP, BLOCK_T, BLOCK_R)
    p = (p * scale).to(bv.dtype)
    bv = tl.where(r_mask[None, :], bv, 0.0)
    if IEEE_DOT:
        delta = tl.dot(p, tl.trans(bv), input_precision="ieee")
    else:
        delta = tl.dot(p, tl.trans(bv))
    tl.store(y_ptrs, (yv.to(tl.float32) + delta).to(yv.dtype), mask=y_mask)


@triton.jit
def _load_counter(ptr, ACQUIRE: tl.constexpr, CUDA: tl.constexpr):
    """*ptr (int64) at gpu scope (from L2, never hoisted out of a loop); an acquire load when ACQUIRE, else
    relaxed (later loads need not wait for it). The interpreter has no PTX: an atomic add of 0 there."""
    if CUDA:
        if ACQUIRE:
            v = tl.inline_asm_elementwise("ld.acquire.gpu.global.b64 $0, [$1];", "=l,l", [ptr], dtype=tl.int64,
                                          is_pure=False, pack=1)
        else:
            v = tl.inline_asm_elementwise("ld.relaxed.gpu.global.b64 $0, [$1];", "=l,l", [ptr], dtype=tl.int64,
                                          is_pure=False, pack=1)
    else:
        v = tl.atomic_add(ptr, tl.zeros((), tl.int64), sem="acquire", scope="gpu")
    return v


@triton.jit
def _barrier_arrive(barrier_ptr, num_programs, SPAN: tl.constexpr):
    """Arrive at the grid barrier (see _barrier_wait), not waiting for the counter's answer.

    The CTA barrier puts every warp's workspace stores before the arrival, whose release (gpu scope)
    publishes them. Program 0 adds SPAN - num_programs + 1, the others 1: each launch adds exactly SPAN."""
    tl.debug_barrier()
    add = tl.where(tl.program_id(0) == 0, SPAN - num_programs + 1, 1).to(tl.int64)
    tl.atomic_add(barrier_ptr, add, sem="release", scope="gpu")


@triton.jit
def _barrier_wait(barrier_ptr, target, CUDA: tl.constexpr):
    """Wait until every program has arrived: the counter reaches `target`, the next multiple of SPAN above
    its value at the program's start (a multiple of SPAN between launches, so nobody resets it, and
    launches of any grid size share it, in order on one stream or in graph replays). The acquire loads make
    every other program's workspace stores visible here."""
    now = _load_counter(barrier_ptr, True, CUDA)
    while now < target:
        now = _load_counter(barrier_ptr, True, CUDA)


# T and the work-item bounds change with the batch: unspecialised, one compiled variant serves every size.
@triton.jit(do_not_specialize=["T", "shrink_items", "expand_items"])
def _sgmv_coop_kernel(
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
    ws_ptr,  # [SPLIT_K, NUM_SLICES, T, BLOCK_R] fp32 scratch
    barrier_ptr,  # [1] int64, a multiple of BARRIER_SPAN between launches (LoraMeta.barrier)
    token_order_ptr,  # [>= T] int32
    tile_slot_ptr,  # [>= num_tiles] int32
    tile_start_ptr,  # [>= num_tiles] int32
    tile_end_ptr,  # [>= num_tiles] int32
    num_tiles_ptr,  # [1] int32
    shrink_items,  # host bound on num_tiles * NUM_SLICES * SPLIT_K
    expand_items,  # host bound on num_tiles * (G0 + G1 + G2)
    T,
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
    G0: tl.constexpr,  # column groups (BLOCK_N columns each) of slice 0
    G1: tl.constexpr,
    G2: tl.constexpr,
    NUM_SLICES: tl.constexpr,
    SPLIT_K: tl.constexpr,
    SPLIT_GROUP: tl.constexpr,
    K_CHUNK: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    R_VEC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    STAGES: tl.constexpr,
    IEEE_DOT: tl.constexpr,
    BARRIER_SPAN: tl.constexpr,
    CUDA: tl.constexpr,  # compiled for a GPU (PTX), not run by the interpreter
):
    """Semantics: kernels/sgmv_shrink.py's, then kernels/sgmv_expand.py's (column groups of one block), in
    one launch. Every program is resident at once (the grid is at most one program per multiprocessor):
    it does its shrink items, arrives at the grid barrier, issues its first expand item's B, y and token
    loads, waits for every other program's arrival, then does its expand items."""
    pid = tl.program_id(0)
    num_programs = tl.num_programs(0)
    # This launch's arrivals end at the next multiple of the span: read now, while phase 1 runs.
    target = (_load_counter(barrier_ptr, False, CUDA) & -BARRIER_SPAN) + BARRIER_SPAN
    num_tiles = tl.load(num_tiles_ptr)
    for w in range(pid, shrink_items, num_programs):
        _shrink_item(w, num_tiles, x_ptr, a0_ptr, a1_ptr, a2_ptr, ranks_ptr, ws_ptr, token_order_ptr, tile_slot_ptr,
                     tile_start_ptr, tile_end_ptr, T, K, stride_xt, stride_xk, stride_as, stride_ar, stride_ak,
                     stride_rank_slice, NUM_SLICES, SPLIT_K, K_CHUNK, EVEN_K, BLOCK_T, BLOCK_R, BLOCK_K, STAGES,
                     IEEE_DOT)
    # Arrive first: the release would otherwise wait for the loads below, which only the spin has to.
    _barrier_arrive(barrier_ptr, num_programs, BARRIER_SPAN)
    bv, yv, y_ptrs, y_mask, ws_ptrs, rows, r_mask, scale = _expand_load(
        pid, expand_items, num_tiles, y_ptr, b0_ptr, b1_ptr, b2_ptr, ranks_ptr, scales_ptr, ws_ptr, token_order_ptr,
        tile_slot_ptr, tile_start_ptr, tile_end_ptr, T, stride_yt, stride_yn, stride_b0s, stride_b1s, stride_b2s,
        stride_bn, stride_br, stride_rank_slice, N0, N1, N2, G0, G1, G2, NUM_SLICES, BLOCK_T, BLOCK_R, R_VEC, BLOCK_N)
    _barrier_wait(barrier_ptr, target, CUDA)
    for w in range(pid, expand_items, num_programs):
        _expand_finish(bv, yv, y_ptrs, y_mask, ws_ptrs, rows, r_mask, scale, NUM_SLICES * T * BLOCK_R, SPLIT_K,
                       SPLIT_GROUP, BLOCK_T, BLOCK_R, IEEE_DOT)
        bv, yv, y_ptrs, y_mask, ws_ptrs, rows, r_mask, scale = _expand_load(
            w + num_programs, expand_items, num_tiles, y_ptr, b0_ptr, b1_ptr, b2_ptr, ranks_ptr, scales_ptr, ws_ptr,
            token_order_ptr, tile_slot_ptr, tile_start_ptr, tile_end_ptr, T, stride_yt, stride_yn, stride_b0s,
            stride_b1s, stride_b2s, stride_bn, stride_br, stride_rank_slice, N0, N1, N2, G0, G1, G2, NUM_SLICES,
            BLOCK_T, BLOCK_R, R_VEC, BLOCK_N)


def sgmv_coop(
    y: torch.Tensor,  # [T, sum N_i]
    x: torch.Tensor,  # [T, K]
    lora_a: tuple[torch.Tensor, ...],  # n <= 3 x [S, R, K], one shape and strides
    lora_b: tuple[torch.Tensor, ...],  # n x [S, N_i, R], one stride(1) and stride(2)
    ranks: torch.Tensor,  # [n, S] integer
    scales: torch.Tensor,  # [S] float32
    meta: LoraMeta,
    cfg: SgmvConfig,
) -> torch.Tensor:
    """Launch the cooperative kernel into y in place (inputs checked by sgmv.prepare); returns y.

    The shrink's K split, K step and stages come from cfg as in sgmv_shrink; the expand's column block is
    cfg.block_n (capped as in sgmv_expand), one block per work item; warps: the larger of the two. The grid
    barrier uses meta.barrier, so launches sharing one LoraMeta must not run concurrently (its rule
    already: one stream at a time). Under Triton's interpreter, which runs programs one after another, the
    grid is one program (its own arrival completes the barrier). Every launch adds BARRIER_SPAN to
    meta.barrier."""
    t, k = x.shape
    a0, b0 = lora_a[0], lora_b[0]
    num_slices = len(lora_a)
    block_r = max(16, triton.next_power_of_2(a0.shape[1]))
    widths = [b.shape[1] for b in lora_b] + [0] * (3 - num_slices)
    block_n = min(cfg.block_n, 8192 // block_r, max(16, triton.next_power_of_2(max(widths))))
    groups = [triton.cdiv(n, block_n) for n in widths]
    max_tiles = meta.max_tiles(a0.shape[0])
    block_k, k_chunk, split_k = split_plan(k, cfg, max_tiles)
    shrink_items = max_tiles * num_slices * split_k
    expand_items = max_tiles * sum(groups)
    if max_tiles == 0:
        return y
    programs = min(max(shrink_items, expand_items), num_sms(x.device), BARRIER_SPAN) if x.is_cuda else 1
    ws = torch.empty((split_k, num_slices, t, block_r), dtype=torch.float32, device=x.device)
    a1 = lora_a[1] if num_slices > 1 else a0
    a2 = lora_a[2] if num_slices > 2 else a0
    b1 = lora_b[1] if num_slices > 1 else b0
    b2 = lora_b[2] if num_slices > 2 else b0
    _sgmv_coop_kernel[(programs,)](
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
        ws,
        meta.barrier,
        meta.token_order,
        meta.tile_slot,
        meta.tile_start,
        meta.tile_end,
        meta.num_tiles,
        shrink_items,
        expand_items,
        t,
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
        G2=groups[2],
        NUM_SLICES=num_slices,
        SPLIT_K=split_k,
        SPLIT_GROUP=split_group(split_k),
        K_CHUNK=k_chunk,
        EVEN_K=split_k * k_chunk == k,
        BLOCK_T=meta.block_t,
        BLOCK_R=block_r,
        BLOCK_K=block_k,
        R_VEC=b_vector(b0),
        BLOCK_N=block_n,
        STAGES=shrink_stages(cfg, meta.block_t, block_r, block_k, x.element_size()),
        IEEE_DOT=x.dtype == torch.float32,
        BARRIER_SPAN=BARRIER_SPAN,
        CUDA=x.is_cuda,
        num_warps=max(cfg.shrink_warps, cfg.expand_warps),
    )
    return y
