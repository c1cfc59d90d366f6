"""The fixed pool of adapter slots on the device: one backing tensor, so loading an adapter is one copy_."""

from __future__ import annotations

import torch

from .host_arena import BLOCK_ALIGN_BYTES, CHUNK_BYTES, HostArena, HostBlock, ReleasedBlockError
from .peft_format import LoRAWeights

__all__ = ["PackedAdapter", "SlotPool"]

# Each projection's A and B block starts on this boundary inside a slot's image (and the slot stride is a
# multiple of it), so every view the kernels read is as aligned as a freshly allocated tensor would be. The
# host arena's blocks are aligned the same way.
_ALIGN_BYTES = BLOCK_ALIGN_BYTES


class PackedAdapter:
    """An adapter laid out exactly like one slot's image, in a block of a HostArena: the CPU tier holds these.

    The image is padded to the pool's max rank (zeros past each module's rank), so a load copies the whole
    slot however small the adapter's rank: one large copy beats many small ones over PCIe. release() gives
    the block back to its arena; after that, reading the adapter or releasing it again raises
    ReleasedBlockError (views taken earlier are not guarded: the cache takes them only to copy).
    """

    __slots__ = ("_block", "_flat", "_ranks", "rank")

    def __init__(self, block: HostBlock, flat: torch.Tensor, ranks: torch.Tensor, rank: int):
        self._block = block
        self._flat = flat
        self._ranks = ranks
        self.rank = rank  # the largest rank of the adapter

    @property
    def flat(self) -> torch.Tensor:
        """[slot_elems] in the pool's dtype."""
        self._check_alive()
        return self._flat

    @property
    def ranks(self) -> torch.Tensor:
        """[L, P] int32, 0 where the adapter has no weights."""
        self._check_alive()
        return self._ranks

    @property
    def nbytes(self) -> int:
        return self._block.arena.block_bytes

    @property
    def released(self) -> bool:
        return self._block.released

    def release(self) -> None:
        """Gives the image's block back to its arena (nothing may read the image after, a DMA included)."""
        self._block.arena.free(self._block)

    def _check_alive(self) -> None:
        if self._block.released:
            raise ReleasedBlockError("this adapter's host image was released (its block may hold another image now)")


class SlotPool:
    """Per served projection p: lora_a[p] [L, S, R, K_p], lora_b[p] [L, S, N_p, R]; ranks [L, P, S].

    Every lora_a[p] / lora_b[p] is a strided view of one backing tensor `slots` [S, slot_elems], whose
    row s is slot s's whole image: for each served projection, A [L, R, K] then B [L, N, R], each block
    aligned. So writing a slot is a single contiguous copy, and per layer the kernels get [S, R, K] /
    [S, N, R] views whose stride(0) is the slot stride (the same for every projection, as fused slices
    need).

    P indexes `projections` (the model's LORA_PROJECTIONS order). A slot's rank for a (layer,
    projection) its adapter does not target is 0, so the operator skips it; weights past a slot's
    rank are zero. Each module's LoRA scale (alpha / r, or alpha / sqrt(r) with rsLoRA, per
    rank_pattern/alpha_pattern) is folded into its B when packed, as vLLM does, so the operator's
    per-slot `scales` is all ones and one call can serve slices of different scales.
    """

    def __init__(
        self,
        *,
        num_slots: int,
        num_layers: int,
        projections: tuple[str, ...],  # all projections the model has, in order
        projection_shapes: dict[str, tuple[int, int]],  # served ones: name → (in, out)
        max_rank: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        if num_slots < 1:
            raise ValueError(f"the slot pool needs at least one slot, got {num_slots}")
        self.num_slots = num_slots
        self.num_layers = num_layers
        self.projections = projections
        self.projection_shapes = dict(projection_shapes)
        self.max_rank = max_rank
        self.dtype = dtype
        self._offsets, self.slot_elems = _layout(num_layers, projection_shapes, max_rank, dtype.itemsize)
        self.slots = torch.zeros(num_slots, self.slot_elems, dtype=dtype, device=device)  # [S, slot_elems]
        self.lora_a: dict[str, torch.Tensor] = {}
        self.lora_b: dict[str, torch.Tensor] = {}
        for name, (a, b) in self.image_views(self.slots).items():
            self.lora_a[name] = a.transpose(0, 1)  # [S, L, R, K] → [L, S, R, K]
            self.lora_b[name] = b.transpose(0, 1)  # [S, L, N, R] → [L, S, N, R]
        self.ranks = torch.zeros(num_layers, len(projections), num_slots, dtype=torch.int32, device=device)
        self.scales = torch.ones(num_slots, dtype=torch.float32, device=device)

    @staticmethod
    def bytes_per_slot(num_layers: int, projection_shapes: dict[str, tuple[int, int]], max_rank: int, dtype) -> int:
        return _layout(num_layers, projection_shapes, max_rank, dtype.itemsize)[1] * dtype.itemsize

    @property
    def slot_bytes(self) -> int:
        return self.slot_elems * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.slots.nbytes

    @property
    def host_image_bytes(self) -> int:
        """One host image: the slot's image, then its ranks table [L, P] int32 (see host_views)."""
        return self.slot_bytes + _align_up(self.num_layers * len(self.projections) * 4, _ALIGN_BYTES)

    def host_arena(self, capacity_images: int, *, pin_memory: bool, chunk_bytes: int = CHUNK_BYTES) -> HostArena:
        """An arena whose blocks each hold one host image of this pool."""
        return HostArena(self.host_image_bytes, capacity_images, pin_memory=pin_memory, chunk_bytes=chunk_bytes)

    def host_views(self, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image [slot_elems] in the pool's dtype, ranks [L, P] int32) of a host block data [host_image_bytes].

        The ranks share the image's block rather than being a tensor of their own: one allocation per
        image would bring back a pinned allocation per registered adapter, and the arena's byte count would
        no longer be everything the host tier holds.
        """
        flat = data[: self.slot_bytes].view(self.dtype)
        ranks = data[self.slot_bytes : self.slot_bytes + self.num_layers * len(self.projections) * 4]
        return flat, ranks.view(torch.int32).view(self.num_layers, len(self.projections))

    def pack_into(self, weights: LoRAWeights, block: HostBlock) -> PackedAdapter:
        """Writes the host-side image of one slot into `block`, so that loading it is one copy (plus the ranks)."""
        data = block.data
        data.zero_()  # a recycled block holds an earlier image: everything past each module's rank must be 0
        flat, ranks = self.host_views(data)
        views = self.image_views(flat)
        for (layer, name), (a, b, scale) in weights.modules.items():
            a_view, b_view = views[name]  # [L, R, K], [L, N, R]
            r = a.shape[0]
            a_view[layer, :r] = a
            b_view[layer, :, :r] = b.float() * scale
            ranks[layer, self.projections.index(name)] = r
        return PackedAdapter(block, flat, ranks, weights.max_rank)

    def pack(self, weights: LoRAWeights, *, pin_memory: bool) -> PackedAdapter:
        """A host image of its own (a one-image arena), for callers without a cache: tests and benchmarks."""
        return self.pack_into(weights, self.host_arena(1, pin_memory=pin_memory).alloc())

    def slot_image(self, slot: int) -> torch.Tensor:
        """Slot `slot`'s whole image [slot_elems], a contiguous view of the pool."""
        return self.slots[slot]

    def write(self, slot: int, packed: PackedAdapter) -> None:
        """Copies an adapter into a slot on the current stream (non-blocking from pinned memory)."""
        self.slots[slot].copy_(packed.flat, non_blocking=True)
        self.ranks[:, :, slot].copy_(packed.ranks, non_blocking=True)

    def clear(self, slot: int) -> None:
        self.ranks[:, :, slot] = 0

    def image_views(self, image: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per projection (A [..., L, R, K], B [..., L, N, R]) views of image [..., slot_elems]."""
        views = {}
        for name, (k, n) in self.projection_shapes.items():
            a_off, b_off = self._offsets[name]
            a_len, b_len = self.num_layers * self.max_rank * k, self.num_layers * n * self.max_rank
            a = image[..., a_off : a_off + a_len].unflatten(-1, (self.num_layers, self.max_rank, k))
            b = image[..., b_off : b_off + b_len].unflatten(-1, (self.num_layers, n, self.max_rank))
            views[name] = (a, b)
        return views


def _layout(
    num_layers: int, projection_shapes: dict[str, tuple[int, int]], max_rank: int, itemsize: int
) -> tuple[dict[str, tuple[int, int]], int]:
    """Element offsets of each projection's A and B blocks in a slot's image, and the image's length."""
    align = max(1, _ALIGN_BYTES // itemsize)

    def up(n: int) -> int:
        return _align_up(n, align)

    offsets, pos = {}, 0
    for name, (k, n) in projection_shapes.items():
        a_off = pos
        b_off = up(a_off + num_layers * max_rank * k)
        pos = up(b_off + num_layers * n * max_rank)
        offsets[name] = (a_off, b_off)
    return offsets, max(pos, align)


def _align_up(n: int, align: int) -> int:
    return -(-n // align) * align
