"""Attention over the paged KV cache for a step mixing prefill chunks and decode tokens, and its metadata."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["AttentionMetadata", "paged_attention"]


@dataclass(frozen=True)
class AttentionMetadata:
    """Per-step attention metadata, built once per step by the engine (host lists → one copy to the device)."""

    slot_mapping: torch.Tensor  # [T] int64 flat KV slot each new token is written to
    block_tables: torch.Tensor  # [B, max_blocks] int64, padded with 0 (masked out)
    context_lens: torch.Tensor  # [B] int64 tokens of each sequence in the cache after this step
    token_seq: torch.Tensor  # [T] int64 row in B of each token
    token_index: torch.Tensor  # [T] int64 index of each token within its sequence's chunk
    positions_padded: torch.Tensor  # [B, max_query_len] int64 position of each query row; 0 for padding
    max_query_len: int
    max_context_len: int


def paged_attention(
    q: torch.Tensor,  # [T, heads, D] (rotary applied)
    k_cache: torch.Tensor,  # [num_blocks, block_size, kv_heads, D] one layer
    v_cache: torch.Tensor,  # [num_blocks, block_size, kv_heads, D]
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None,
) -> torch.Tensor:  # [T, heads, D]
    """Causal attention of each sequence's new tokens over its cached context, through its block table.

    Reference path (CPU and, for now, GPU): gathers the blocks of the step's sequences (not the whole
    cache) into a padded [B, max_blocks * block_size] view and runs SDPA with a causal/length mask.
    A paged-attention kernel that reads the block tables directly replaces it on the GPU.
    """
    num_seqs = meta.block_tables.shape[0]
    heads, dim = q.shape[1:]
    block_size, kv_heads = k_cache.shape[1:3]
    blocks_needed = -(-meta.max_context_len // block_size)
    tables = meta.block_tables[:, :blocks_needed]
    keys = k_cache[tables].reshape(num_seqs, -1, kv_heads, dim).transpose(1, 2)  # [B, kv_heads, L, D]
    values = v_cache[tables].reshape(num_seqs, -1, kv_heads, dim).transpose(1, 2)
    key_pos = torch.arange(keys.shape[2], device=q.device)  # [L]

    q_pad = q.new_zeros(num_seqs, meta.max_query_len, heads, dim)
    q_pad[meta.token_seq, meta.token_index] = q
    query_pos = meta.positions_padded[:, :, None]  # [B, Q, 1]
    mask = key_pos[None, None, :] <= query_pos  # [B, Q, L]; the query's own position bounds the context
    if sliding_window is not None:
        mask &= key_pos[None, None, :] > query_pos - sliding_window
    out = F.scaled_dot_product_attention(
        q_pad.transpose(1, 2), keys, values, attn_mask=mask[:, None], scale=scale, enable_gqa=heads != kv_heads
    )  # [B, heads, Q, D]
    return out.transpose(1, 2)[meta.token_seq, meta.token_index]
