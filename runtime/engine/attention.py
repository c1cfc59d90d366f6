"""Attention over the paged KV cache for a step mixing prefill chunks and decode tokens, and its metadata."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["AttentionMetadata", "fuses_decode_rotary", "paged_attention"]


@dataclass(frozen=True)
class AttentionMetadata:
    """Per-step attention metadata, built once per step by the engine (one host → device copy of the rows'
    starts, lengths and block tables; the per-token indices derived from them on the device)."""

    slot_mapping: torch.Tensor  # [T] int64 flat KV slot each new token is written to
    block_tables: torch.Tensor  # [B, max_blocks] int64, padded with 0 (masked out)
    context_lens: torch.Tensor  # [B] int64 tokens of each sequence in the cache after this step
    token_seq: torch.Tensor  # [T] int64 row in B of each token
    token_index: torch.Tensor  # [T] int64 index of each token within its sequence's chunk
    positions_padded: torch.Tensor  # [B, max_query_len] int64 position of each query row; 0 for padding
    max_query_len: int
    max_context_len: int
    num_decode_rows: int = 0  # rows [0, d) have one new token each (token t is row t); the engine puts them first
    max_prefill_context_len: int = 0  # max of context_lens over rows [d, B)

    @functools.cached_property
    def _masks(self) -> dict:
        return {}

    def causal_mask(self, length: int, sliding_window: int | None) -> torch.Tensor:
        """[B, 1, max_query_len, length] bool: whether query row (b, i) may see key j of its sequence. The same
        for every layer of a step, so it is built once per step (an eager step pays the host for every op)."""
        mask = self._masks.get((length, sliding_window))
        if mask is None:
            key_pos = torch.arange(length, device=self.positions_padded.device)  # [L]
            query_pos = self.positions_padded[:, :, None]  # [B, Q, 1]
            mask = key_pos[None, None, :] <= query_pos  # the query's own position bounds the context
            if sliding_window is not None:
                mask &= key_pos[None, None, :] > query_pos - sliding_window
            mask = self._masks[(length, sliding_window)] = mask[:, None]
        return mask

    @functools.cached_property
    def prefill_rows(self) -> AttentionMetadata:
        """Rows [num_decode_rows, B) and their tokens as metadata of their own (the torch path's share)."""
        d = self.num_decode_rows
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[d:],
            block_tables=self.block_tables[d:],
            context_lens=self.context_lens[d:],
            token_seq=self.token_seq[d:] - d,
            token_index=self.token_index[d:],
            positions_padded=self.positions_padded[d:],
            max_query_len=self.max_query_len,
            max_context_len=self.max_prefill_context_len,
        )


def paged_attention(
    q: torch.Tensor,  # [T, heads, D] (rotary applied)
    k_cache: torch.Tensor,  # [num_blocks, block_size, kv_heads, D] one layer
    v_cache: torch.Tensor,  # [num_blocks, block_size, kv_heads, D]
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None,
    rotary: tuple[torch.Tensor, ...] | None = None,
) -> torch.Tensor:  # [T, heads, D]
    """Causal attention of each sequence's new tokens over its cached context, through its block table.

    `rotary` = (k, v, cos, sin) of the step's tokens, where fuses_decode_rotary says so: q and k come
    unrotated, and the kernel rotates them and writes k and v to the cache before it attends.

    On CUDA, or on CPU under Triton's interpreter, the single-token rows (decodes) run the paged-attention
    kernel (kernels/paged_attention.py), which reads K/V through the block tables; the other rows
    (prefill chunks) take the torch path. On CPU every row takes the torch path.
    """
    d = meta.num_decode_rows
    if rotary is not None and not _decode_rows_on_kernel(q, meta):
        raise ValueError("rotary needs a step of decode rows only on the kernel path (fuses_decode_rotary)")
    if d == 0 or not _use_kernel(q):
        return _gathered_attention(q, k_cache, v_cache, meta, scale, sliding_window)
    from loraledger.kernels.paged_attention import Rotary
    from loraledger.kernels.paged_attention import paged_attention as paged_decode_attention

    # Row t's one token is token t, at position context_lens[t] - 1.
    out = paged_decode_attention(
        q[:d],
        k_cache,
        v_cache,
        meta.block_tables[:d],
        meta.context_lens[:d],
        scale,
        sliding_window=sliding_window,
        max_context_len=meta.max_context_len,
        rotary=None if rotary is None else Rotary(*rotary),
    )
    if d == meta.block_tables.shape[0]:
        return out
    prefill = _gathered_attention(q[d:], k_cache, v_cache, meta.prefill_rows, scale, sliding_window)
    return torch.cat((out, prefill))


def fuses_decode_rotary(x: torch.Tensor, meta: AttentionMetadata, num_kv_heads: int) -> bool:
    """Whether a step's rotary, KV write and attention run as one kernel launch: every row a decode row (one
    token each, token t is row t), on the kernel path, in a batch where that pays (kernels' rotary_pays). The
    new key is then written as key L - 1 of its sequence through the block table, which is where
    meta.slot_mapping puts it."""
    if not _decode_rows_on_kernel(x, meta):
        return False
    from loraledger.kernels.paged_attention import rotary_pays

    return rotary_pays(x.shape[0], num_kv_heads)


def _decode_rows_on_kernel(x: torch.Tensor, meta: AttentionMetadata) -> bool:
    """Every row of the step a decode row, on the kernel path: where the kernel's rotary is correct."""
    return meta.num_decode_rows == x.shape[0] and _use_kernel(x)


def _gathered_attention(
    q: torch.Tensor,  # [T, heads, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, kv_heads, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, kv_heads, D]
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None,
) -> torch.Tensor:  # [T, heads, D]
    """The torch path: gathers the blocks of meta's sequences (not the whole cache) into a padded
    [B, max_blocks * block_size] view and runs SDPA with a causal/length mask."""
    num_seqs = meta.block_tables.shape[0]
    heads, dim = q.shape[1:]
    block_size, kv_heads = k_cache.shape[1:3]
    blocks_needed = -(-meta.max_context_len // block_size)
    tables = meta.block_tables[:, :blocks_needed]
    keys = k_cache[tables].reshape(num_seqs, -1, kv_heads, dim).transpose(1, 2)  # [B, kv_heads, L, D]
    values = v_cache[tables].reshape(num_seqs, -1, kv_heads, dim).transpose(1, 2)
    q_pad = q.new_zeros(num_seqs, meta.max_query_len, heads, dim)
    q_pad[meta.token_seq, meta.token_index] = q
    if heads != kv_heads and q.is_cuda:
        # SDPA's GQA mode with a mask runs the math backend, which writes the [B, heads, Q, L] scores to memory:
        # for a step of several long prefill chunks that is most of the step. Repeating the KV heads instead
        # lets the memory-efficient kernel run (the keys and values cost a fraction of those scores).
        keys = keys.repeat_interleave(heads // kv_heads, dim=1)
        values = values.repeat_interleave(heads // kv_heads, dim=1)
    with sdpa_kernel(_CUDA_SDPA_BACKENDS) if q.is_cuda else contextlib.nullcontext():
        out = F.scaled_dot_product_attention(
            q_pad.transpose(1, 2),
            keys,
            values,
            attn_mask=meta.causal_mask(keys.shape[2], sliding_window),
            scale=scale,
            enable_gqa=heads != keys.shape[1],
        )  # [B, heads, Q, D]
    return out.transpose(1, 2)[meta.token_seq, meta.token_index]


# Not cuDNN's attention, which SDPA picked for these masked prefill rows on an H100: side by side in one serving
# window, mixed steps took 95 ms with it and 23 ms without (benchmarks/RESULTS.md). It pays for every shape it has
# not seen (bench_prefill_attention.py: 1.2 vs 0.3 ms a call on new shapes), and a server's prefill shapes (rows,
# chunk and context lengths) are always new; what else made it that slow in serving is not pinned down.
_CUDA_SDPA_BACKENDS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]


def _use_kernel(q: torch.Tensor) -> bool:
    return q.is_cuda or _triton_interpreting()


@functools.cache
def _triton_interpreting() -> bool:
    """Whether Triton runs kernels on CPU through its interpreter (TRITON_INTERPRET=1 at start-up), as
    the kernels' own dispatch decides it; without Triton (Linux-only) the CPU path is torch."""
    if importlib.util.find_spec("triton") is None:
        return False
    import triton

    return bool(triton.knobs.runtime.interpret)
