"""The Triton paths of lora_apply / lora_apply_fused: shape checks, then split-K in two launches (shrink,
expand) or in one cooperative launch, the one-launch whole-K kernel, or the token-gather pair."""

from __future__ import annotations

import torch

from .configs import FusedConfig, GatherConfig, SgmvConfig, fused_config, gather_config, sgmv_config
from .meta import LoraMeta
from .sgmv_coop import sgmv_coop
from .sgmv_expand import sgmv_expand
from .sgmv_fused import sgmv_fused
from .sgmv_gather import sgmv_gather
from .sgmv_shrink import sgmv_shrink

__all__ = [
    "MAX_SLICES",
    "check_inputs",
    "cooperative",
    "prepare",
    "sgmv",
    "sgmv_cooperative",
    "sgmv_gathered",
    "sgmv_one_launch",
    "two_launches",
]

MAX_SLICES = 3  # qkv; the kernels take up to three slices in one launch


def prepare(
    y: torch.Tensor,  # [T, sum N_i]
    x: torch.Tensor,  # [T, K]
    lora_a: tuple[torch.Tensor, ...],  # n x [S, R, K]
    lora_b: tuple[torch.Tensor, ...],  # n x [S, N_i, R]
    ranks: torch.Tensor,  # [n, S] integer
    scales: torch.Tensor,  # [S] float32
    token_slots: torch.Tensor,  # [T] integer, -1 = no adapter
    meta: LoraMeta | None = None,
    block_t: int | None = None,
) -> LoraMeta:
    """Check the inputs on the host; returns meta, or a LoraMeta built from token_slots when meta is None
    (a few small device ops, no host sync; block_t overrides the table's tile size)."""
    t = x.shape[0]
    check_inputs(y, x, lora_a, lora_b, ranks, scales, token_slots)
    if meta is None:
        return LoraMeta(max(t, 1), x.device).build(token_slots, block_t)
    if meta.num_tokens != t or meta.device != x.device:
        raise ValueError(f"meta was built for {meta.num_tokens} tokens on {meta.device}, x is [{t}, K] on {x.device}")
    return meta


def two_launches(
    y: torch.Tensor,  # [T, sum N_i]
    x: torch.Tensor,  # [T, K]
    lora_a: tuple[torch.Tensor, ...],  # n x [S, R, K]
    lora_b: tuple[torch.Tensor, ...],  # n x [S, N_i, R]
    ranks: torch.Tensor,  # [n, S] integer
    scales: torch.Tensor,  # [S] float32
    meta: LoraMeta,
    cfg: SgmvConfig | None = None,
) -> torch.Tensor:
    """The split-K shrink, then the expand (a programmatic dependent launch where the config says so), on
    inputs that prepare() checked; returns y."""
    t = x.shape[0]
    if t == 0:
        return y
    cfg = sgmv_config(t, x.device, lora_a[0].shape[1]) if cfg is None else cfg
    pdl = cfg.pdl and x.is_cuda
    ws = sgmv_shrink(x, lora_a, ranks, meta, cfg, pdl=pdl)
    return sgmv_expand(y, lora_b, ranks, scales, ws, meta, cfg, pdl=pdl)


def cooperative(
    y: torch.Tensor,  # [T, sum N_i]
    x: torch.Tensor,  # [T, K]
    lora_a: tuple[torch.Tensor, ...],  # n x [S, R, K]
    lora_b: tuple[torch.Tensor, ...],  # n x [S, N_i, R]
    ranks: torch.Tensor,  # [n, S] integer
    scales: torch.Tensor,  # [S] float32
    meta: LoraMeta,
    cfg: SgmvConfig | None = None,
) -> torch.Tensor:
    """The split-K shrink and the expand in one cooperative launch (kernels/sgmv_coop.py), on inputs that
    prepare() checked; returns y."""
    t = x.shape[0]
    if t == 0:
        return y
    cfg = sgmv_config(t, x.device, lora_a[0].shape[1]) if cfg is None else cfg
    return sgmv_coop(y, x, lora_a, lora_b, ranks, scales, meta, cfg)


def sgmv(
    y: torch.Tensor,  # [T, sum N_i]
    x: torch.Tensor,  # [T, K]
    lora_a: tuple[torch.Tensor, ...],  # n x [S, R, K]
    lora_b: tuple[torch.Tensor, ...],  # n x [S, N_i, R]
    ranks: torch.Tensor,  # [n, S] integer
    scales: torch.Tensor,  # [S] float32
    token_slots: torch.Tensor,  # [T] integer, -1 = no adapter
    meta: LoraMeta | None = None,
    cfg: SgmvConfig | None = None,
) -> torch.Tensor:
    """y[:, off_i:off_i + N_i] += LoRA of slice i for every slice, in two launches (shrink, expand) whatever
    cfg.coop says; returns y.

    Builds the metadata from token_slots when meta is None (a few small device ops; no host sync).
    cfg overrides the tuned table (the benchmarks sweep it)."""
    meta = prepare(y, x, lora_a, lora_b, ranks, scales, token_slots, meta, None if cfg is None else cfg.block_t)
    return two_launches(y, x, lora_a, lora_b, ranks, scales, meta, cfg)


def sgmv_cooperative(
    y: torch.Tensor,  # [T, sum N_i]
    x: torch.Tensor,  # [T, K]
    lora_a: tuple[torch.Tensor, ...],  # n x [S, R, K]
    lora_b: tuple[torch.Tensor, ...],  # n x [S, N_i, R]
    ranks: torch.Tensor,  # [n, S] integer
    scales: torch.Tensor,  # [S] float32
    token_slots: torch.Tensor,  # [T] integer, -1 = no adapter
    meta: LoraMeta | None = None,
    cfg: SgmvConfig | None = None,
) -> torch.Tensor:
    """The same operator as sgmv, split-K in one cooperative launch (kernels/sgmv_coop.py) whatever
    cfg.coop says; returns y. cfg overrides the tuned table."""
    meta = prepare(y, x, lora_a, lora_b, ranks, scales, token_slots, meta, None if cfg is None else cfg.block_t)
    return cooperative(y, x, lora_a, lora_b, ranks, scales, meta, cfg)


def sgmv_one_launch(
    y: torch.Tensor,  # [T, sum N_i]
    x: torch.Tensor,  # [T, K]
    lora_a: tuple[torch.Tensor, ...],  # n x [S, R, K]
    lora_b: tuple[torch.Tensor, ...],  # n x [S, N_i, R]
    ranks: torch.Tensor,  # [n, S] integer
    scales: torch.Tensor,  # [S] float32
    token_slots: torch.Tensor,  # [T] integer, -1 = no adapter
    meta: LoraMeta | None = None,
    cfg: FusedConfig | None = None,
) -> torch.Tensor:
    """The same operator as sgmv in one launch (kernels/sgmv_fused.py); returns y. cfg overrides the
    table's one-launch config."""
    meta = prepare(y, x, lora_a, lora_b, ranks, scales, token_slots, meta)
    if x.shape[0] == 0:
        return y
    return sgmv_fused(y, x, lora_a, lora_b, ranks, scales, meta, fused_config(x.device) if cfg is None else cfg)


def sgmv_gathered(
    y: torch.Tensor,  # [T, sum N_i]
    x: torch.Tensor,  # [T, K]
    lora_a: tuple[torch.Tensor, ...],  # n x [S, R, K]
    lora_b: tuple[torch.Tensor, ...],  # n x [S, N_i, R]
    ranks: torch.Tensor,  # [n, S] integer
    scales: torch.Tensor,  # [S] float32
    token_slots: torch.Tensor,  # [T] integer, -1 = no adapter
    cfg: GatherConfig | None = None,
) -> torch.Tensor:
    """The same operator as sgmv on the token-gather pair (kernels/sgmv_gather.py: no metadata) whatever
    the batch size; returns y. cfg overrides the table's gather config."""
    check_inputs(y, x, lora_a, lora_b, ranks, scales, token_slots)
    cfg = gather_config(x.device, x.shape[0]) if cfg is None else cfg
    return sgmv_gather(y, x, lora_a, lora_b, ranks, scales, token_slots, cfg)


def check_inputs(y, x, lora_a, lora_b, ranks, scales, token_slots) -> None:
    """Shape, dtype and device checks, on the host, without reading device memory."""
    n = len(lora_a)
    if not 1 <= n <= MAX_SLICES or len(lora_b) != n:
        raise ValueError(f"need 1 to {MAX_SLICES} slices with as many A as B, got {n} A and {len(lora_b)} B")
    if x.dim() != 2 or y.dim() != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(f"x must be [T, K] and y [T, N], got {tuple(x.shape)} and {tuple(y.shape)}")
    a0, b0 = lora_a[0], lora_b[0]
    if a0.dim() != 3 or a0.shape[2] != x.shape[1]:
        raise ValueError(f"lora_a must be [S, R, K={x.shape[1]}], got {tuple(a0.shape)}")
    s, r, _ = a0.shape
    for a in lora_a:
        if a.shape != a0.shape or a.stride() != a0.stride() or a.dtype != x.dtype:
            raise ValueError("every slice's lora_a must share one shape, strides and x's dtype")
    width = 0
    for b in lora_b:
        if b.dim() != 3 or b.shape[0] != s or b.shape[2] != r or b.dtype != x.dtype:
            raise ValueError(f"lora_b must be [S={s}, N, R={r}] in x's dtype, got {tuple(b.shape)} {b.dtype}")
        if b.stride()[1:] != b0.stride()[1:]:
            raise ValueError("every slice's lora_b must share stride(1) and stride(2)")
        width += b.shape[1]
    if width != y.shape[1]:
        raise ValueError(f"the slices' widths add up to {width}, y has {y.shape[1]} columns")
    if tuple(ranks.shape) != (n, s) or ranks.is_floating_point():
        raise ValueError(f"ranks must be [{n}, {s}] integer, got {tuple(ranks.shape)} {ranks.dtype}")
    if tuple(scales.shape) != (s,) or scales.dtype != torch.float32:
        raise ValueError(f"scales must be [{s}] float32, got {tuple(scales.shape)} {scales.dtype}")
    if tuple(token_slots.shape) != (x.shape[0],) or token_slots.is_floating_point():
        raise ValueError(f"token_slots must be [{x.shape[0]}] integer, got {tuple(token_slots.shape)}")
    tensors = (y, x, ranks, scales, token_slots, *lora_a, *lora_b)
    if any(t.device != x.device for t in tensors):
        raise ValueError("every tensor must be on x's device")
