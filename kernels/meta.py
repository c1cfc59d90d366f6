"""Per-step LoRA batch metadata: tokens sorted by slot into tiles, built on device with no host sync."""

from __future__ import annotations

import torch

from .configs import block_t_for

__all__ = ["LoraMeta"]

_NO_SLOT = torch.iinfo(torch.int32).max  # sort key of -1 tokens: after every real slot


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
        num_tiles   [1]               how many tiles the last build wrote (<= tokens, <= T/block_t + slots)
        barrier     [1] int64         the cooperative split-K kernel's grid barrier: each launch adds
                                      kernels.sgmv_coop.BARRIER_SPAN to it; never touched by build

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

    def __init__(self, max_tokens: int, device: torch.device | str) -> None:
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
        self.num_tiles = torch.zeros(1, **i32)
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
        launch, or the token-gather pair, where that pays (the gather rule reads it as the count: a loose
        bound may pick that pair for a batch whose tokens share adapters, correct but slower). It is
        trusted, not checked (that would need a host sync): an under-count leaves tokens without their
        LoRA; under CUDA-graph replay it must hold for every replayed batch. Slots are not range-checked
        either: a slot >= the pool's size is the caller's bug.
        """
        if num_adapters is not None and num_adapters < 0:
            raise ValueError(f"num_adapters must be >= 0, got {num_adapters}")
        t = token_slots.shape[0]
        if token_slots.dim() != 1 or t > self.max_tokens:
            raise ValueError(f"token_slots must be [T] with T <= {self.max_tokens}, got {tuple(token_slots.shape)}")
        if token_slots.device != self.device:
            raise ValueError(f"token_slots is on {token_slots.device}, the buffers on {self.device}")
        bt = block_t_for(t, self.device) if block_t is None else block_t
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

        dest = torch.where(tile_first, torch.cumsum(tile_first, 0) - 1, self.max_tokens)
        self.tile_start.scatter_(0, dest, pos.to(torch.int32))
        self.tile_end.scatter_(0, dest, tile_end.to(torch.int32))
        self.tile_slot.scatter_(0, dest, sorted_key)
        self.num_tiles.copy_(tile_first.sum().view(1))
        return self

    def max_tiles(self, num_slots: int) -> int:
        """An upper bound on num_tiles for the last build, known on the host: sizes the launch grids.

        A segment of l tokens takes ceil(l / block_t) tiles: at most T / block_t + (adapters - 1) over all."""
        t, bt = self.num_tokens, self.block_t
        adapters = num_slots if self.num_adapters is None else min(num_slots, self.num_adapters)
        if t == 0 or adapters == 0:
            return 0
        return min(t, -(-t // bt) + adapters - 1)
