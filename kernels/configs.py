"""Block sizes of the SGMV kernels, per GPU family and token-count bucket, and when one launch beats two."""

from __future__ import annotations

import dataclasses
import functools

import torch

__all__ = [
    "FusedConfig",
    "GatherConfig",
    "SgmvConfig",
    "SkinnyConfig",
    "block_t_for",
    "fused_config",
    "fused_group_width",
    "gather_config",
    "hopper_gather_config",
    "hopper_sgmv_config",
    "launches_pdl",
    "prefers_fused",
    "prefers_gather",
    "sgmv_config",
    "shrink_stages",
    "skinny_config",
]


@dataclasses.dataclass(frozen=True)
class SgmvConfig:
    """Launch parameters of one shrink + expand pair.

    block_t: tokens per tile (the metadata's tiles; a tile holds tokens of one slot only). A prebuilt
        LoraMeta brings its own block_t; this one is used when the call builds the metadata.
    k_chunk, max_splits: the shrink splits K into chunks of at least k_chunk elements and at most
        max_splits (<= 64) chunks (split-K: one partial sum per chunk, summed by the expand), so small
        batches spread the K loop over many programs.
    few_tiles, few_tiles_max_splits: when the host bound on the batch's tiles is at most few_tiles, at
        most few_tiles_max_splits chunks instead: a batch of one or two adapters has too few tiles to
        fill the GPU, so it cuts a long K into more, shorter chunks.
    block_k, block_n: the shrink's K step and the expand's column block (capped so that a B tile
        holds at most 8192 elements: narrower for the larger padded ranks).
    n_blocks: column blocks one expand work item walks (reuses its partial sums, pipelines y).
    programs_per_sm: persistent programs per multiprocessor (work items are strided over them).
    pdl: launch the expand as a programmatic dependent launch (Hopper+), so its launch and its loads
        of B and y overlap the shrink.
    coop: run the same split-K shrink and expand as one cooperative launch instead (kernels/sgmv_coop.py:
        at most one persistent program per multiprocessor, a grid barrier between the phases; the expand
        takes one block_n column block per work item and the larger of the two warp counts).
    """

    block_t: int
    k_chunk: int
    max_splits: int
    few_tiles: int
    few_tiles_max_splits: int
    block_k: int
    shrink_warps: int
    shrink_stages: int
    block_n: int
    n_blocks: int
    expand_warps: int
    programs_per_sm: int
    pdl: bool
    coop: bool


# (largest T of the bucket, config), smallest bucket first; the last bucket takes every larger T.
_Table = tuple[tuple[int, SgmvConfig], ...]

# Hopper (sm_90: H100, H200), tuned on an H100 80GB HBM3 by benchmarks/kernels/bench_sgmv.py
# (its config sweep; see benchmarks/RESULTS.md). Decode buckets: one to a few k-blocks per shrink item
# (latency), prefill: more tiles of fewer tokens and narrower column blocks (more work in flight).
# Few tiles, long K (bench_sgmv --small-floor, 2026-11-23, `down`, K = 14336): with at most 4 tiles (T <= 64,
# one adapter) 28 chunks of 512 took 0.74-1.02x the time of 14 of 1024 over T = 1/16/64 and r = 8/16/64; at
# T = 256 with n <= 8 (<= 23 tiles) 0.91-0.97x; at T <= 64 with n >= 8 0.82-1.11x (no rule). K = 4096 keeps
# its chunks (16 of 256, 8 of 512) either way.
# Many adapters per batch (benchmarks/kernels/sweep_sgmv.py, H100, 2026-11-23: one field at a time around the
# previous table, then the helpful ones combined; scored by the geometric mean over distinct-adapter and
# one/eight-adapter cases of the bucket): T <= 64 takes K chunks of 512, two shrink warps and four stages
# (0.89x the previous table's time: T = 64 with 64 adapters qo 21.6 -> 18.0 us, up 38.6 -> 32.9, down
# 37.9 -> 32.7; one adapter 9.6 -> 9.1); T <= 256 expands 512-column blocks, one per work item (0.95x:
# T = 256 with 8 adapters qo 16.2 -> 13.5, down 19.5 -> 17.1; with 256, up 84.2 -> 82.9). No other field
# moved T <= 1024 by more than 2%.
# coop (one cooperative launch, kernels/sgmv_coop.py) is off: in the same run (an earlier barrier) it was slower
# than two launches with PDL in 97 of the 108 small-floor decode cases (geometric mean 1.30x, up to 2.2x where
# programs walk many work items; faster only at T = 1, n = 1, r = 16 and for `kv` at T = 256, where its
# narrower expand items win). The final barrier (arrival before the expand's prefetch, relaxed start read),
# on `kv`/`qo` only: 0.87-0.99x at T = 1 (6 cases), 1.07-1.49x at T = 16 and 64 (26 cases).
_SM90: _Table = (
    (64, SgmvConfig(block_t=16, k_chunk=512, max_splits=16, few_tiles=4, few_tiles_max_splits=28, block_k=256,
                    shrink_warps=2, shrink_stages=4, block_n=256, n_blocks=1, expand_warps=8, programs_per_sm=8,
                    pdl=True, coop=False)),
    (256, SgmvConfig(block_t=16, k_chunk=512, max_splits=16, few_tiles=23, few_tiles_max_splits=28, block_k=128,
                     shrink_warps=4, shrink_stages=2, block_n=512, n_blocks=1, expand_warps=4, programs_per_sm=8,
                     pdl=True, coop=False)),
    (1024, SgmvConfig(block_t=16, k_chunk=1024, max_splits=16, few_tiles=0, few_tiles_max_splits=16, block_k=128,
                      shrink_warps=4, shrink_stages=3, block_n=128, n_blocks=4, expand_warps=4, programs_per_sm=8,
                      pdl=True, coop=False)),
    (1 << 62, SgmvConfig(block_t=32, k_chunk=1024, max_splits=4, few_tiles=0, few_tiles_max_splits=4, block_k=128,
                         shrink_warps=4, shrink_stages=3, block_n=128, n_blocks=2, expand_warps=8, programs_per_sm=4,
                         pdl=True, coop=False)),
)

# Padded ranks of 64 and more keep the table before that sweep: side by side in two small-floor runs
# (bench_sgmv.py --small-floor, 108 decode cases each with T <= 64 or T = 256 with n <= 8), the tuned table
# took 0.94x the time at rank 8, 0.89x at rank 16 but 1.16x at rank 64 (two shrink warps on [16 + 64, 256]
# tiles; 128-column expand items without the n_blocks walk at T = 256). The same block_t in every bucket, so
# one step's LoraMeta serves pools of either kind.
_SM90_WIDE_RANK: _Table = (
    (64, dataclasses.replace(_SM90[0][1], k_chunk=256, shrink_warps=8, shrink_stages=2)),
    (256, dataclasses.replace(_SM90[1][1], block_n=128, n_blocks=4)),
    *_SM90[2:],
)
WIDE_RANK = 64  # padded ranks from here on take _SM90_WIDE_RANK



def _without_pdl(table: _Table) -> _Table:
    return tuple((t, dataclasses.replace(c, pdl=False)) for t, c in table)


# Other CUDA GPUs: the Hopper shapes without PDL (untuned).
_DEFAULT, _DEFAULT_WIDE_RANK = _without_pdl(_SM90), _without_pdl(_SM90_WIDE_RANK)

# The Triton interpreter (CPU): small tiles, few programs, several work items each; split-K as one
# cooperative launch (one program there), so that CI runs the dispatch three ways (whole-K one launch for
# small batches, cooperative otherwise; the tests also force each path), and the few-tiles split rule.
_INTERPRETER: _Table = (
    (1 << 62, SgmvConfig(block_t=16, k_chunk=64, max_splits=16, few_tiles=2, few_tiles_max_splits=64, block_k=32,
                         shrink_warps=4, shrink_stages=1, block_n=32, n_blocks=2, expand_warps=4, programs_per_sm=3,
                         pdl=False, coop=True)),
)


@dataclasses.dataclass(frozen=True)
class FusedConfig:
    """Launch parameters of the one-launch path (kernels/sgmv_fused.py) and the rule that picks it.

    block_n, n_blocks: a program expands n_blocks column blocks of block_n columns (capped, as in the
        expand, so that a B tile holds at most 8192 elements); every program recomputes its tile's
        shrink over the whole K, so fewer, wider column groups mean less recomputation but fewer programs.
    block_k, warps, stages: the shrink's K step, warps per program, software-pipelining depth.
    max_tokens: the one-launch path is never taken for larger T.
    max_recompute_mb: nor when the shrink's reads summed over every program, at the host bound on the
        tiles, exceed this (MB through L2): tiles * column groups * (tile rows + R) * K * element size.
    max_program_kb: nor when one program's shrink reads more than this ((tile rows + R) * K * element
        size): that serial read sets the kernel's latency.
    """

    block_n: int
    n_blocks: int
    block_k: int
    warps: int
    stages: int
    max_tokens: int
    max_recompute_mb: float
    max_program_kb: float


# Hopper, from the comparison of both paths in benchmarks/kernels/bench_sgmv.py on an H100 (benchmarks/
# RESULTS.md, 2026-11-23): the block sizes are the sweep's best (512-column groups), but one launch lost
# to two in 127 of the 132 decode cases with T <= 256 (by 1.3-2.5x at T <= 64: a program's serial walk
# over the whole K costs about 0.45 us per 256-wide step, which the split-K shrink spreads over programs)
# and won the other 5 by under 5%, so the rule never picks it (max_tokens=0): forced calls only.
_SM90_FUSED = FusedConfig(block_n=128, n_blocks=4, block_k=256, warps=4, stages=3,
                          max_tokens=0, max_recompute_mb=64.0, max_program_kb=1024.0)
# The interpreter: small blocks; the rule picks one launch for small batches so that CI runs the dispatch
# both ways (the tests also force each path).
_INTERPRETER_FUSED = FusedConfig(block_n=32, n_blocks=2, block_k=32, warps=4, stages=1,
                                 max_tokens=64, max_recompute_mb=64.0, max_program_kb=1024.0)


def fused_config(device: torch.device) -> FusedConfig:
    """The one-launch path's config on device (CPU means the interpreter; other GPUs take Hopper's)."""
    return _INTERPRETER_FUSED if device.type != "cuda" else _SM90_FUSED


def fused_group_width(cfg: FusedConfig, max_rank: int, widths: tuple[int, ...]) -> int:
    """Columns one program of the one-launch path expands: n_blocks blocks of its block_n, capped so that
    a B tile of the padded rank holds at most 8192 elements and no block is wider than the widest slice."""
    block_r = max(16, _next_pow2(max_rank))
    return min(cfg.block_n, 8192 // block_r, max(16, _next_pow2(max(widths)))) * cfg.n_blocks


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def prefers_fused(
    cfg: FusedConfig,
    num_tokens: int,
    max_tiles: int,  # host bound on the metadata's tiles (LoraMeta.max_tiles)
    block_t: int,
    widths: tuple[int, ...],  # N_i of each slice
    k: int,
    max_rank: int,  # R, the pool's padded rank
    element_size: int,
) -> bool:
    """Whether one launch (sgmv_fused) is expected to beat two (shrink + expand) for this call.

    Host quantities only: the number of adapters in the batch lives on the device; the tiles' bound
    brings the caller's hint of it when LoraMeta.build had one."""
    if num_tokens > cfg.max_tokens or max_tiles == 0:
        return False
    group = fused_group_width(cfg, max_rank, widths)
    groups = sum(-(-n // group) for n in widths)
    rows = min(block_t, num_tokens)
    program_bytes = (rows + max_rank) * k * element_size
    return (program_bytes <= cfg.max_program_kb * 1024
            and max_tiles * groups * program_bytes <= cfg.max_recompute_mb * (1 << 20))


@dataclasses.dataclass(frozen=True)
class GatherConfig:
    """Launch parameters of the token-gather path (kernels/sgmv_gather.py) and the rule that picks it.

    max_tokens, min_adapter_share: the largest batch of this config's bucket, and the rule: the path is
    picked for a batch whose distinct adapters, as the caller counted them on the host, are at least
    min_adapter_share of its tokens (each token reads its own adapter's rows: tokens sharing one read them
    again, from L2 while the batch's adapters fit in it, from memory past that).
    shrink_tokens, expand_tokens: tokens per program (powers of two).
    k_chunk, block_k: the shrink's K per program (split-K) and the step it is walked in.
    block_n: the expand's columns per program.
    pdl: launch the expand as a programmatic dependent launch of the shrink (Hopper+).
    """

    max_tokens: int
    min_adapter_share: float
    shrink_tokens: int
    k_chunk: int
    block_k: int
    shrink_warps: int
    expand_tokens: int
    block_n: int
    expand_warps: int
    pdl: bool


# Buckets of batch size, smallest first (a batch past the last bucket takes the tile kernels).
_GatherTable = tuple[GatherConfig, ...]

# Hopper, from benchmarks/kernels/sweep_gather.py on an H100 (benchmarks/RESULTS.md). Up to 256 tokens (sixth
# session): the pair took 0.97x the tile kernels' time with distinct adapters at T = 16, 0.80x at T = 64, 0.79x
# at 128 and 0.76x at 256 (Llama-3-8B projections and the qkv / gate_up forms, ranks 8 and 16); with one or
# eight adapters it lost (1.1-1.6x: every token re-reads its adapter), and at T = 16 with eight of sixteen it
# was even (1.01x). 257 to 1024 tokens (eighth session, --set large): distinct adapters 0.59 / 0.86x the tile
# kernels' time (rank 8 / 16); with 3/4 of the tokens' adapters distinct 0.68 / 0.95x (worst case 1.05x, up and
# gate_up at rank 16), with 5/8 0.76 / 1.05x, with half 0.86 / 1.18x (the adapters no longer fit in L2: a shared
# one is read again from memory), hence the 0.75 share. The launch parameters of both buckets (eighth session,
# --set large, then --set table): K steps of 512 with eight shrink warps and 1024-column expand blocks took
# 0.94-0.97x the sixth session's (256-wide K steps, four warps, 512 columns) at 256-1024 tokens and 0.88-0.97x
# at 1-256 (0.88x with 64 distinct adapters).
_SM90_GATHER_LAUNCH = GatherConfig(max_tokens=256, min_adapter_share=0.5, shrink_tokens=1, k_chunk=1024, block_k=512,
                                   shrink_warps=8, expand_tokens=1, block_n=1024, expand_warps=4, pdl=True)
_SM90_GATHER: _GatherTable = (
    _SM90_GATHER_LAUNCH,
    dataclasses.replace(_SM90_GATHER_LAUNCH, max_tokens=1024, min_adapter_share=0.75),
)
_DEFAULT_GATHER: _GatherTable = tuple(dataclasses.replace(c, pdl=False) for c in _SM90_GATHER)
# The interpreter: small blocks, and buckets that let the rule pick the path for the smallest batches, so that
# CI runs the dispatch that way too (the tests also force it).
_INTERPRETER_GATHER: _GatherTable = (
    GatherConfig(max_tokens=8, min_adapter_share=0.5, shrink_tokens=2, k_chunk=64, block_k=32, shrink_warps=4,
                 expand_tokens=4, block_n=32, expand_warps=4, pdl=False),
    GatherConfig(max_tokens=16, min_adapter_share=0.75, shrink_tokens=1, k_chunk=128, block_k=64, shrink_warps=4,
                 expand_tokens=2, block_n=64, expand_warps=4, pdl=False),
)


def hopper_gather_config(num_tokens: int) -> GatherConfig:
    """The Hopper gather config for num_tokens, without asking a GPU (benchmark reports)."""
    return _gather_bucket(_SM90_GATHER, num_tokens)


def prefers_gather(cfg: GatherConfig, num_tokens: int, num_adapters: int | None) -> bool:
    """Whether the token-gather pair is expected to beat the tile kernels for num_tokens tokens of
    num_adapters distinct adapters (None: not known, which keeps the tile kernels); cfg is num_tokens'
    bucket (gather_config)."""
    if num_adapters is None or num_tokens == 0 or num_tokens > cfg.max_tokens:
        return False
    return num_adapters >= cfg.min_adapter_share * num_tokens


def gather_config(device: torch.device, num_tokens: int) -> GatherConfig:
    """The token-gather path's config on device (CPU means the interpreter) for a batch of num_tokens: its
    bucket's, or the last bucket's past it (whose rule then says no)."""
    return _gather_bucket(_gather_table(device), num_tokens)


@functools.lru_cache(maxsize=16)
def _gather_table(device: torch.device) -> _GatherTable:
    if device.type != "cuda":
        return _INTERPRETER_GATHER
    return _SM90_GATHER if torch.cuda.get_device_capability(device)[0] == 9 else _DEFAULT_GATHER


def _gather_bucket(table: _GatherTable, num_tokens: int) -> GatherConfig:
    return next((cfg for cfg in table if num_tokens <= cfg.max_tokens), table[-1])


@functools.lru_cache(maxsize=16)
def _table(device: torch.device, wide_rank: bool) -> _Table:
    if device.type != "cuda":
        return _INTERPRETER
    major, _ = torch.cuda.get_device_capability(device)
    if major == 9:
        return _hopper_table(wide_rank)
    return _DEFAULT_WIDE_RANK if wide_rank else _DEFAULT


def _hopper_table(wide_rank: bool) -> _Table:
    return _SM90_WIDE_RANK if wide_rank else _SM90


def sgmv_config(num_tokens: int, device: torch.device, max_rank: int = 16) -> SgmvConfig:
    """The table's config for a batch of num_tokens tokens on device (CPU means the interpreter), for a slot
    pool padded to max_rank. Its block_t depends on num_tokens alone."""
    return _bucket(_table(device, max_rank >= WIDE_RANK), num_tokens)


def hopper_sgmv_config(num_tokens: int, max_rank: int = 16) -> SgmvConfig:
    """The Hopper table's config for num_tokens and max_rank, without asking a GPU (benchmark reports)."""
    return _bucket(_hopper_table(max_rank >= WIDE_RANK), num_tokens)


def _bucket(table: _Table, num_tokens: int) -> SgmvConfig:
    for t_max, cfg in table:
        if num_tokens <= t_max:
            return cfg
    raise AssertionError("the last bucket takes every T")


# Shared memory a shrink program's software pipeline may take: Triton keeps stages - 1 tiles of x and A
# ([block_t + block_r, block_k] elements) in flight, and Hopper gives a program at most 227 KiB.
_SHRINK_PIPELINE_BYTES = 160 << 10


def shrink_stages(cfg: SgmvConfig, block_t: int, block_r: int, block_k: int, element_size: int) -> int:
    """The table's shrink pipeline depth, less where its tiles would not fit in shared memory (fp32 inputs
    with a large padded rank: 4 stages of [16 + 64, 256] fp32 tiles need 240 KiB)."""
    tile = (block_t + block_r) * block_k * element_size
    return max(1, min(cfg.shrink_stages, 1 + _SHRINK_PIPELINE_BYTES // tile))


def block_t_for(num_tokens: int, device: torch.device) -> int:
    """Tokens per tile for a batch of num_tokens on device: the metadata builder's default."""
    return sgmv_config(num_tokens, device).block_t


@functools.lru_cache(maxsize=16)
def launches_pdl(device: torch.device) -> bool:
    """Whether the decoder's own kernels (the fused elementwise operators, paged attention, the split-K
    matmul) launch as programmatic dependent launches on device: Hopper and later. Such a kernel may start
    while the kernel before it in the stream finishes; it waits for it (griddepcontrol.wait) before its first
    load, so only its launch and set-up overlap. Never on the interpreter."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


@functools.lru_cache(maxsize=16)
def num_sms(device: torch.device) -> int:
    """Multiprocessors of a CUDA device; 1 for the interpreter."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


# skinny_matmul's launches measured faster than cuBLAS on Hopper (benchmarks/kernels/sweep_skinny.py), per
# weight shape (N, K) and row bucket (rows <= bucket); shapes and buckets not listed take F.linear.
# H100, sweep_skinny_h100_2026-11-23.json: the wins of 3% or more (Llama-3-8B's o and q/k/v at <= 16 rows, its
# down projection at <= 64); the 1B projections and the larger ones stay with cuBLAS. (block_n, block_k, split_k,
# stages, warps)
_HOPPER_SKINNY: dict[tuple[int, int], dict[int, tuple[int, int, int, int, int]]] = {
    (6144, 4096): {16: (32, 128, 1, 5, 4)},
    (4096, 4096): {16: (32, 128, 1, 5, 4)},
    (4096, 14336): {16: (32, 256, 1, 5, 4), 64: (32, 256, 1, 5, 4)},
}


@dataclasses.dataclass(frozen=True)
class SkinnyConfig:
    """Launch parameters of kernels/skinny_matmul.py: y = x @ W.T + b for few rows, split-K."""

    block_n: int  # output columns per program
    block_k: int  # K step of the pipelined loop
    split_k: int  # programs per column tile, each over about K / split_k (a multiple of block_k)
    stages: int  # software pipeline depth of the K loop (capped to fit shared memory)
    warps: int = 4


def skinny_config(rows: int, n: int, k: int, device: torch.device) -> SkinnyConfig | None:
    """The skinny_matmul config for rows x K @ K x N on device, or None (cuBLAS is as fast or faster)."""
    for bucket, launch in _skinny_table(device).get((n, k), ()):
        if rows <= bucket:
            return SkinnyConfig(*launch)
    return None


@functools.lru_cache(maxsize=16)
def _skinny_table(device: torch.device) -> dict[tuple[int, int], tuple]:
    """(N, K) -> ((rows bucket, launch), ...) in ascending buckets, for this device."""
    if device.type != "cuda":
        return {}
    if torch.cuda.get_device_capability(device)[0] != 9:
        return {}
    return {shape: tuple(sorted(buckets.items())) for shape, buckets in _HOPPER_SKINNY.items()}
