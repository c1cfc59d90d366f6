"""Triton kernels for the decoder's elementwise work: RMSNorm (with the residual add), SiLU-and-mul, rotary + KV write.

Imported only on the kernel path (CUDA, or Triton's interpreter); kernels/fused_ops.py holds the public
operators, their torch references and the choice between the two. Every kernel rounds where the torch
reference rounds (to the input dtype after each elementwise op), so in bf16/fp16 the two differ only by the
order of the row sums and the last bit of exp/rsqrt.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import pdl

__all__ = ["launch_rms_norm", "launch_rope_and_cache", "launch_silu_and_mul"]

_MAX_ROW = 65536  # RMSNorm holds one row in registers


@triton.jit
def _rms_norm_kernel(
    x_ptr,  # [T, N] read
    residual_ptr,  # [T, N] with HAS_RESIDUAL: read, then overwritten with x + residual
    out_ptr,  # [T, N] written (may be x_ptr: each program reads its whole row before writing it)
    weight_ptr,  # [N]
    stride_x,
    stride_r,
    stride_o,
    n_cols,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_N: tl.constexpr,  # next power of two >= n_cols
    PDL: tl.constexpr,  # launched with PDL (kernels/pdl.py)
):
    """Semantics: for each row t: h = x[t] (+ residual[t], rounded, stored back to residual[t]);
    out[t] = weight * round(h * rsqrt(mean(h^2) + eps)), fp32 inside."""
    pdl.enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_N)
    mask = offs < n_cols
    dtype = out_ptr.dtype.element_ty
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + row * stride_r + offs, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(dtype)  # torch's x + residual, rounded to the dtype
        tl.store(residual_ptr + row * stride_r + offs, x, mask=mask)
    h = x.to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(h * h, axis=0) / n_cols + eps)
    normed = (h * inv_rms).to(dtype)  # HF casts before the weight multiply; so do we
    w = tl.load(weight_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + row * stride_o + offs, (w.to(tl.float32) * normed.to(tl.float32)).to(dtype), mask=mask)


def launch_rms_norm(
    out: torch.Tensor,  # [T, N] written; may be x itself
    x: torch.Tensor,  # [T, N]
    residual: torch.Tensor | None,  # [T, N] updated in place to x + residual; None: plain RMSNorm
    weight: torch.Tensor,  # [N]
    eps: float,
) -> None:
    t, n = x.shape
    if n > _MAX_ROW:
        raise ValueError(f"rows of {n} features exceed the kernel's {_MAX_ROW}")
    if t == 0:
        return
    block_n = triton.next_power_of_2(n)
    _rms_norm_kernel[(t,)](
        x,
        x if residual is None else residual,
        out,
        weight,
        x.stride(0),
        0 if residual is None else residual.stride(0),
        out.stride(0),
        n,
        eps,
        HAS_RESIDUAL=residual is not None,
        BLOCK_N=block_n,
        num_warps=min(16, max(4, block_n // 512)),
        **pdl.launch(x.device),
    )


@triton.jit
def _silu_and_mul_kernel(
    out_ptr,  # [T, I] written
    gate_up_ptr,  # [T, 2 I]: gate columns [0, I), up columns [I, 2 I)
    stride_o,
    stride_gu,
    n_cols,  # I
    BLOCK_N: tl.constexpr,
    PDL: tl.constexpr,  # launched with PDL (kernels/pdl.py)
):
    """Semantics: out[t, i] = round(round(silu(gate_up[t, i])) * gate_up[t, I + i]), fp32 inside."""
    pdl.enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offs < n_cols
    dtype = out_ptr.dtype.element_ty
    gate = tl.load(gate_up_ptr + row * stride_gu + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * stride_gu + n_cols + offs, mask=mask, other=0.0).to(tl.float32)
    act = (gate / (1.0 + tl.exp(-gate))).to(dtype)  # F.silu's result, rounded before the multiply
    tl.store(out_ptr + row * stride_o + offs, (act.to(tl.float32) * up).to(dtype), mask=mask)


def launch_silu_and_mul(out: torch.Tensor, gate_up: torch.Tensor) -> None:
    """out [T, I] written from gate_up [T, 2 I]."""
    t, i = out.shape
    if t == 0 or i == 0:
        return
    block_n = min(1024, triton.next_power_of_2(i))
    _silu_and_mul_kernel[(t, triton.cdiv(i, block_n))](
        out, gate_up, out.stride(0), gate_up.stride(0), i, BLOCK_N=block_n, num_warps=4, **pdl.launch(out.device)
    )


@triton.jit
def _rope_and_cache_kernel(
    qk_ptr,  # [T, QK_HEADS, HEAD_DIM]; rotated in place when ROTATE; its last KV_HEADS heads are k
    v_ptr,  # [T, KV_HEADS, HEAD_DIM]; read when WRITE_CACHE
    cos_ptr,  # [T, HEAD_DIM] qk's dtype; its two halves are equal, the first is read
    sin_ptr,  # [T, HEAD_DIM]
    k_cache_ptr,  # [num_slots, KV_HEADS, HEAD_DIM]; written when WRITE_CACHE
    v_cache_ptr,  # [num_slots, KV_HEADS, HEAD_DIM]
    slot_ptr,  # [T] integer flat cache slots
    stride_qkt,
    stride_qkh,
    stride_vt,
    stride_vh,
    stride_cos,
    stride_sin,
    stride_kcs,
    stride_kch,
    stride_vcs,
    stride_vch,
    QK_HEADS: tl.constexpr,
    KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,  # even
    ROTATE: tl.constexpr,
    WRITE_CACHE: tl.constexpr,
    BLOCK_H: tl.constexpr,  # heads per program
    BLOCK_HALF: tl.constexpr,  # next power of two >= HEAD_DIM / 2
    PDL: tl.constexpr,  # launched with PDL (kernels/pdl.py)
):
    """Semantics: for token t and head h (x = qk[t, h], x1/x2 its halves, c/s = cos/sin[t, :HEAD_DIM/2]):
    ROTATE: qk[t, h] = (x1 c - x2 s, x2 c + x1 s) (HF's x * cos + rotate_half(x) * sin, each product
    rounded to the dtype like torch's);
    WRITE_CACHE: k_cache[slot[t], g] = qk[t, QK_HEADS - KV_HEADS + g] (after rotation),
    v_cache[slot[t], g] = v[t, g]. Program (t, b) covers heads [b BLOCK_H, (b + 1) BLOCK_H)."""
    pdl.enter(PDL)
    tok = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)  # [BLOCK_H]
    offs_d = tl.arange(0, BLOCK_HALF)
    half = HEAD_DIM // 2
    d_mask = offs_d < half
    mask = (heads < QK_HEADS)[:, None] & d_mask[None, :]
    dtype = qk_ptr.dtype.element_ty

    x_ptrs = qk_ptr + tok * stride_qkt + heads[:, None] * stride_qkh + offs_d[None, :]
    x1 = tl.load(x_ptrs, mask=mask, other=0.0)  # [BLOCK_H, BLOCK_HALF]
    x2 = tl.load(x_ptrs + half, mask=mask, other=0.0)
    if ROTATE:
        c = tl.load(cos_ptr + tok * stride_cos + offs_d, mask=d_mask, other=0.0).to(tl.float32)[None, :]
        s = tl.load(sin_ptr + tok * stride_sin + offs_d, mask=d_mask, other=0.0).to(tl.float32)[None, :]
        a1 = x1.to(tl.float32)
        a2 = x2.to(tl.float32)
        y1 = ((a1 * c).to(dtype).to(tl.float32) - (a2 * s).to(dtype).to(tl.float32)).to(dtype)
        y2 = ((a2 * c).to(dtype).to(tl.float32) + (a1 * s).to(dtype).to(tl.float32)).to(dtype)
        tl.store(x_ptrs, y1, mask=mask)
        tl.store(x_ptrs + half, y2, mask=mask)
        x1 = y1
        x2 = y2
    if WRITE_CACHE:
        slot = tl.load(slot_ptr + tok).to(tl.int64)
        kv_head = heads - (QK_HEADS - KV_HEADS)  # negative for q heads: masked out
        k_mask = mask & (kv_head >= 0)[:, None]
        k_ptrs = k_cache_ptr + slot * stride_kcs + kv_head[:, None] * stride_kch + offs_d[None, :]
        tl.store(k_ptrs, x1.to(k_cache_ptr.dtype.element_ty), mask=k_mask)
        tl.store(k_ptrs + half, x2.to(k_cache_ptr.dtype.element_ty), mask=k_mask)
        v_mask = (heads < KV_HEADS)[:, None] & d_mask[None, :]
        v_ptrs = v_ptr + tok * stride_vt + heads[:, None] * stride_vh + offs_d[None, :]
        v1 = tl.load(v_ptrs, mask=v_mask, other=0.0)
        v2 = tl.load(v_ptrs + half, mask=v_mask, other=0.0)
        vc_ptrs = v_cache_ptr + slot * stride_vcs + heads[:, None] * stride_vch + offs_d[None, :]
        tl.store(vc_ptrs, v1.to(v_cache_ptr.dtype.element_ty), mask=v_mask)
        tl.store(vc_ptrs + half, v2.to(v_cache_ptr.dtype.element_ty), mask=v_mask)


def launch_rope_and_cache(
    qk: torch.Tensor,  # [T, QK_HEADS, D]
    v: torch.Tensor | None,  # [T, KV_HEADS, D]; None: no cache write
    cos: torch.Tensor | None,  # [T, D]; None: no rotation
    sin: torch.Tensor | None,  # [T, D]
    k_cache: torch.Tensor | None,  # [num_slots, KV_HEADS, D]
    v_cache: torch.Tensor | None,  # [num_slots, KV_HEADS, D]
    slot_mapping: torch.Tensor | None,  # [T] integer
) -> None:
    t, qk_heads, head_dim = qk.shape
    if t == 0:
        return
    rotate, write = cos is not None, v is not None
    kv_heads = v.shape[1] if write else 0
    block_half = triton.next_power_of_2(head_dim // 2)
    block_h = min(triton.next_power_of_2(qk_heads), max(1, 2048 // block_half))
    dummy = qk  # stands in for the pointers a disabled branch never reads
    _rope_and_cache_kernel[(t, triton.cdiv(qk_heads, block_h))](
        qk,
        v if write else dummy,
        cos if rotate else dummy,
        sin if rotate else dummy,
        k_cache if write else dummy,
        v_cache if write else dummy,
        slot_mapping if write else dummy,
        qk.stride(0),
        qk.stride(1),
        v.stride(0) if write else 0,
        v.stride(1) if write else 0,
        cos.stride(0) if rotate else 0,
        sin.stride(0) if rotate else 0,
        k_cache.stride(0) if write else 0,
        k_cache.stride(1) if write else 0,
        v_cache.stride(0) if write else 0,
        v_cache.stride(1) if write else 0,
        QK_HEADS=qk_heads,
        KV_HEADS=kv_heads,
        HEAD_DIM=head_dim,
        ROTATE=rotate,
        WRITE_CACHE=write,
        BLOCK_H=block_h,
        BLOCK_HALF=block_half,
        num_warps=4,
        **pdl.launch(qk.device),
    )
