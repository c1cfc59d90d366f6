"""Per-step LoRA batch metadata: tokens sorted by slot into tiles, built on device with no host sync."""

from __future__ import annotations

import torch

from .configs import block_t_for

__all__ = ["MAX_BLOCK_T", "LoraMeta"]

_NO_SLOT = torch.iinfo(torch.int32).max  # sort key of -1 tokens: after every real slot
MAX_BLOCK_T = 64  # the largest tile a build accepts: tile_tokens is sized for it once, at construction


class LoraMeta:
    """The batch layout every LoRA projection of one step shares, in fixed-size device buffers.

    Tokens are sorted by slot (stably; tokens of slot -1 go last and belong to no tile) and cut into
    tiles of at most `block_t` consecutive sorted tokens of one slot. The kernels walk the tiles, so
    one tile reads its adapter's A and B once for all of its tokens.

    Buffers, int32 but for the barrier, allocated once for `max_tokens` on one device and refilled in place by
    `build` with device-side torch ops alone (no `.item()`, no `nonzero`): a step can build them inside
    the CUDA graph it replays, or eagerly before the replay, and the kernels captured in the graph
    read the same addresses every time.

        token_order [max_tokens]      token index at each sorted position
        tile_slot   [max_tokens + 1]  slot of each tile (the last entry is scratch)
        tile_start  [max_tokens + 1]  first sorted position of the tile
        tile_end    [max_tokens + 1]  one past its last sorted position
        tile_tokens [(max_tokens + 1) * MAX_BLOCK_T]  the tile's token indices, tile-major: entry
                                      tile * block_t + i is token_order[tile_start + i], -1 past tile_end
        tile_ranks  [max_tokens, rows] with a rank table only: tile_ranks[tile, row] = rank_table's
                                      row `row` at the tile's slot (see below)
        num_tiles   [1]               how many tiles the last build wrote (<= tokens, <= T/block_t + slots)
        barrier     [1] int64         the cooperative split-K kernel's grid barrier: each launch adds
                                      kernels.sgmv_coop.BARRIER_SPAN to it; never touched by build

    Why tile-major tokens and per-tile ranks: a decode batch's kernels are latency-bound, and each
    dependent round of loads (a load whose address needs an earlier load's value) costs a trip to memory
    before the tile's bytes can move. With tile_tokens and tile_ranks every value a work item needs
    before it reads x, A, B and y is at an address computed from the item's number alone: one round,
    not three (record, then the slot's rank and the token indices, then the data).

    `rank_table` (optional, at construction) is an int32 tensor [..., S] whose rows are the `ranks`
    tensors the kernels will get (the engine's slot pool keeps every layer's and projection's ranks in
    one [L, P, S] tensor, and each layer passes a [n, S] view of it). Each build gathers every row at
    the batch's tiles into tile_ranks; a kernel call whose `ranks` is a row view of the table reads its
    ranks from there (`tile_rank_view`), any other `ranks` the kernels read per slot as before. The
    gather reads the table when the build runs: a rank written into the table after the build (an
    adapter loaded into a slot of this batch mid-step) is not seen until the next build.

    Host attributes of the last build: `num_tokens` (T) and `block_t`, which follow from T alone (so
    they are the same on every step of one CUDA-graph batch-size bucket), and `num_adapters`, the
    caller's bound on the batch's distinct slots when it gave one (None otherwise).

    Usage (the engine, once per step, then for every projection of the step):

        meta = LoraMeta(max_tokens, device)     # once, at start-up
        meta.build(token_slots)                 # each step, token_slots [T] int on the same device
        lora_apply(y, x, a, b, ranks, scales, token_slots, meta=meta)

    One LoraMeta serves one stream at a time: a build overwrites what kernels still queued may read, and
    one-launch split-K kernels running at once would share its barrier.
    """

    def __init__(
        self, max_tokens: int, device: torch.device | str, *, rank_table: torch.Tensor | None = None
    ) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        self.max_tokens = max_tokens
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        i32 = {"dtype": torch.int32, "device": self.device}
        self.token_order = torch.zeros(max_tokens, **i32)
        self.tile_slot = torch.zeros(max_tokens + 1, **i32)
        self.tile_start = torch.zeros(max_tokens + 1, **i32)
        self.tile_end = torch.zeros(max_tokens + 1, **i32)
        self.tile_tokens = torch.full(((max_tokens + 1) * MAX_BLOCK_T,), -1, **i32)
        self.num_tiles = torch.zeros(1, **i32)
        self.rank_table: torch.Tensor | None = None
        self.tile_ranks: torch.Tensor | None = None
        if rank_table is not None:
            if rank_table.dtype != torch.int32 or rank_table.dim() < 2 or not rank_table.is_contiguous():
                raise ValueError(f"rank_table must be a contiguous int32 [..., S] tensor, got "
                                 f"{rank_table.dtype} {tuple(rank_table.shape)}")
            if rank_table.device != self.device:
                raise ValueError(f"rank_table is on {rank_table.device}, the buffers on {self.device}")
            self.rank_table = rank_table
            rows = rank_table.numel() // rank_table.shape[-1]
            self.tile_ranks = torch.zeros(max_tokens, rows, **i32)
        self.barrier = torch.zeros(1, dtype=torch.int64, device=self.device)
        self._positions = torch.arange(max_tokens, dtype=torch.int64, device=self.device)
        self.num_tokens = 0
        self.block_t = 0
        self.num_adapters: int | None = None

    def build(
        self, token_slots: torch.Tensor, block_t: int | None = None, *, num_adapters: int | None = None
    ) -> LoraMeta:
        """Refill the buffers for `token_slots` ([T] integer, -1 = no adapter); returns self.

        `block_t` (tokens per tile) defaults to the tuned value for T on this device. `num_adapters` is
        an optional host-side bound on the number of distinct slots >= 0 in token_slots (the engine knows
        it from its scheduler): it tightens the launch grids and lets the kernels' dispatch pick one
        launch where that pays. It is trusted, not checked (that would need a host sync): an under-count
        leaves tokens without their LoRA; under CUDA-graph replay it must hold for every replayed batch.
        Slots are not range-checked either: a slot >= the pool's size is the caller's bug.
        """
        if num_adapters is not None and num_adapters < 0:
            raise ValueError(f"num_adapters must be >= 0, got {num_adapters}")
        t = token_slots.shape[0]
        if token_slots.dim() != 1 or t > self.max_tokens:
            raise ValueError(f"token_slots must be [T] with T <= {self.max_tokens}, got {tuple(token_slots.shape)}")
        if token_slots.device != self.device:
            raise ValueError(f"token_slots is on {token_slots.device}, the buffers on {self.device}")
        bt = block_t_for(t, self.device) if block_t is None else block_t
        if not 1 <= bt <= MAX_BLOCK_T:
            raise ValueError(f"block_t must be in [1, {MAX_BLOCK_T}], got {bt}")
        self.num_tokens, self.block_t, self.num_adapters = t, bt, num_adapters
        if t == 0:
            self.num_tiles.zero_()
            return self

        slots = token_slots.to(torch.int32)
        key = torch.where(slots < 0, _NO_SLOT, slots)
        sorted_key, order = torch.sort(key, stable=True)  # [T], [T] int64
        self.token_order[:t].copy_(order)

        pos = self._positions[:t]
        valid = sorted_key != _NO_SLOT
        prev = torch.cat((sorted_key.new_full((1,), -1), sorted_key[:-1]))
        seg_first = valid & (sorted_key != prev)
        seg_start = torch.cummax(torch.where(seg_first, pos, 0), 0).values  # start of p's segment
        tile_first = valid & ((pos - seg_start) % bt == 0)
        # The segment of p ends at the first segment start (or the -1 tail) after p.
        brk = torch.where(seg_first | ~valid, pos, t)
        brk_after = torch.cat((brk[1:], brk.new_full((1,), t)))
        seg_end = torch.cummin(brk_after.flip(0), 0).values.flip(0)
        tile_end = torch.minimum(pos + bt, seg_end)

        tile = torch.cumsum(tile_first, 0) - 1  # the tile of each valid sorted position
        dest = torch.where(tile_first, tile, self.max_tokens)
        self.tile_start.scatter_(0, dest, pos.to(torch.int32))
        self.tile_end.scatter_(0, dest, tile_end.to(torch.int32))
        self.tile_slot.scatter_(0, dest, sorted_key)
        self.num_tiles.copy_(tile_first.sum().view(1))
        # Tile-major token indices: lane (p - seg_start) % bt of p's tile; -1 tokens go to the scratch tile.
        lane = (pos - seg_start) % bt
        self.tile_tokens[: t * bt].fill_(-1)  # a build has at most t tiles
        self.tile_tokens.scatter_(0, torch.where(valid, tile, self.max_tokens) * bt + lane, order.to(torch.int32))
        if self.rank_table is not None:
            # Slots are < S for every tile below t (see build's rule); the clamp keeps a caller's bad slot
            # from becoming a device-side assert here (the kernels would read a wrong rank instead).
            table = self.rank_table.view(-1, self.rank_table.shape[-1])
            slots = self.tile_slot[:t].clamp(0, table.shape[1] - 1)
            torch.index_select(table.t(), 0, slots, out=self.tile_ranks[:t])
        return self

    def tile_rank_view(self, ranks: torch.Tensor) -> torch.Tensor | None:
        """The per-tile ranks of `ranks` ([n, S] int32) when it is n consecutive rows of this meta's
        rank table: a [max_tokens, n] view of tile_ranks (tile-major; stride(0) is the table's row
        count). None for any other tensor: the kernels then read ranks[i, slot] themselves."""
        table = self.rank_table
        if table is None or ranks.dtype != torch.int32 or ranks.dim() != 2 or ranks.device != table.device:
            return None
        s = table.shape[-1]
        if ranks.shape[1] != s or ranks.stride(1) != 1 or (ranks.shape[0] > 1 and ranks.stride(0) != s):
            return None
        if ranks.untyped_storage().data_ptr() != table.untyped_storage().data_ptr():
            return None
        offset = ranks.storage_offset() - table.storage_offset()
        row, rem = divmod(offset, s)
        if rem or row < 0 or row + ranks.shape[0] > self.tile_ranks.shape[1]:
            return None
        return self.tile_ranks[:, row : row + ranks.shape[0]]

    def max_tiles(self, num_slots: int) -> int:
        """An upper bound on num_tiles for the last build, known on the host: sizes the launch grids.

        A segment of l tokens takes ceil(l / block_t) tiles: at most T / block_t + (adapters - 1) over all."""
        t, bt = self.num_tokens, self.block_t
        adapters = num_slots if self.num_adapters is None else min(num_slots, self.num_adapters)
        if t == 0 or adapters == 0:
            return 0
        return min(t, -(-t // bt) + adapters - 1)
