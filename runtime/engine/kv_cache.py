"""Paged KV cache: fixed-size blocks of key/value memory per layer and the allocator that hands them out."""

from __future__ import annotations

import torch

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
        kv_heads, head_dim = k.shape[1:]
        self.k[layer].view(-1, kv_heads, head_dim).index_copy_(0, slot_mapping, k)
        self.v[layer].view(-1, kv_heads, head_dim).index_copy_(0, slot_mapping, v)


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
