"""SGMV shrink: split-K partial products x @ A[slot, :rank].T per tile, into an fp32 workspace."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import SgmvConfig, num_sms, shrink_stages
from .meta import LoraMeta
from .sgmv_expand import slice_ptr

__all__ = ["MAX_SPLITS", "sgmv_shrink", "split_plan"]

MAX_SPLITS = 64  # K chunks at most: the expand sums them in unrolled groups of 16


def split_plan(k: int, cfg: SgmvConfig, max_tiles: int) -> tuple[int, int, int]:
    """(block_k, k_chunk, split_k) for K = k: chunks of at least cfg.k_chunk elements (a multiple of
    block_k), at most min(cfg.max_splits, MAX_SPLITS) of them, or cfg.few_tiles_max_splits when the host
    bound on the tiles is at most cfg.few_tiles."""
    max_splits = cfg.few_tiles_max_splits if max_tiles <= cfg.few_tiles else cfg.max_splits
    block_k = min(cfg.block_k, max(16, triton.next_power_of_2(k)))
    k_chunk = max(cfg.k_chunk, triton.cdiv(k, min(max_splits, MAX_SPLITS)))
    k_chunk = min(triton.cdiv(k_chunk, block_k), triton.cdiv(k, block_k)) * block_k
    return block_k, k_chunk, triton.cdiv(k, k_chunk)


@triton.jit
def _shrink_item(
    w,  # work item: (tile, slice, split) = (w // (SPLIT_K * NUM_SLICES), w // SPLIT_K % NUM_SLICES, w % SPLIT_K)
    num_tiles,
    x_ptr,
    a0_ptr,
    a1_ptr,
    a2_ptr,
    ranks_ptr,
    ws_ptr,
    token_order_ptr,
    tile_slot_ptr,
    tile_start_ptr,
    tile_end_ptr,
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
    K_CHUNK: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    STAGES: tl.constexpr,
    IEEE_DOT: tl.constexpr,
):
    """One shrink work item (the loop body of _sgmv_shrink_kernel, shared with kernels/sgmv_coop.py).

    Small batches are latency-bound (a few dependent misses to HBM): the tile's record is loaded in one
    round (num_tiles came with it), then its rank and token indices together, then x and A."""
    offs_t = tl.arange(0, BLOCK_T)
    offs_r = tl.arange(0, BLOCK_R)
    offs_k = tl.arange(0, BLOCK_K)
    split = w % SPLIT_K
    sl = (w // SPLIT_K) % NUM_SLICES
    tile = w // (SPLIT_K * NUM_SLICES)
    live = tile < num_tiles  # records past num_tiles are stale: mask every load through them
    slot = tl.load(tile_slot_ptr + tile)
    pos = tl.load(tile_start_ptr + tile) + offs_t
    t_mask = (pos < tl.load(tile_end_ptr + tile)) & live
    rank = tl.load(ranks_ptr + sl * stride_rank_slice + slot, mask=live, other=0)
    tok = tl.load(token_order_ptr + pos, mask=t_mask, other=0).to(tl.int64)
    if rank > 0:
        a_ptr = slice_ptr(sl, a0_ptr, a1_ptr, a2_ptr, NUM_SLICES)
        r_mask = offs_r < rank
        k0 = split * K_CHUNK
        x_ptrs = x_ptr + tok[:, None] * stride_xt + (k0 + offs_k)[None, :] * stride_xk
        a_ptrs = (
            a_ptr
            + slot.to(tl.int64) * stride_as
            + offs_r[:, None] * stride_ar
            + (k0 + offs_k)[None, :] * stride_ak
        )
        acc = tl.zeros((BLOCK_T, BLOCK_R), dtype=tl.float32)
        for k in tl.range(0, K_CHUNK, BLOCK_K, num_stages=STAGES):
            if EVEN_K:
                xv = tl.load(x_ptrs, mask=t_mask[:, None], other=0.0)
                av = tl.load(a_ptrs, mask=r_mask[:, None], other=0.0)
            else:
                k_mask = (k0 + k + offs_k) < K
                xv = tl.load(x_ptrs, mask=t_mask[:, None] & k_mask[None, :], other=0.0)
                av = tl.load(a_ptrs, mask=r_mask[:, None] & k_mask[None, :], other=0.0)
            if IEEE_DOT:
                acc = tl.dot(xv, tl.trans(av), acc, input_precision="ieee")
            else:
                acc = tl.dot(xv, tl.trans(av), acc)
            x_ptrs += BLOCK_K * stride_xk
            a_ptrs += BLOCK_K * stride_ak
        ws_ptrs = ws_ptr + ((split * NUM_SLICES + sl) * T + pos)[:, None] * BLOCK_R + offs_r[None, :]
        tl.store(ws_ptrs, acc, mask=t_mask[:, None])


# T and the work-item bounds change with the batch: unspecialised, one compiled variant serves every size.
@triton.jit(do_not_specialize=["T", "max_items"])
def _sgmv_shrink_kernel(
    x_ptr,  # [T, K]
    a0_ptr,  # [S, R, K] slice 0
    a1_ptr,  # [S, R, K] slice 1 (a0 again when NUM_SLICES < 2)
    a2_ptr,  # [S, R, K] slice 2 (a0 again when NUM_SLICES < 3)
    ranks_ptr,  # [NUM_SLICES, S] integer
    ws_ptr,  # [SPLIT_K, NUM_SLICES, T, BLOCK_R] fp32, written
    token_order_ptr,  # [>= T] int32: token index at each sorted position
    tile_slot_ptr,  # [>= num_tiles] int32
    tile_start_ptr,  # [>= num_tiles] int32
    tile_end_ptr,  # [>= num_tiles] int32
    num_tiles_ptr,  # [1] int32
    max_items,  # host bound on num_tiles * NUM_SLICES * SPLIT_K
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
    BLOCK_T: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    STAGES: tl.constexpr,
    IEEE_DOT: tl.constexpr,  # fp32 inputs: full-precision dot, not tf32
    LAUNCH_DEPENDENTS: tl.constexpr,  # let a PDL-launched expand start now
):
    """Semantics: for each tile (tokens p in [start, end) of one slot s), slice i with r = ranks[i, s] > 0
    and split j: ws[j, i, p, :r] = x[order[p], Kj] @ A_i[s, :r, Kj].T over K range Kj = j*K_CHUNK + [0, K_CHUNK).
    Work items (tile, slice, split) are strided over the programs up to a host bound; items of tiles
    past num_tiles (read on device) do nothing."""
    if LAUNCH_DEPENDENTS:
        tl.extra.cuda.gdc_launch_dependents()
    num_tiles = tl.load(num_tiles_ptr)
    for w in range(tl.program_id(0), max_items, tl.num_programs(0)):
        _shrink_item(w, num_tiles, x_ptr, a0_ptr, a1_ptr, a2_ptr, ranks_ptr, ws_ptr, token_order_ptr, tile_slot_ptr,
                     tile_start_ptr, tile_end_ptr, T, K, stride_xt, stride_xk, stride_as, stride_ar, stride_ak,
                     stride_rank_slice, NUM_SLICES, SPLIT_K, K_CHUNK, EVEN_K, BLOCK_T, BLOCK_R, BLOCK_K, STAGES,
                     IEEE_DOT)


def sgmv_shrink(
    x: torch.Tensor,  # [T, K]
    lora_a: tuple[torch.Tensor, ...],  # n <= 3 x [S, R, K], one shape and strides
    ranks: torch.Tensor,  # [n, S] integer
    meta: LoraMeta,
    cfg: SgmvConfig,
    pdl: bool = False,
) -> torch.Tensor:
    """Launch the shrink; returns the workspace [split_k, n, T, block_r] fp32 that sgmv_expand sums.

    Rows of tiles whose slot has rank 0 in a slice, and of -1 tokens, are left unwritten: the expand
    never reads them. `pdl` lets an expand launched with PDL start before this kernel ends."""
    t, k = x.shape
    a0 = lora_a[0]
    num_slices = len(lora_a)
    block_r = max(16, triton.next_power_of_2(a0.shape[1]))
    max_tiles = meta.max_tiles(a0.shape[0])
    block_k, k_chunk, split_k = split_plan(k, cfg, max_tiles)
    ws = torch.empty((split_k, num_slices, t, block_r), dtype=torch.float32, device=x.device)
    max_items = max_tiles * num_slices * split_k
    if max_items == 0:
        return ws
    grid = (min(max_items, num_sms(x.device) * cfg.programs_per_sm),)
    a1 = lora_a[1] if num_slices > 1 else a0
    a2 = lora_a[2] if num_slices > 2 else a0
    _sgmv_shrink_kernel[grid](
        x,
        a0,
        a1,
        a2,
        ranks,
        ws,
        meta.token_order,
        meta.tile_slot,
        meta.tile_start,
        meta.tile_end,
        meta.num_tiles,
        max_items,
        t,
        k,
        x.stride(0),
        x.stride(1),
        a0.stride(0),
        a0.stride(1),
        a0.stride(2),
        ranks.stride(0),
        NUM_SLICES=num_slices,
        SPLIT_K=split_k,
        K_CHUNK=k_chunk,
        EVEN_K=split_k * k_chunk == k,
        BLOCK_T=meta.block_t,
        BLOCK_R=block_r,
        BLOCK_K=block_k,
        STAGES=shrink_stages(cfg, meta.block_t, block_r, block_k, x.element_size()),
        IEEE_DOT=x.dtype == torch.float32,
        LAUNCH_DEPENDENTS=pdl,
        num_warps=cfg.shrink_warps,
    )
    return ws
