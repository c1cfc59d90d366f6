"""y = x @ W.T + b for few rows (a decode step's tokens): split-K over the weight, one launch.

cuBLAS runs a decode step's small projections below the copy bandwidth (H100, 64 rows: Llama-3.2-1B's
q/k/v and o near 50%, down near 65%, profiled by benchmarks/serving/bench_decode_step.py --profile): too
few output tiles to keep every multiprocessor streaming the weight. Here each program streams a
[BLOCK_N, K_CHUNK] slab of W against the (L2-resident) rows of x; programs of one column tile that
split K write fp32 partials, and the last of them to finish (an atomic count per tile, which it resets)
sums the partials in split order — deterministic — adds the bias and writes y. One launch, no memset.

configs.skinny_config picks the launch per (rows, N, K, device) from a measured table; kernels.linear is
the drop-in for F.linear that uses it (shapes the table does not list, and CPU tensors, take F.linear).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import pdl
from .configs import SkinnyConfig

__all__ = ["MAX_TILES", "skinny_matmul"]

MAX_TILES = 1 << 14  # output tiles (row block x column block) one launch may split: the counters' size
SHARED_BYTES = 200 << 10  # the pipeline's stages are capped to fit (Hopper has 227 KiB a block)


@triton.jit(do_not_specialize=["M", "SPLIT_K"])
def _skinny_matmul_kernel(
    x_ptr,  # [M, K], unit stride along K
    w_ptr,  # [N, K], unit stride along K
    bias_ptr,  # [N] (x_ptr when HAS_BIAS is False)
    y_ptr,  # [M, N], unit stride along N
    ws_ptr,  # [tiles, SPLIT_K, BLOCK_M, BLOCK_N] fp32 partials (unused when SPLIT_K == 1)
    counters_ptr,  # [MAX_TILES] int32, zero between launches
    M,
    N,
    K,
    K_CHUNK,  # a multiple of BLOCK_K; SPLIT_K * K_CHUNK >= K
    stride_xm,
    stride_wn,
    stride_ym,
    SPLIT_K,  # programs per column tile
    SPLIT: tl.constexpr,  # SPLIT_K > 1
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,  # SPLIT_K * K_CHUNK == K: no K masks
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    STAGES: tl.constexpr,
    IEEE_DOT: tl.constexpr,
    PDL: tl.constexpr,  # launched with PDL (kernels/pdl.py)
):
    pdl.enter(PDL)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < N
    k0 = tl.multiple_of(pid_k * K_CHUNK, BLOCK_K)  # the loads are aligned: vector loads
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + (k0 + offs_k)[None, :]
    w_ptrs = w_ptr + offs_n[:, None] * stride_wn + (k0 + offs_k)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kk in tl.range(0, K_CHUNK, BLOCK_K, num_stages=STAGES):
        if EVEN_K:
            xv = tl.load(x_ptrs, mask=m_mask[:, None], other=0.0)
            wv = tl.load(w_ptrs, mask=n_mask[:, None], other=0.0)
        else:
            k_mask = (k0 + kk + offs_k) < K
            xv = tl.load(x_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
            wv = tl.load(w_ptrs, mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        if IEEE_DOT:
            acc = tl.dot(xv, tl.trans(wv), acc, input_precision="ieee")
        else:
            acc = tl.dot(xv, tl.trans(wv), acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    y_mask = m_mask[:, None] & n_mask[None, :]
    if not SPLIT:
        _finish(acc, bias_ptr, y_ptrs, y_mask, offs_n, n_mask, HAS_BIAS)
    else:
        tile = pid_m * tl.num_programs(0) + pid_n
        offs_tile = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        tile_ws = ws_ptr + tile.to(tl.int64) * SPLIT_K * (BLOCK_M * BLOCK_N)
        tl.store(tile_ws + pid_k * (BLOCK_M * BLOCK_N) + offs_tile, acc)
        # Every warp's partials before the count's release; the last program's acquire makes all visible.
        tl.debug_barrier()
        arrived = tl.atomic_add(counters_ptr + tile, 1, sem="acq_rel", scope="gpu")
        tl.debug_barrier()
        if arrived == SPLIT_K - 1:
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for j in range(SPLIT_K):  # split order, whoever arrived last: the same sums every launch
                total += tl.load(tile_ws + j * (BLOCK_M * BLOCK_N) + offs_tile, cache_modifier=".cg")
            _finish(total, bias_ptr, y_ptrs, y_mask, offs_n, n_mask, HAS_BIAS)
            # Zero again for the next launch, which touches the counts only after this one has finished (a
            # plain launch starts after it; a PDL launch waits for it first).
            tl.atomic_xchg(counters_ptr + tile, 0)


@triton.jit
def _finish(acc, bias_ptr, y_ptrs, y_mask, offs_n, n_mask, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptrs, acc.to(y_ptrs.dtype.element_ty), mask=y_mask)


_COUNTERS: dict[tuple[torch.device, int], torch.Tensor] = {}


def _counters(device: torch.device) -> torch.Tensor:
    """The per-tile arrival counts of launches on the current stream (zero between launches: the last
    program of each tile resets its count). Launches on one stream run in order, so they can share it;
    graphs captured on a stream keep that stream's buffer, and must not be replayed concurrently."""
    key = (device, torch.cuda.current_stream(device).stream_id if device.type == "cuda" else 0)
    counters = _COUNTERS.get(key)
    if counters is None:
        counters = _COUNTERS[key] = torch.zeros(MAX_TILES, dtype=torch.int32, device=device)
    return counters


def _block_m(m: int) -> int:
    return max(16, min(64, triton.next_power_of_2(m)))


def skinny_matmul(
    x: torch.Tensor,  # [M, K], unit stride along K
    weight: torch.Tensor,  # [N, K], unit stride along K
    bias: torch.Tensor | None,  # [N]
    cfg: SkinnyConfig,
    out: torch.Tensor | None = None,  # [M, N], unit stride along N
) -> torch.Tensor:
    """x @ weight.T + bias with the Triton kernel and this config; returns out (a new tensor when None)."""
    m, k = x.shape
    n = weight.shape[0]
    if weight.shape[1] != k or x.stride(1) != 1 or weight.stride(1) != 1 or weight.dtype != x.dtype:
        raise ValueError(f"x [M, K] and weight [N, K] of one dtype, unit stride along K: {tuple(x.shape)}, "
                         f"{tuple(weight.shape)} {x.dtype} {weight.dtype}")
    if bias is not None and (tuple(bias.shape) != (n,) or not bias.is_contiguous()):
        raise ValueError(f"bias must be a contiguous [{n}], got {tuple(bias.shape)}")
    if cfg.block_k % 16 or cfg.block_n % 16 or cfg.split_k < 1:
        raise ValueError(f"bad config {cfg}")
    y = x.new_empty((m, n)) if out is None else out
    if tuple(y.shape) != (m, n) or y.stride(1) != 1:
        raise ValueError(f"out must be [{m}, {n}] with unit stride along N, got {tuple(y.shape)} {y.stride()}")
    if m == 0:
        return y
    block_m = _block_m(m)
    tile_bytes = (block_m + cfg.block_n) * cfg.block_k * x.element_size()  # one stage of x and W in shared memory
    stages = max(1, min(cfg.stages, SHARED_BYTES // tile_bytes))
    k_chunk = triton.cdiv(triton.cdiv(k, cfg.split_k), cfg.block_k) * cfg.block_k
    split_k = triton.cdiv(k, k_chunk)
    grid = (triton.cdiv(n, cfg.block_n), split_k, triton.cdiv(m, block_m))
    if split_k > 1 and grid[0] * grid[2] > MAX_TILES:
        raise ValueError(f"{grid[0] * grid[2]} output tiles to split, at most {MAX_TILES}")
    ws = x.new_empty((grid[0] * grid[2], split_k, block_m, cfg.block_n), dtype=torch.float32) if split_k > 1 else y
    _skinny_matmul_kernel[grid](
        x,
        weight,
        x if bias is None else bias,
        y,
        ws,
        _counters(x.device),
        m,
        n,
        k,
        k_chunk,
        x.stride(0),
        weight.stride(0),
        y.stride(0),
        SPLIT_K=split_k,
        SPLIT=split_k > 1,
        HAS_BIAS=bias is not None,
        EVEN_K=split_k * k_chunk == k,
        BLOCK_M=block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        STAGES=stages,
        IEEE_DOT=x.dtype == torch.float32,
        num_warps=cfg.warps,
        **pdl.launch(x.device),
    )
    return y
