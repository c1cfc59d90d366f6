"""Triton SGMV kernels for batched multi-adapter LoRA and their torch references."""

from __future__ import annotations

import torch

from .reference import lora_apply_ref

__all__ = ["lora_apply"]


def lora_apply(
    y: torch.Tensor,  # [T, N]
    x: torch.Tensor,  # [T, K]
    lora_a: torch.Tensor,  # [S, R, K]
    lora_b: torch.Tensor,  # [S, N, R]
    ranks: torch.Tensor,  # [S] integer
    scales: torch.Tensor,  # [S] float32
    token_slots: torch.Tensor,  # [T] integer, -1 = no adapter
) -> torch.Tensor:
    """y[t] += scales[s] * (x[t] @ lora_a[s, :r].T) @ lora_b[s, :, :r].T for s = token_slots[t] >= 0,
    r = ranks[s]; in place, returns y.

    The Triton kernels are not in yet: every device runs the torch reference for now.
    """
    return lora_apply_ref(y, x, lora_a, lora_b, ranks, scales, token_slots)
