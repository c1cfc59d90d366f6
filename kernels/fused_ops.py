"""The decoder's fused elementwise operators (RMSNorm with the residual add, SiLU-and-mul, rotary + KV write) and their torch references.

Each operator is one Triton launch (kernels/fused_ops_triton.py) where the torch path runs several small
kernels: RMSNorm is 8 in bf16 (casts, pow, mean, add, rsqrt, two muls), the residual add one more,
rotary five (neg, cat, two muls, add), SiLU-and-mul two, the KV write two (one index_copy_ each).

CUDA tensors run the kernels; CPU tensors run the `*_ref` torch functions (the exact math of the model's
torch path, so CPU parity with transformers stays token-exact), or the kernels through Triton's
interpreter when it is on (TRITON_INTERPRET=1, how the tests run them on CPU). The kernels live apart
(imported on the kernel path only) because Triton is Linux-only and the CPU engine must import without it.

Shapes and launch grids depend only on tensor shapes, never on their values: every operator is safe
inside a CUDA graph.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F

__all__ = [
    "fused_add_rms_norm",
    "fused_add_rms_norm_ref",
    "rms_norm",
    "rms_norm_ref",
    "rope_ref",
    "rotary_embedding",
    "rotary_embedding_and_cache",
    "silu_and_mul",
    "silu_and_mul_ref",
    "write_kv_cache",
    "write_kv_cache_ref",
]


# --- torch references ---------------------------------------------------------------------------------


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF Llama's RMSNorm: fp32 inside, cast to x's dtype before the weight multiply."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def fused_add_rms_norm_ref(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm_ref(x + residual), x + residual), out of place."""
    new_residual = x + residual
    return rms_norm_ref(new_residual, weight, eps), new_residual


def silu_and_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up = [gate | up] along its last dim."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D]; cos/sin [T, D] in x's dtype. HF Llama's x * cos + rotate_half(x) * sin, out of place."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def write_kv_cache_ref(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """k_cache[slot_mapping[t]] = k[t], v_cache[slot_mapping[t]] = v[t] (caches [num_slots, kv_heads, D])."""
    k_cache.index_copy_(0, slot_mapping, k)
    v_cache.index_copy_(0, slot_mapping, v)


# --- operators ----------------------------------------------------------------------------------------


def rms_norm(
    x: torch.Tensor,  # [T, N], last dim contiguous
    weight: torch.Tensor,  # [N] x's dtype
    eps: float,
) -> torch.Tensor:  # [T, N] x's dtype, new
    """out[t] = weight * (h * rsqrt(mean(h^2) + eps)).to(x.dtype) with h = x[t] in fp32."""
    _check_norm(x, None, weight)
    if not _use_triton(x):
        return rms_norm_ref(x, weight, eps)
    from .fused_ops_triton import launch_rms_norm

    out = torch.empty_like(x)
    launch_rms_norm(out, x, None, weight, eps)
    return out


def fused_add_rms_norm(
    x: torch.Tensor,  # [T, N], last dim contiguous; overwritten with the normed rows
    residual: torch.Tensor,  # [T, N]; overwritten with x + residual
    weight: torch.Tensor,  # [N] x's dtype
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # (x, residual), both updated in place
    """Semantics: residual[t] = x[t] + residual[t]; x[t] = rms_norm(residual[t]) (one launch on the kernel
    path). The residual stream of vLLM's decoder: a block's output and the stream meet in the next norm."""
    _check_norm(x, residual, weight)
    if not _use_triton(x):
        residual.add_(x)
        x.copy_(rms_norm_ref(residual, weight, eps))
        return x, residual
    from .fused_ops_triton import launch_rms_norm

    launch_rms_norm(x, x, residual, weight, eps)
    return x, residual


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:  # gate_up [T, 2 I] -> [T, I], new
    """out[t, i] = silu(gate_up[t, i]) * gate_up[t, I + i], rounded to the dtype after the silu like torch."""
    if gate_up.dim() != 2 or gate_up.shape[1] % 2 or gate_up.stride(1) != 1:
        raise ValueError(f"gate_up must be [T, 2 I] with contiguous rows, got {tuple(gate_up.shape)}")
    if not _use_triton(gate_up):
        return silu_and_mul_ref(gate_up)
    from .fused_ops_triton import launch_silu_and_mul

    out = gate_up.new_empty((gate_up.shape[0], gate_up.shape[1] // 2))
    launch_silu_and_mul(out, gate_up)
    return out


def rotary_embedding(
    qk: torch.Tensor,  # [T, heads, D] rotated in place; may be a view (e.g. q and k heads of qkv)
    cos: torch.Tensor,  # [T, D] qk's dtype: cos(position * inv_freq) for both halves
    sin: torch.Tensor,  # [T, D]
) -> None:
    """qk[t, h] = rope_ref(qk, cos, sin)[t, h], in place: one launch for every head of q and k."""
    _check_rope(qk, cos, sin)
    if not _use_triton(qk):
        qk.copy_(rope_ref(qk, cos, sin))
        return
    from .fused_ops_triton import launch_rope_and_cache

    launch_rope_and_cache(qk, None, cos, sin, None, None, None)


def rotary_embedding_and_cache(
    qk: torch.Tensor,  # [T, heads + kv_heads, D] q heads then k heads; rotated in place
    v: torch.Tensor,  # [T, kv_heads, D]
    cos: torch.Tensor,  # [T, D] qk's dtype
    sin: torch.Tensor,  # [T, D]
    k_cache: torch.Tensor,  # [num_slots, kv_heads, D] one layer, flat slots
    v_cache: torch.Tensor,  # [num_slots, kv_heads, D]
    slot_mapping: torch.Tensor,  # [T] int64, every entry a valid slot
) -> None:
    """rotary_embedding(qk, cos, sin), then write_kv_cache(qk[:, -kv_heads:], v, ...): one launch in all
    (vLLM's rotary embedding and reshape_and_cache fused)."""
    _check_rope(qk, cos, sin)
    _check_cache(qk[:, qk.shape[1] - v.shape[1] :], v, k_cache, v_cache, slot_mapping)
    if not _use_triton(qk):
        qk.copy_(rope_ref(qk, cos, sin))
        write_kv_cache_ref(qk[:, qk.shape[1] - v.shape[1] :], v, k_cache, v_cache, slot_mapping)
        return
    from .fused_ops_triton import launch_rope_and_cache

    launch_rope_and_cache(qk, v, cos, sin, k_cache, v_cache, slot_mapping)


def write_kv_cache(
    k: torch.Tensor,  # [T, kv_heads, D]
    v: torch.Tensor,  # [T, kv_heads, D]
    k_cache: torch.Tensor,  # [num_slots, kv_heads, D] one layer, flat slots
    v_cache: torch.Tensor,  # [num_slots, kv_heads, D]
    slot_mapping: torch.Tensor,  # [T] int64, every entry a valid slot
) -> None:
    """k_cache[slot_mapping[t]] = k[t] and v_cache[slot_mapping[t]] = v[t]: one launch for both."""
    _check_cache(k, v, k_cache, v_cache, slot_mapping)
    if not _use_triton(k):
        write_kv_cache_ref(k, v, k_cache, v_cache, slot_mapping)
        return
    from .fused_ops_triton import launch_rope_and_cache

    launch_rope_and_cache(k, v, None, None, k_cache, v_cache, slot_mapping)


# --- checks and dispatch ------------------------------------------------------------------------------


def _check_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor) -> None:
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"x must be [T, N] with contiguous rows, got shape {tuple(x.shape)} strides {x.stride()}")
    if weight.shape != x.shape[1:] or weight.dtype != x.dtype or weight.stride(0) != 1:
        raise ValueError(f"weight {tuple(weight.shape)} {weight.dtype} does not fit x {tuple(x.shape)} {x.dtype}")
    if residual is not None and (
        residual.shape != x.shape or residual.dtype != x.dtype or residual.stride(1) != 1
    ):
        raise ValueError(f"residual {tuple(residual.shape)} {residual.dtype} does not fit x {tuple(x.shape)} {x.dtype}")


def _check_rope(qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    if qk.dim() != 3 or qk.shape[2] % 2 or qk.stride(2) != 1:
        raise ValueError(f"qk must be [T, heads, D] with D even and contiguous, got {tuple(qk.shape)} {qk.stride()}")
    for name, table in (("cos", cos), ("sin", sin)):
        if table.shape != (qk.shape[0], qk.shape[2]) or table.dtype != qk.dtype or table.stride(1) != 1:
            raise ValueError(f"{name} must be [T, D] = {(qk.shape[0], qk.shape[2])} in {qk.dtype}, got {tuple(table.shape)} {table.dtype}")


def _check_cache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    if k.dim() != 3 or k.shape != v.shape or k.shape[2] % 2 or k.stride(2) != 1 or v.stride(2) != 1:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must be one [T, kv_heads, D], D even and contiguous")
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if cache.dim() != 3 or cache.shape[1:] != k.shape[1:] or cache.dtype != k.dtype or cache.stride(2) != 1:
            raise ValueError(f"{name} must be [num_slots, {k.shape[1]}, {k.shape[2]}] in {k.dtype}, got {tuple(cache.shape)} {cache.dtype}")
    if slot_mapping.shape != k.shape[:1] or slot_mapping.dtype != torch.int64:
        raise ValueError(f"slot_mapping must be [{k.shape[0]}] int64, got {tuple(slot_mapping.shape)} {slot_mapping.dtype}")


def _use_triton(x: torch.Tensor) -> bool:
    return x.is_cuda or _triton_interpreting()


@functools.cache
def _triton_interpreting() -> bool:
    """Whether Triton runs kernels on CPU through its interpreter (TRITON_INTERPRET=1 at start-up), asked of
    Triton as kernels/__init__.py does; without Triton (Linux-only) the CPU path is the reference."""
    if importlib.util.find_spec("triton") is None:
        return False
    import triton

    return bool(triton.knobs.runtime.interpret)
