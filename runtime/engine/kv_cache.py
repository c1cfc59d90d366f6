"""Paged KV cache: fixed-size blocks of key/value memory per layer and the allocator that hands them out."""

from __future__ import annotations

import torch
from loraledger.kernels.fused_ops import rotary_embedding_and_cache, write_kv_cache

__all__ = ["BlockAllocator", "KVCache"]


class KVCache:
    """k and v: [layers, num_blocks, block_size, kv_heads, head_dim], allocated once.

    A token at position p of a sequence with block table `bt` lives at block bt[p // block_size],
    offset p % block_size; its flat slot is block * block_size + offset.
    """

    def __init__(
        self,
        *,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        shape = (num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.num_blocks = num_blocks
        self.block_size = block_size
        # Each layer's k and v as [num_blocks * block_size, kv_heads, head_dim], made once: the writes take
        # them every step, and an eager step pays the host for every view it makes.
        self._slots = [
            (self.k[i].view(-1, num_kv_heads, head_dim), self.v[i].view(-1, num_kv_heads, head_dim))
            for i in range(num_layers)
        ]

    @staticmethod
    def bytes_per_block(
        *, num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
    ) -> int:
        return 2 * num_layers * block_size * num_kv_heads * head_dim * dtype.itemsize

    def write(
        self,
        layer: int,
        k: torch.Tensor,  # [T, kv_heads, head_dim]
        v: torch.Tensor,  # [T, kv_heads, head_dim]
        slot_mapping: torch.Tensor,  # [T] int64 flat slots
    ) -> None:
        """k and v at their flat slots: one launch on the kernel path."""
        write_kv_cache(k, v, *self._slots[layer], slot_mapping)

    def rotate_and_write(
        self,
        layer: int,
        qk: torch.Tensor,  # [T, heads + kv_heads, head_dim] q heads then k heads; rotated in place
        v: torch.Tensor,  # [T, kv_heads, head_dim]
        cos: torch.Tensor,  # [T, head_dim] qk's dtype
        sin: torch.Tensor,  # [T, head_dim]
        slot_mapping: torch.Tensor,  # [T] int64 flat slots
    ) -> None:
        """Rotary embedding of q and k in place, then k (qk's last kv_heads heads) and v at their slots:
        one launch on the kernel path."""
        rotary_embedding_and_cache(qk, v, cos, sin, *self._slots[layer], slot_mapping)


class BlockAllocator:
    """Free list of block ids. Host-side only; the scheduler asks before it admits or grows a sequence."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise RuntimeError(f"asked for {n} KV blocks with {len(self._free)} free")  # the scheduler checks first
        return [self._free.pop() for _ in range(n)]

    def free(self, blocks: list[int]) -> None:
        self._free.extend(reversed(blocks))
