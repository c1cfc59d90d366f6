"""Triton SGMV kernels for batched multi-adapter LoRA and their torch references.

Public operators (in place, return y):

- ``lora_apply(y, x, lora_a, lora_b, ranks, scales, token_slots, *, meta=None)``: one projection.
- ``lora_apply_fused(y, x, lora_a, lora_b, ranks, scales, token_slots, *, meta=None)``: up to three
  slices of one input (qkv, gate_up) written side by side into y's columns, all slices in the same
  launches.
- ``linear(x, weight, bias=None)``: F.linear, or kernels/skinny_matmul.py where its table says so.

CUDA tensors run the Triton kernels; CPU tensors run the torch reference (kernels/reference.py), or the
same Triton kernels through Triton's interpreter when it is on (TRITON_INTERPRET=1, how CI tests them).
Four paths, one operator: the token-gather pair (kernels/sgmv_gather.py: each program gathers a few
tokens' own adapter rows, no sorted metadata) where the caller asks for it (`gather=True`; the engine
asks `prefers_gather` once per step) or a LoraMeta's adapters hint says most tokens have their own
adapter in a small batch; the one-launch whole-K kernel (kernels/sgmv_fused.py: each program shrinks
its tile over the whole K, then expands a column group) where configs.prefers_fused picks it from
host-known sizes (T, N, K, R and the bound on the batch's tiles, which a LoraMeta built with num_adapters
tightens); otherwise a split-K shrink and an expand, as two launches (kernels/sgmv_shrink.py,
kernels/sgmv_expand.py) or, where the table's config says `coop`, as one cooperative launch with a grid
barrier between them (kernels/sgmv_coop.py).

``meta`` is a LoraMeta (kernels/meta.py) built once per step from token_slots and shared by every
projection of the step; without it each call builds its own. It is derived data only: the reference
path needs none and does not read it.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from .configs import skinny_config
from .meta import LoraMeta
from .reference import lora_apply_fused_ref, lora_apply_ref

__all__ = [
    "LoraMeta",
    "linear",
    "lora_apply",
    "lora_apply_fused",
    "lora_apply_fused_ref",
    "lora_apply_ref",
    "prefers_gather",
]


def lora_apply(
    y: torch.Tensor,  # [T, N], may be a column view of a wider tensor (y.stride(0) != N)
    x: torch.Tensor,  # [T, K]
    lora_a: torch.Tensor,  # [S, R, K]
    lora_b: torch.Tensor,  # [S, N, R]
    ranks: torch.Tensor,  # [S] integer
    scales: torch.Tensor,  # [S] float32
    token_slots: torch.Tensor,  # [T] integer, -1 = no adapter
    *,
    meta: LoraMeta | None = None,
    gather: bool | None = None,
) -> torch.Tensor:
    """y[t] += scales[s] * (x[t] @ lora_a[s, :r].T) @ lora_b[s, :, :r].T for s = token_slots[t] >= 0,
    r = ranks[s]; in place, returns y.

    bf16, fp16 or fp32 (x, lora_a and lora_b alike), fp32 accumulation. Work stops at each slot's real
    rank; tokens of slot -1 and slots of rank 0 cost nothing. No host synchronisation on the kernel path.

    gather: True takes the token-gather pair (meta unused), False the tile kernels; None lets the rule
    choose from meta's num_adapters hint (tile kernels without one).
    """
    if _use_triton(x):
        return _triton_apply(y, x, (lora_a,), (lora_b,), ranks.unsqueeze(0), scales, token_slots, meta, gather)
    return lora_apply_ref(y, x, lora_a, lora_b, ranks, scales, token_slots)


def lora_apply_fused(
    y: torch.Tensor,  # [T, sum N_i]
    x: torch.Tensor,  # [T, K]
    lora_a: tuple[torch.Tensor, ...],  # n <= 3 x [S, R, K], one shape and strides
    lora_b: tuple[torch.Tensor, ...],  # n x [S, N_i, R], one stride(1) and stride(2)
    ranks: torch.Tensor,  # [n, S] integer; 0 where an adapter does not target slice i
    scales: torch.Tensor,  # [S] float32
    token_slots: torch.Tensor,  # [T] integer, -1 = no adapter
    *,
    meta: LoraMeta | None = None,
    gather: bool | None = None,
) -> torch.Tensor:
    """For each slice i: lora_apply on y's columns offset_i .. offset_i + N_i (offset_i = N_0 + ... +
    N_{i-1}) with lora_a[i], lora_b[i] and ranks[i]; in place, returns y.

    qkv under GQA is n=3 with N_q != N_k == N_v; gate_up is n=2. Slices may be views of one stacked
    tensor (e.g. B of qkv as [S, N_q + 2 N_k, R] cut by columns). `gather` as in lora_apply."""
    if _use_triton(x):
        return _triton_apply(y, x, tuple(lora_a), tuple(lora_b), ranks, scales, token_slots, meta, gather)
    return lora_apply_fused_ref(y, x, tuple(lora_a), tuple(lora_b), ranks, scales, token_slots)


def prefers_gather(num_tokens: int, num_adapters: int | None, device: torch.device) -> bool:
    """Whether the kernels' rule picks the token-gather pair (no LoraMeta needed) for a batch of num_tokens
    tokens over num_adapters distinct adapters (counted on the host; None: unknown) on device. The engine
    asks once per step, then passes `gather=` to every projection and builds a LoraMeta only when False."""
    if device.type != "cuda" and not _triton_interpreting():
        return False
    from .configs import gather_config, prefers_gather as rule

    return rule(gather_config(device, num_tokens), num_tokens, num_adapters)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias), through kernels/skinny_matmul.py (split-K for few rows) where
    configs.skinny_config lists a measured win for this many rows of this shape on this device."""
    if x.is_cuda and x.dim() == 2 and x.stride(1) == 1 and weight.is_contiguous():
        cfg = skinny_config(x.shape[0], weight.shape[0], weight.shape[1], x.device)
        if cfg is not None:
            from .skinny_matmul import skinny_matmul

            return skinny_matmul(x, weight, bias, cfg)
    return torch.nn.functional.linear(x, weight, bias)


def _triton_apply(
    y: torch.Tensor,  # [T, sum N_i]
    x: torch.Tensor,  # [T, K]
    lora_a: tuple[torch.Tensor, ...],  # n x [S, R, K]
    lora_b: tuple[torch.Tensor, ...],  # n x [S, N_i, R]
    ranks: torch.Tensor,  # [n, S] integer
    scales: torch.Tensor,  # [S] float32
    token_slots: torch.Tensor,  # [T] integer, -1 = no adapter
    meta: LoraMeta | None,
    gather: bool | None,
) -> torch.Tensor:
    """Check; the token-gather pair where asked or where the rule picks it from meta's adapters hint; else
    build the metadata if needed, then the whole-K kernel if configs.prefers_fused says so, else split-K in
    one cooperative launch or two as the table's config says."""
    from .configs import fused_config, gather_config, prefers_fused, sgmv_config
    from .configs import prefers_gather as gather_rule
    from .sgmv import cooperative, prepare, sgmv_gathered, two_launches
    from .sgmv_fused import sgmv_fused

    t = x.shape[0]
    gcfg = gather_config(x.device, t)
    if gather is None:
        gather = meta is not None and meta.num_tokens == t and gather_rule(gcfg, t, meta.num_adapters)
    if gather:
        return sgmv_gathered(y, x, lora_a, lora_b, ranks, scales, token_slots, gcfg)
    meta = prepare(y, x, lora_a, lora_b, ranks, scales, token_slots, meta)
    if t == 0:
        return y
    fused = fused_config(x.device)
    s, r, k = lora_a[0].shape
    widths = tuple(b.shape[1] for b in lora_b)
    if prefers_fused(fused, t, meta.max_tiles(s), meta.block_t, widths, k, r, x.element_size()):
        return sgmv_fused(y, x, lora_a, lora_b, ranks, scales, meta, fused)
    cfg = sgmv_config(t, x.device, r)
    if cfg.coop:
        return cooperative(y, x, lora_a, lora_b, ranks, scales, meta, cfg)
    return two_launches(y, x, lora_a, lora_b, ranks, scales, meta, cfg)


def _use_triton(x: torch.Tensor) -> bool:
    return x.is_cuda or _triton_interpreting()


@functools.cache
def _triton_interpreting() -> bool:
    """Whether Triton runs kernels on CPU through its interpreter (TRITON_INTERPRET=1 at start-up).

    Triton reads the variable itself when the kernels are defined; this asks Triton, not os.environ.
    Without Triton (it is Linux-only) the CPU path is the reference."""
    if importlib.util.find_spec("triton") is None:
        return False
    import triton

    return bool(triton.knobs.runtime.interpret)
