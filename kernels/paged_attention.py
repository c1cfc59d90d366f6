"""Paged decode attention: one query token per sequence over its KV blocks, read through the block table."""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import pdl
from .configs import num_sms

__all__ = ["MANY_PROGRAMS", "SPLIT_CHOICES", "Rotary", "paged_attention", "rotary_pays"]

_LOG2E = 1.4426950408889634
_NO_WINDOW = 2**31 - 1
SPLIT_CHOICES = (1, 2, 4, 8, 16, 32)  # the split counts the default rule picks
MANY_PROGRAMS = 1024  # sequences x KV heads from which narrow heads take the small-tile launch


class Rotary(NamedTuple):
    """The new token of each sequence, for paged_attention to rotate and cache before attending: its k and v
    ([B, KV_H, D], D contiguous; k not rotated yet) and the RoPE tables' rows at its position ([B, D] in q's
    dtype, both halves of a row equal: HF's cos/sin)."""

    k: torch.Tensor
    v: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor


def rotary_pays(num_seqs: int, num_kv_heads: int) -> bool:
    """Whether a decode step of num_seqs sequences runs faster with the rotary + KV write inside the attention
    launch (`rotary`) than as a launch of its own. The fused launch saves a kernel but each program rotates
    its queries before its loop can start loading keys: H100, decode step at 1B / 8B dimensions
    (benchmarks/RESULTS.md, seventh session): 1B B 64 -2.1%, 8B B 64 even, but 1B B 128 -0.9% against 8B
    B 128 +0.8%, and B 256 +1.5% / +1.0%. So: fewer programs than MANY_PROGRAMS."""
    return num_seqs * num_kv_heads < MANY_PROGRAMS


@triton.jit
def _rotated(rows_ptr, row_mask, offs_d, d_mask, c, s, HALF: tl.constexpr):
    """RoPE of the rows starting at rows_ptr ([R] pointers; [R, BLOCK_D] out, x's dtype) with c, s the
    [BLOCK_D] fp32 cos and sin of their position: x * cos + rotate_half(x) * sin, each product rounded to x's
    dtype as torch rounds it (the values of kernels/fused_ops_triton.py's rotary)."""
    mask = row_mask[:, None] & d_mask[None, :]
    first = (offs_d < HALF)[None, :]
    x = tl.load(rows_ptr[:, None] + offs_d[None, :], mask=mask, other=0.0)
    partner = tl.load(rows_ptr[:, None] + tl.where(offs_d < HALF, offs_d + HALF, offs_d - HALF)[None, :],
                      mask=mask, other=0.0)  # fmt: skip
    dtype = x.dtype
    xc = (x.to(tl.float32) * c[None, :]).to(dtype).to(tl.float32)
    ps = (partner.to(tl.float32) * s[None, :]).to(dtype).to(tl.float32)  # rounding is symmetric: -round(a) = round(-a)
    return tl.where(first, xc - ps, xc + ps).to(dtype)


# A block table's row stride is its width, which changes with the batch: unspecialised, one variant serves all.
@triton.jit(do_not_specialize=["stride_bt"])
def _paged_attention_kernel(
    out_ptr,  # [B, H, D] q's dtype; written when NUM_SPLITS == 1
    part_acc_ptr,  # [B, H, NUM_SPLITS, BLOCK_D] fp32 unnormalised partial outputs; written when NUM_SPLITS > 1
    part_ml_ptr,  # [B, H, NUM_SPLITS, 2] fp32 (running max in log2 units, sum of exponentials)
    q_ptr,  # [B, H, D] (not rotated yet with ROTARY)
    k_cache_ptr,  # [num_blocks, KV_BLOCK_SIZE, KV_H, D]
    v_cache_ptr,  # [num_blocks, KV_BLOCK_SIZE, KV_H, D]
    block_tables_ptr,  # [B, max_blocks] integer
    context_lens_ptr,  # [B] integer
    k_new_ptr,  # [B, KV_H, D] with ROTARY: each sequence's new key, not rotated yet
    v_new_ptr,  # [B, KV_H, D] with ROTARY: its value
    cos_ptr,  # [B, D] with ROTARY: cos at the new token's position (both halves equal)
    sin_ptr,  # [B, D]
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
    stride_knb,
    stride_knh,
    stride_vnb,
    stride_vnh,
    stride_cos,
    stride_sin,
    HEAD_DIM: tl.constexpr,
    QUERIES_PER_KV: tl.constexpr,  # query heads sharing one KV head (GQA group)
    KV_BLOCK_SIZE: tl.constexpr,  # tokens per cache block (any positive integer)
    NUM_SPLITS: tl.constexpr,
    BLOCK_G: tl.constexpr,  # next power of two >= QUERIES_PER_KV, >= 16 (tl.dot's smallest M)
    BLOCK_N: tl.constexpr,  # keys per tile
    BLOCK_D: tl.constexpr,  # next power of two >= HEAD_DIM
    IEEE_DOT: tl.constexpr,  # fp32 inputs: full-precision dots, not tf32
    ROTARY: tl.constexpr,  # rotate q and the new key, write the new key and value to the cache, then attend
    PDL: tl.constexpr,  # launched with PDL (kernels/pdl.py)
):
    """Semantics: with ROTARY first, for L = context_len[b] > 0: q[b, h] and k_new[b, g] rotated by the
    cos/sin rows of b (q in registers only), and k_cache / v_cache at key L - 1 (through the block table)
    = rotated k_new[b, g] / v_new[b, g], written by the split that reads that key. Then for sequence b, KV head g,
    query head h = g * QUERIES_PER_KV + i and split s:
    keys j in [lo, context_len[b]) with lo = max(0, context_len[b] - sliding_window) (0 without a
    window), key j at k_cache[block_tables[b, j // KV_BLOCK_SIZE], j % KV_BLOCK_SIZE, g];
    out[b, h] = softmax_j(scale * q[b, h] . k_j) @ v_j over all j (one split), or split s's share of the
    key tiles as an unnormalised partial with its max and sum (several splits, combined by the reduce).
    Only keys below context_len are read, and only the block-table entries that hold them."""
    pdl.enter(PDL)
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq64 = seq.to(tl.int64)  # row offsets in 64 bits

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
    table_row = block_tables_ptr + seq64 * stride_bt

    q_rows = q_ptr + seq64 * stride_qb + heads * stride_qh  # [BLOCK_G]
    if ROTARY:
        cos_row = tl.load(cos_ptr + seq64 * stride_cos + offs_d, mask=d_mask, other=0.0).to(tl.float32)
        sin_row = tl.load(sin_ptr + seq64 * stride_sin + offs_d, mask=d_mask, other=0.0).to(tl.float32)
        q = _rotated(q_rows, g_mask, offs_d, d_mask, cos_row, sin_row, HEAD_DIM // 2)  # [BLOCK_G, BLOCK_D]
        last = ctx - 1  # the new key's position
        if (ctx > 0) & (last // BLOCK_N >= tile_lo) & (last // BLOCK_N < tile_hi):
            one = tl.arange(0, 1)
            k_row = k_new_ptr + seq64 * stride_knb + kv_head * stride_knh + one  # [1]
            k_rot = _rotated(k_row, one == 0, offs_d, d_mask, cos_row, sin_row, HEAD_DIM // 2)  # [1, BLOCK_D]
            v_new = tl.load(v_new_ptr + seq64 * stride_vnb + kv_head * stride_vnh + offs_d, mask=d_mask)
            new_block = tl.load(table_row + last // KV_BLOCK_SIZE).to(tl.int64)
            new_row = last % KV_BLOCK_SIZE
            k_dst = k_cache_ptr + new_block * stride_kb + new_row * stride_kt + kv_head * stride_kh
            v_dst = v_cache_ptr + new_block * stride_vb + new_row * stride_vt + kv_head * stride_vh
            tl.store(k_dst + offs_d[None, :], k_rot.to(k_cache_ptr.dtype.element_ty), mask=d_mask[None, :])
            tl.store(v_dst + offs_d, v_new.to(v_cache_ptr.dtype.element_ty), mask=d_mask)
        tl.debug_barrier()  # the key and value just written, visible to every thread that reads them below
    else:
        q = tl.load(q_rows[:, None] + offs_d[None, :], mask=g_mask[:, None] & d_mask[None, :], other=0.0)

    m_i = tl.full((BLOCK_G,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_G,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)
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
        o_ptrs = out_ptr + seq64 * stride_ob + heads[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=g_mask[:, None] & d_mask[None, :])
    else:
        # Empty splits store m = -inf, l = 0, acc = 0: the reduce weighs them by zero.
        row_idx = (seq64 * (tl.num_programs(1) * QUERIES_PER_KV) + heads) * NUM_SPLITS + split
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
    q: torch.Tensor,  # [B, H, D] one query token per sequence (rotary applied, unless `rotary`); D contiguous
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
    rotary: Rotary | None = None,
) -> torch.Tensor:  # [B, H, D] q's dtype
    """Decode attention of each sequence's one query over its cached keys, through its block table.

    With `rotary`, q and the new keys come as projected (not rotated) and the kernel does what a rotary +
    KV-write launch would have done before it, in the same launch: it rotates q (in registers; q is not
    written) and the new key, and writes the new key and value to the cache as key L - 1 of the sequence
    (block_tables[b, (L - 1) // block_size], row (L - 1) % block_size), which the attention then includes.
    Rows with L = 0 write nothing.

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
    if rotary is not None:
        _check_rotary(rotary, q, num_kv_heads)
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
    _paged_attention_kernel[(num_seqs, num_kv_heads, num_splits)](
        out,
        part_acc,
        part_ml,
        q,
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        *((rotary.k, rotary.v, rotary.cos, rotary.sin) if rotary is not None else (q, q, q, q)),
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
        *((rotary.k.stride(0), rotary.k.stride(1), rotary.v.stride(0), rotary.v.stride(1), rotary.cos.stride(0),
           rotary.sin.stride(0)) if rotary is not None else (0,) * 6),
        HEAD_DIM=head_dim,
        QUERIES_PER_KV=group,
        KV_BLOCK_SIZE=block_size,
        NUM_SPLITS=num_splits,
        BLOCK_G=max(16, triton.next_power_of_2(group)),
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        IEEE_DOT=q.dtype == torch.float32,
        ROTARY=rotary is not None,
        **launch,
        **pdl.launch(q.device),
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
            **pdl.launch(q.device),
        )
    return out


def _check_rotary(rotary: Rotary, q: torch.Tensor, num_kv_heads: int) -> None:
    num_seqs, _, head_dim = q.shape
    if head_dim % 2:
        raise ValueError(f"rotary needs an even head dim, got {head_dim}")
    for name, t in (("k", rotary.k), ("v", rotary.v)):
        if t.shape != (num_seqs, num_kv_heads, head_dim) or t.dtype != q.dtype or t.stride(2) != 1:
            raise ValueError(f"rotary.{name} must be [{num_seqs}, {num_kv_heads}, {head_dim}] in {q.dtype} with a "
                             f"contiguous head dim, got {tuple(t.shape)} {t.dtype}")
    for name, t in (("cos", rotary.cos), ("sin", rotary.sin)):
        if t.shape != (num_seqs, head_dim) or t.dtype != q.dtype or t.stride(1) != 1:
            raise ValueError(f"rotary.{name} must be [{num_seqs}, {head_dim}] in {q.dtype}, "
                             f"got {tuple(t.shape)} {t.dtype}")


def _default_num_splits(programs: int, max_context_len: int | None, block_n: int, device: torch.device) -> int:
    """Enough splits to give every multiprocessor about two programs, each split at least 4 key tiles,
    rounded down to a power of two: NUM_SPLITS is a compile-time constant, so a server meets at most six
    variants (SPLIT_CHOICES), which Engine.warm_up compiles before the first request."""
    if device.type != "cuda" or max_context_len is None:
        return 1
    by_length = max(1, max_context_len // (4 * block_n))
    by_occupancy = triton.cdiv(2 * num_sms(device), programs)
    return 1 << (max(1, min(by_length, by_occupancy, SPLIT_CHOICES[-1])).bit_length() - 1)
