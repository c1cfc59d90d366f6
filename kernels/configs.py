"""Block sizes of the SGMV kernels, per GPU family and token-count bucket, in one small table."""

from __future__ import annotations

import dataclasses
import functools

import torch

__all__ = ["SgmvConfig", "block_t_for", "sgmv_config"]


@dataclasses.dataclass(frozen=True)
class SgmvConfig:
    """Launch parameters of one shrink + expand pair.

    block_t: tokens per tile (the metadata's tiles; a tile holds tokens of one slot only). A prebuilt
        LoraMeta brings its own block_t; this one is used when the call builds the metadata.
    k_chunk, max_splits: the shrink splits K into chunks of at least k_chunk elements and at most
        max_splits (<= 16) chunks (split-K: one partial sum per chunk, summed by the expand), so small
        batches spread the K loop over many programs.
    block_k, block_n: the shrink's K step and the expand's column block (capped so that a B tile
        holds at most 8192 elements: narrower for the larger padded ranks).
    n_blocks: column blocks one expand work item walks (reuses its partial sums, pipelines y).
    programs_per_sm: persistent programs per multiprocessor (work items are strided over them).
    pdl: launch the expand as a programmatic dependent launch (Hopper+), so its launch and its loads
        of B and y overlap the shrink.
    """

    block_t: int
    k_chunk: int
    max_splits: int
    block_k: int
    shrink_warps: int
    shrink_stages: int
    block_n: int
    n_blocks: int
    expand_warps: int
    programs_per_sm: int
    pdl: bool


# (largest T of the bucket, config), smallest bucket first; the last bucket takes every larger T.
_Table = tuple[tuple[int, SgmvConfig], ...]

# Hopper (sm_90: H100, H200), tuned on an H100 80GB HBM3 by benchmarks/kernels/bench_sgmv.py
# (its config sweep; see benchmarks/RESULTS.md). Decode buckets: one to a few k-blocks per shrink item
# (latency), prefill: more tiles of fewer tokens and narrower column blocks (more work in flight).
_SM90: _Table = (
    (64, SgmvConfig(block_t=16, k_chunk=256, max_splits=16, block_k=256, shrink_warps=8,
                    shrink_stages=2, block_n=256, n_blocks=1, expand_warps=8, programs_per_sm=8, pdl=True)),
    (256, SgmvConfig(block_t=16, k_chunk=512, max_splits=16, block_k=128, shrink_warps=4,
                     shrink_stages=2, block_n=128, n_blocks=4, expand_warps=4, programs_per_sm=8, pdl=True)),
    (1024, SgmvConfig(block_t=16, k_chunk=1024, max_splits=16, block_k=128, shrink_warps=4,
                      shrink_stages=3, block_n=128, n_blocks=4, expand_warps=4, programs_per_sm=8, pdl=True)),
    (1 << 62, SgmvConfig(block_t=32, k_chunk=1024, max_splits=4, block_k=128, shrink_warps=4,
                         shrink_stages=3, block_n=128, n_blocks=2, expand_warps=8, programs_per_sm=4, pdl=True)),
)

# Other CUDA GPUs: the Hopper shapes without PDL (untuned).
_DEFAULT: _Table = tuple((t, dataclasses.replace(c, pdl=False)) for t, c in _SM90)

# The Triton interpreter (CPU): small tiles, few programs, several work items each.
_INTERPRETER: _Table = (
    (1 << 62, SgmvConfig(block_t=16, k_chunk=64, max_splits=16, block_k=32, shrink_warps=4,
                         shrink_stages=1, block_n=32, n_blocks=2, expand_warps=4, programs_per_sm=3, pdl=False)),
)


@functools.lru_cache(maxsize=16)
def _table(device: torch.device) -> _Table:
    if device.type != "cuda":
        return _INTERPRETER
    major, _ = torch.cuda.get_device_capability(device)
    return _SM90 if major == 9 else _DEFAULT


def sgmv_config(num_tokens: int, device: torch.device) -> SgmvConfig:
    """The table's config for a batch of num_tokens tokens on device (CPU means the interpreter)."""
    for t_max, cfg in _table(device):
        if num_tokens <= t_max:
            return cfg
    raise AssertionError("the last bucket takes every T")


def block_t_for(num_tokens: int, device: torch.device) -> int:
    """Tokens per tile for a batch of num_tokens on device: the metadata builder's default."""
    return sgmv_config(num_tokens, device).block_t


@functools.lru_cache(maxsize=16)
def num_sms(device: torch.device) -> int:
    """Multiprocessors of a CUDA device; 1 for the interpreter."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count
