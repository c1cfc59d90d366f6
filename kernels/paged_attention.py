"""Paged decode attention: one query token per sequence over its KV blocks, read through the block table."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import pdl
from .configs import launches_pdl, num_sms

__all__ = ["MANY_PROGRAMS", "SPLIT_CHOICES", "paged_attention"]

_LOG2E = 1.4426950408889634
_NO_WINDOW = 2**31 - 1
SPLIT_CHOICES = (1, 2, 4, 8, 16, 32)  # the split counts the default rule picks
MANY_PROGRAMS = 1024  # sequences x KV heads from which narrow heads take the small-tile launch


# A block table's row stride is its width, which changes with the batch: unspecialised, one variant serves all.
@triton.jit(do_not_specialize=["stride_bt"])
def _paged_attention_kernel(
    out_ptr,  # [B, H, D] q's dtype; written when NUM_SPLITS == 1
    part_acc_ptr,  # [B, H, NUM_SPLITS, BLOCK_D] fp32 unnormalised partial outputs; written when NUM_SPLITS > 1
    part_ml_ptr,  # [B, H, NUM_SPLITS, 2] fp32 (running max in log2 units, sum of exponentials)
    q_ptr,  # [B, H, D]
    k_cache_ptr,  # [num_blocks, KV_BLOCK_SIZE, KV_H, D]
    v_cache_ptr,  # [num_blocks, KV_BLOCK_SIZE, KV_H, D]
    block_tables_ptr,  # [B, max_blocks] integer
    context_lens_ptr,  # [B] integer
    qk_scale,  # softmax scale * log2(e)
    sliding_window,  # keys at positions >= context_len - sliding_window; no window: 2**31 - 1
    stride_qb,
    stride_qh,
    stride_ob,
    stride_oh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_bt,
    HEAD_DIM: tl.constexpr,
    QUERIES_PER_KV: tl.constexpr,  # query heads sharing one KV head (GQA group)
    KV_BLOCK_SIZE: tl.constexpr,  # tokens per cache block (any positive integer)
    NUM_SPLITS: tl.constexpr,
    BLOCK_G: tl.constexpr,  # next power of two >= QUERIES_PER_KV, >= 16 (tl.dot's smallest M)
    BLOCK_N: tl.constexpr,  # keys per tile
    BLOCK_D: tl.constexpr,  # next power of two >= HEAD_DIM
    IEEE_DOT: tl.constexpr,  # fp32 inputs: full-precision dots, not tf32
    PDL: tl.constexpr,  # launched with PDL (kernels/pdl.py)
):
    """Semantics: for sequence b, KV head g, query head h = g * QUERIES_PER_KV + i and split s:
    keys j in [lo, context_len[b]) with lo = max(0, context_len[b] - sliding_window) (0 without a
    window), key j at k_cache[block_tables[b, j // KV_BLOCK_SIZE], j % KV_BLOCK_SIZE, g];
    out[b, h] = softmax_j(scale * q[b, h] . k_j) @ v_j over all j (one split), or split s's share of the
    key tiles as an unnormalised partial with its max and sum (several splits, combined by the reduce).
    Only keys below context_len are read, and only the block-table entries that hold them."""
    pdl.enter(PDL)
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    ctx = tl.load(context_lens_ptr + seq).to(tl.int32)
    lo = tl.maximum(ctx - sliding_window, 0)
    # This split's share of the sequence's key tiles: split from the sequence's own length on the
    # device, so one grid (and one CUDA graph) serves every context length.
    first_tile = lo // BLOCK_N
    num_tiles = tl.cdiv(ctx, BLOCK_N) - first_tile
    tiles_per_split = tl.cdiv(num_tiles, NUM_SPLITS)
    tile_lo = first_tile + split * tiles_per_split
    tile_hi = tl.minimum(tile_lo + tiles_per_split, first_tile + num_tiles)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    g_mask = offs_g < QUERIES_PER_KV
    d_mask = offs_d < HEAD_DIM
    heads = kv_head * QUERIES_PER_KV + offs_g  # [BLOCK_G] query heads of this KV head

    q_ptrs = q_ptr + seq.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=g_mask[:, None] & d_mask[None, :], other=0.0)  # [BLOCK_G, BLOCK_D]

    m_i = tl.full((BLOCK_G,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_G,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)
    table_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    # Every tile of [tile_lo, tile_hi) holds at least one key in [lo, ctx): m_i is finite after the first.
    for tile in range(tile_lo, tile_hi):
        pos = tile * BLOCK_N + offs_n  # [BLOCK_N] key positions
        n_mask = (pos >= lo) & (pos < ctx)
        block = tl.load(table_row + pos // KV_BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
        row = pos % KV_BLOCK_SIZE
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k_ptrs = k_cache_ptr + block[:, None] * stride_kb + row[:, None] * stride_kt + kv_head * stride_kh
        k = tl.load(k_ptrs + offs_d[None, :], mask=kv_mask, other=0.0)  # [BLOCK_N, BLOCK_D]
        v_ptrs = v_cache_ptr + block[:, None] * stride_vb + row[:, None] * stride_vt + kv_head * stride_vh
        v = tl.load(v_ptrs + offs_d[None, :], mask=kv_mask, other=0.0)  # [BLOCK_N, BLOCK_D]

        if IEEE_DOT:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(n_mask[None, :], s * qk_scale, float("-inf"))  # [BLOCK_G, BLOCK_N]
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if IEEE_DOT:
            acc = tl.dot(p, v, acc * alpha[:, None], input_precision="ieee")
        else:
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new

    if NUM_SPLITS == 1:
        # context_len 0 (a padding row of a CUDA-graph bucket) gives zeros, not 0/0.
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        o_ptrs = out_ptr + seq.to(tl.int64) * stride_ob + heads[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=g_mask[:, None] & d_mask[None, :])
    else:
        # Empty splits store m = -inf, l = 0, acc = 0: the reduce weighs them by zero.
        row_idx = (seq.to(tl.int64) * (tl.num_programs(1) * QUERIES_PER_KV) + heads) * NUM_SPLITS + split
        acc_ptrs = part_acc_ptr + row_idx[:, None] * BLOCK_D + offs_d[None, :]
        tl.store(acc_ptrs, acc, mask=g_mask[:, None])
        tl.store(part_ml_ptr + row_idx * 2, m_i, mask=g_mask)
        tl.store(part_ml_ptr + row_idx * 2 + 1, l_i, mask=g_mask)


@triton.jit
def _paged_attention_reduce_kernel(
    out_ptr,  # [B, H, D] q's dtype, written
    part_acc_ptr,  # [B, H, NUM_SPLITS, BLOCK_D] fp32
    part_ml_ptr,  # [B, H, NUM_SPLITS, 2] fp32
    stride_ob,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BLOCK_S: tl.constexpr,  # next power of two >= NUM_SPLITS
    BLOCK_D: tl.constexpr,
    PDL: tl.constexpr,  # launched with PDL (kernels/pdl.py)
):
    """Semantics: out[b, h] = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s with M = max_s m_s
    (zeros when every split is empty)."""
    pdl.enter(PDL)
    seq = tl.program_id(0)
    head = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_mask = offs_s < NUM_SPLITS
    base = (seq.to(tl.int64) * tl.num_programs(1) + head) * NUM_SPLITS
    m = tl.load(part_ml_ptr + (base + offs_s) * 2, mask=s_mask, other=float("-inf"))  # [BLOCK_S]
    l = tl.load(part_ml_ptr + (base + offs_s) * 2 + 1, mask=s_mask, other=0.0)
    acc = tl.load(part_acc_ptr + (base + offs_s)[:, None] * BLOCK_D + offs_d[None, :], mask=s_mask[:, None], other=0.0)
    m_max = tl.max(m, axis=0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    w = tl.exp2(m - m_max)  # [BLOCK_S]; 0 for empty splits
    denom = tl.sum(w * l, axis=0)
    out = tl.sum(w[:, None] * acc, axis=0) / tl.where(denom > 0, denom, 1.0)  # [BLOCK_D]
    o_ptrs = out_ptr + seq.to(tl.int64) * stride_ob + head * stride_oh + offs_d
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=offs_d < HEAD_DIM)


def paged_attention(
    q: torch.Tensor,  # [B, H, D] one query token per sequence (rotary applied); D contiguous
    k_cache: torch.Tensor,  # [num_blocks, block_size, KV_H, D] one layer; D contiguous
    v_cache: torch.Tensor,  # [num_blocks, block_size, KV_H, D]
    block_tables: torch.Tensor,  # [B, max_blocks] int32/int64; entries past a sequence's blocks unread
    context_lens: torch.Tensor,  # [B] int32/int64 keys of each sequence (its query's position + 1)
    scale: float,
    *,
    sliding_window: int | None = None,
    max_context_len: int | None = None,
    num_splits: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:  # [B, H, D] q's dtype
    """Decode attention of each sequence's one query over its cached keys, through its block table.

    Semantics: for each b, h: g = h // (H // KV_H), L = context_lens[b], keys j in
    [max(0, L - sliding_window), L); out[b, h] = softmax_j(scale * q[b, h] . K_b[j, g]) @ V_b[j, g],
    where K_b[j] = k_cache[block_tables[b, j // block_size], j % block_size]. Rows with L = 0 give 0.

    bf16, fp16 or fp32; fp32 accumulation and online softmax. The queries of a GQA group share one
    program, so each KV block is read once per sequence and KV head. `num_splits` > 1 splits every
    sequence's keys into that many parts (flash-decoding) combined by a second kernel; by default it
    is chosen from the batch, the device and `max_context_len` (a host-side bound; without it, and on
    CPU, one split). Each sequence's split is computed on the device from its own length, so a fixed
    num_splits serves any context lengths (what a CUDA graph needs). No host synchronisation.
    """
    num_seqs, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1:3]
    if num_heads % num_kv_heads != 0:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} KV heads")
    if k_cache.shape != v_cache.shape or k_cache.shape[3] != head_dim:
        raise ValueError(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} do not fit q's head dim")
    if q.stride(2) != 1 or k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("q, k_cache and v_cache need a contiguous head dim")
    out = torch.empty((num_seqs, num_heads, head_dim), dtype=q.dtype, device=q.device)
    if num_seqs == 0:
        return out
    group = num_heads // num_kv_heads
    block_d = max(16, triton.next_power_of_2(head_dim))
    launch = {}
    if block_n is None:
        # GPU: 64 keys per tile (32 for wide heads or fp32, so pipelined K/V tiles fit in shared memory);
        # the interpreter: small tiles.
        block_n = 16 if not q.is_cuda else (64 if block_d * q.dtype.itemsize <= 256 else 32)
        if q.is_cuda and block_d <= 64 and num_seqs * num_kv_heads >= MANY_PROGRAMS and num_warps is None:
            # Narrow heads (Llama-3.2-1B's 64) over many sequences: smaller tiles, two warps
            # (benchmarks/kernels/sweep_paged_attention.py, H100: B 128 at context 512, 70.6 -> 62.0 us).
            block_n, launch["num_warps"] = 32, 2
    if num_splits is None:
        num_splits = _default_num_splits(num_seqs * num_kv_heads, max_context_len, block_n, q.device)
    part_acc = part_ml = out  # unused with one split
    if num_splits > 1:
        part_acc = torch.empty((num_seqs, num_heads, num_splits, block_d), dtype=torch.float32, device=q.device)
        part_ml = torch.empty((num_seqs, num_heads, num_splits, 2), dtype=torch.float32, device=q.device)
    if num_warps is not None:
        launch["num_warps"] = num_warps
    if num_stages is not None:
        launch["num_stages"] = num_stages
    use_pdl = launches_pdl(q.device)
    _paged_attention_kernel[(num_seqs, num_kv_heads, num_splits)](
        out,
        part_acc,
        part_ml,
        q,
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        scale * _LOG2E,
        sliding_window or _NO_WINDOW,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        block_tables.stride(0),
        HEAD_DIM=head_dim,
        QUERIES_PER_KV=group,
        KV_BLOCK_SIZE=block_size,
        NUM_SPLITS=num_splits,
        BLOCK_G=max(16, triton.next_power_of_2(group)),
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        IEEE_DOT=q.dtype == torch.float32,
        PDL=use_pdl,
        **launch,
        **pdl.launch_options(use_pdl),
    )
    if num_splits > 1:
        _paged_attention_reduce_kernel[(num_seqs, num_heads)](
            out,
            part_acc,
            part_ml,
            out.stride(0),
            out.stride(1),
            HEAD_DIM=head_dim,
            NUM_SPLITS=num_splits,
            BLOCK_S=triton.next_power_of_2(num_splits),
            BLOCK_D=block_d,
            PDL=use_pdl,
            **pdl.launch_options(use_pdl),
        )
    return out


def _default_num_splits(programs: int, max_context_len: int | None, block_n: int, device: torch.device) -> int:
    """Enough splits to give every multiprocessor about two programs, each split at least 4 key tiles,
    rounded down to a power of two: NUM_SPLITS is a compile-time constant, so a server meets at most six
    variants (SPLIT_CHOICES), which Engine.warm_up compiles before the first request."""
    if device.type != "cuda" or max_context_len is None:
        return 1
    by_length = max(1, max_context_len // (4 * block_n))
    by_occupancy = triton.cdiv(2 * num_sms(device), programs)
    return 1 << (max(1, min(by_length, by_occupancy, SPLIT_CHOICES[-1])).bit_length() - 1)
