"""The fixed pool of adapter slots on the device: allocated once, so loading an adapter is a few copy_ calls."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .peft_format import LoRAWeights

__all__ = ["PackedAdapter", "SlotPool"]


@dataclass(frozen=True)
class PackedAdapter:
    """An adapter laid out like one slot (host side, pinned on CUDA): the CPU tier of the cache holds these."""

    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # projection → (A [L, r, K], scale·B [L, N, r]), zero-padded
    ranks: torch.Tensor  # [L, P] int32, 0 where the adapter has no weights
    rank: int  # the largest rank of the adapter

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.tensors.values())


class SlotPool:
    """Per served projection p: lora_a[p] [L, S, R, K_p], lora_b[p] [L, S, N_p, R]; ranks [L, P, S].

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
        self.max_rank = max_rank
        self.lora_a: dict[str, torch.Tensor] = {}
        self.lora_b: dict[str, torch.Tensor] = {}
        for name, (k, n) in projection_shapes.items():
            self.lora_a[name] = torch.zeros(num_layers, num_slots, max_rank, k, dtype=dtype, device=device)
            self.lora_b[name] = torch.zeros(num_layers, num_slots, n, max_rank, dtype=dtype, device=device)
        self.ranks = torch.zeros(num_layers, len(projections), num_slots, dtype=torch.int32, device=device)
        self.scales = torch.ones(num_slots, dtype=torch.float32, device=device)

    @staticmethod
    def bytes_per_slot(num_layers: int, projection_shapes: dict[str, tuple[int, int]], max_rank: int, dtype) -> int:
        return num_layers * max_rank * sum(k + n for k, n in projection_shapes.values()) * dtype.itemsize

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (*self.lora_a.values(), *self.lora_b.values()))

    def pack(self, weights: LoRAWeights, *, pin_memory: bool) -> PackedAdapter:
        """The host-side image of one slot, so that loading it takes two copies per projection."""
        r = weights.max_rank
        dtype = next(iter(self.lora_a.values())).dtype
        ranks = torch.zeros(self.num_layers, len(self.projections), dtype=torch.int32)
        a_by_proj, b_by_proj = {}, {}
        for (layer, name), (a, b, scale) in weights.modules.items():
            if name not in a_by_proj:
                k, n = self.lora_a[name].shape[-1], self.lora_b[name].shape[-2]
                a_by_proj[name] = torch.zeros(self.num_layers, r, k, dtype=dtype)
                b_by_proj[name] = torch.zeros(self.num_layers, n, r, dtype=dtype)
            ra = a.shape[0]
            a_by_proj[name][layer, :ra] = a
            b_by_proj[name][layer, :, :ra] = b.float() * scale
            ranks[layer, self.projections.index(name)] = ra
        tensors = {name: (a_by_proj[name], b_by_proj[name]) for name in a_by_proj}
        if pin_memory:
            tensors = {name: (a.pin_memory(), b.pin_memory()) for name, (a, b) in tensors.items()}
            ranks = ranks.pin_memory()
        return PackedAdapter(tensors, ranks, r)

    def write(self, slot: int, packed: PackedAdapter) -> None:
        """Copies an adapter into a slot on the current stream (non-blocking from pinned memory)."""
        r = packed.rank
        for name in self.lora_a:
            if name in packed.tensors:
                a, b = packed.tensors[name]
                self.lora_a[name][:, slot, :r].copy_(a, non_blocking=True)
                self.lora_b[name][:, slot, :, :r].copy_(b, non_blocking=True)
                self.lora_a[name][:, slot, r:].zero_()
                self.lora_b[name][:, slot, :, r:].zero_()
        self.ranks[:, :, slot].copy_(packed.ranks, non_blocking=True)

    def clear(self, slot: int) -> None:
        self.ranks[:, :, slot] = 0
