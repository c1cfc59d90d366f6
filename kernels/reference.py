"""Torch semantics of the kernels' operators: the CPU path, the test oracle and the benchmark baseline."""

from __future__ import annotations

import torch

__all__ = ["lora_apply_fused_ref", "lora_apply_ref", "paged_attention_ref"]


def lora_apply_ref(
    y: torch.Tensor,  # [T, N], may be a column view (y.stride(0) != N)
    x: torch.Tensor,  # [T, K]
    lora_a: torch.Tensor,  # [S, R, K]
    lora_b: torch.Tensor,  # [S, N, R]
    ranks: torch.Tensor,  # [S] integer
    scales: torch.Tensor,  # [S] float32
    token_slots: torch.Tensor,  # [T] integer, -1 = no adapter
) -> torch.Tensor:
    """In place: for each t with s = token_slots[t] >= 0 and r = ranks[s]:
    y[t] += scales[s] * (x[t] @ lora_a[s, :r].T) @ lora_b[s, :, :r].T. Returns y.

    Computes in fp32 (or in x's dtype when that is wider) and adds into y in y's dtype. Loops over the
    distinct slots of the batch, so it synchronises with the host; it is a reference, not a kernel.
    """
    acc_dtype = torch.promote_types(x.dtype, torch.float32)
    slots = token_slots.to(torch.long)
    for s in torch.unique(slots[slots >= 0]).tolist():
        rows = (slots == s).nonzero(as_tuple=True)[0]
        r = int(ranks[s])
        if r == 0:
            continue
        a = lora_a[s, :r].to(acc_dtype)  # [r, K]
        b = lora_b[s, :, :r].to(acc_dtype)  # [N, r]
        delta = (x[rows].to(acc_dtype) @ a.T) @ b.T * scales[s].to(acc_dtype)
        y[rows] = (y[rows].to(acc_dtype) + delta).to(y.dtype)
    return y


def lora_apply_fused_ref(
    y: torch.Tensor,  # [T, sum N_i]
    x: torch.Tensor,  # [T, K]
    lora_a: tuple[torch.Tensor, ...],  # n x [S, R, K]
    lora_b: tuple[torch.Tensor, ...],  # n x [S, N_i, R]
    ranks: torch.Tensor,  # [n, S] integer; 0 where an adapter does not target slice i
    scales: torch.Tensor,  # [S] float32
    token_slots: torch.Tensor,  # [T] integer, -1 = no adapter
) -> torch.Tensor:
    """In place: for each slice i, lora_apply_ref on the columns offset_i .. offset_i + N_i of y, where
    offset_i = N_0 + ... + N_{i-1}, with lora_a[i], lora_b[i] and ranks[i]. Returns y."""
    width = sum(b.shape[1] for b in lora_b)
    if width != y.shape[1]:
        raise ValueError(f"the slices' widths add up to {width}, y has {y.shape[1]} columns")
    offset = 0
    for i, (a, b) in enumerate(zip(lora_a, lora_b, strict=True)):
        n = b.shape[1]
        lora_apply_ref(y[:, offset : offset + n], x, a, b, ranks[i], scales, token_slots)
        offset += n
    return y


def paged_attention_ref(
    q: torch.Tensor,  # [B, H, D] one query token per sequence
    k_cache: torch.Tensor,  # [num_blocks, block_size, KV_H, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, KV_H, D]
    block_tables: torch.Tensor,  # [B, max_blocks] integer
    context_lens: torch.Tensor,  # [B] integer
    scale: float,
    *,
    sliding_window: int | None = None,
) -> torch.Tensor:  # [B, H, D] q's dtype
    """For each b, h: g = h // (H // KV_H), L = context_lens[b], keys j in [max(0, L - sliding_window), L);
    out[b, h] = softmax_j(scale * q[b, h] . K_b[j, g]) @ V_b[j, g] with K_b[j] = k_cache[block_tables[b,
    j // block_size], j % block_size] (V alike). Rows with L = 0 are 0.

    Computes in fp32 (or in q's dtype when that is wider). Loops over the sequences on the host.
    """
    acc_dtype = torch.promote_types(q.dtype, torch.float32)
    num_heads, head_dim = q.shape[1:]
    block_size, num_kv_heads = k_cache.shape[1:3]
    out = torch.zeros(q.shape, dtype=acc_dtype, device=q.device)
    for b, length in enumerate(context_lens.tolist()):
        if length == 0:
            continue
        lo = 0 if sliding_window is None else max(0, length - sliding_window)
        blocks = block_tables[b, : -(-length // block_size)].long()
        keys = k_cache[blocks].reshape(-1, num_kv_heads, head_dim)[lo:length].to(acc_dtype)  # [L', KV_H, D]
        values = v_cache[blocks].reshape(-1, num_kv_heads, head_dim)[lo:length].to(acc_dtype)
        keys = keys.repeat_interleave(num_heads // num_kv_heads, dim=1)  # [L', H, D]
        values = values.repeat_interleave(num_heads // num_kv_heads, dim=1)
        scores = torch.einsum("hd,jhd->hj", q[b].to(acc_dtype), keys) * scale  # [H, L']
        out[b] = torch.einsum("hj,jhd->hd", scores.softmax(dim=-1), values)
    return out.to(q.dtype)
