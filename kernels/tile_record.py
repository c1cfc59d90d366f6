"""What an SGMV work item reads before its data: its tile's slot, sorted positions, tokens and rank."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .meta import LoraMeta

__all__ = ["rank_args", "tile_record"]


@triton.jit
def tile_record(
    tile,  # the item's tile; below the host bound on the tiles (LoraMeta.max_tiles), so every read is in bounds
    sl,  # the item's slice
    num_tiles,  # tiles the build wrote (read on device); records past it are stale
    tile_slot_ptr,
    tile_start_ptr,
    tile_tokens_ptr,  # [tiles * BLOCK_T] int32, tile-major, -1 past the tile's end
    ranks_ptr,  # [NUM_SLICES, S] integer: read per slot when not TILE_RANKS
    stride_rank_slice,
    tile_ranks_ptr,  # [tiles, >= NUM_SLICES] int32 (LoraMeta.tile_rank_view) when TILE_RANKS
    stride_tile_ranks,
    BLOCK_T: tl.constexpr,
    TILE_RANKS: tl.constexpr,
):
    """(slot, pos [BLOCK_T] sorted positions, rows [BLOCK_T] live token lanes, tok [BLOCK_T] int64 token
    indices (0 where not a row), rank (0 for a stale record)).

    Every address here follows from the tile's number: one round of loads (with TILE_RANKS; without,
    the rank waits for the slot), none masked by num_tiles, so none waits for it either."""
    offs_t = tl.arange(0, BLOCK_T)
    live = tile < num_tiles
    slot = tl.load(tile_slot_ptr + tile)
    pos = tl.load(tile_start_ptr + tile) + offs_t
    tok = tl.load(tile_tokens_ptr + tile * BLOCK_T + offs_t)
    if TILE_RANKS:
        rank = tl.load(tile_ranks_ptr + tile * stride_tile_ranks + sl)
    else:
        rank = tl.load(ranks_ptr + sl * stride_rank_slice + slot, mask=live, other=0)
    rows = (tok >= 0) & live
    return slot, pos, rows, tl.where(rows, tok, 0).to(tl.int64), tl.where(live, rank, 0)


def rank_args(meta: LoraMeta, ranks: torch.Tensor) -> tuple[torch.Tensor, int, bool]:
    """(tile_ranks_ptr, stride_tile_ranks, TILE_RANKS) for a launch: the meta's per-tile ranks where
    `ranks` is a row view of its rank table, else `ranks` itself as an unused placeholder."""
    view = meta.tile_rank_view(ranks)
    if view is None:
        return ranks, 0, False
    return view, view.stride(0), True
