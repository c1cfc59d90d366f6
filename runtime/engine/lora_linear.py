"""The layer wrapper: a (fused) projection's base matmul plus the batched LoRA delta of each of its slices."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from loraledger.kernels import LoraMeta, linear, lora_apply, lora_apply_fused

__all__ = ["LoRABatch", "LoRALinear", "SliceBuffers", "lora_batch"]


@dataclass(frozen=True)
class LoRABatch:
    """Per-step LoRA metadata, built once per step and shared by every layer."""

    token_slots: torch.Tensor  # [T] int32 slot of each token's adapter, -1 = base model
    # Tokens sorted by slot into tiles, built from token_slots once per step for the tile kernels; None when
    # the step takes the token-gather kernels, which read token_slots alone.
    meta: LoraMeta | None
    gather: bool = False


def lora_batch(token_slots: torch.Tensor, meta: LoraMeta, gather: bool) -> LoRABatch:
    """The step's LoRABatch for token_slots ([T] int32): the token-gather kernels (no metadata) where `gather`
    (kernels.prefers_gather, asked by the caller with the step's distinct adapters), else meta rebuilt."""
    if gather:
        return LoRABatch(token_slots=token_slots, meta=None, gather=True)
    return LoRABatch(token_slots=token_slots, meta=meta.build(token_slots))


@dataclass(frozen=True)
class SliceBuffers:
    """Views into the slot pool for one fused layer: one entry per slice (q/k/v, gate/up, or a single one)."""

    lora_a: tuple[torch.Tensor | None, ...]  # per slice [S, R, K], None = projection not in the pool
    lora_b: tuple[torch.Tensor | None, ...]  # per slice [S, N_i, R]
    ranks: torch.Tensor  # [n_slices, S] int32, 0 = slot has no weights for this slice
    scales: torch.Tensor  # [S] float32 (ones: the pool folds each module's scale into its B)


class LoRALinear(nn.Module):
    """y = x @ W.T + b, then for each slice i: y[:, off_i:off_i + N_i] += LoRA_i(x) at each token's slot.

    The slices are the projections fused into one matmul (q, k, v or gate, up); each has its own
    adapter weights in the slot pool. The buffers are attached once (`attach`); loading an adapter
    only writes into them.
    """

    def __init__(self, in_features: int, out_sizes: tuple[int, ...], *, bias: bool):
        super().__init__()
        self.out_sizes = out_sizes
        self.weight = nn.Parameter(torch.empty(sum(out_sizes), in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(sum(out_sizes)), requires_grad=False) if bias else None
        self.buffers_: SliceBuffers | None = None

    def attach(self, buffers: SliceBuffers) -> None:
        if len(buffers.lora_a) != len(self.out_sizes):
            raise ValueError(f"{len(buffers.lora_a)} slice buffers for a layer of {len(self.out_sizes)} slices")
        self.buffers_ = buffers

    def forward(self, x: torch.Tensor, lora: LoRABatch | None) -> torch.Tensor:
        y = linear(x, self.weight, self.bias)  # [T, sum N_i]: F.linear, or split-K for few rows (kernels)
        buf = self.buffers_
        if lora is None or buf is None:
            return y
        if all(a is not None for a in buf.lora_a):
            return lora_apply_fused(
                y, x, buf.lora_a, buf.lora_b, buf.ranks, buf.scales, lora.token_slots, meta=lora.meta,
                gather=lora.gather,
            )
        # Some slices are not in the pool (e.g. lora_targets of q and v only): one call per served slice.
        offset = 0
        for i, n in enumerate(self.out_sizes):
            if buf.lora_a[i] is not None:
                lora_apply(
                    y[:, offset : offset + n],
                    x,
                    buf.lora_a[i],
                    buf.lora_b[i],
                    buf.ranks[i],
                    buf.scales,
                    lora.token_slots,
                    meta=lora.meta,
                    gather=lora.gather,
                )
            offset += n
        return y
