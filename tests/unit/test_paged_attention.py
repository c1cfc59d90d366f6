"""The paged decode-attention kernel on CPU through Triton's interpreter, against the float64 torch reference,
and the engine's greedy output with the kernel equal to its torch path.

TRITON_INTERPRET=1 must be set before Triton defines the kernels and would leak into every other test
of the session, so the interpreted work runs in child processes (this file run as a script) and the tests
read their results. tests/gpu/test_paged_attention_gpu.py imports the case helpers from here and runs
them on CUDA.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch

# max over sequences of ‖out_b − ref_b‖ / ‖ref_b‖ (ref in float64 from the same rounded inputs): fp32
# dots are full precision (no tf32); fp16 and bf16 round the probabilities before P @ V and the output.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1.5e-3, torch.bfloat16: 1e-2}
POISON_BLOCK = 1 << 30  # block-table entries past a sequence's blocks: reading one would fault


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    context_lens: tuple[int, ...]  # one per sequence; 0 = a padding row (output zeros)
    heads: int
    kv_heads: int
    head_dim: int
    block_size: int
    spare_blocks: int = 5  # cache blocks no sequence uses (poisoned)
    sliding_window: int | None = None
    num_splits: int | None = None
    block_n: int | None = None
    index_dtype: torch.dtype = torch.int64  # block tables and context lengths
    q_view: bool = False  # q is a column view of a wider [B, (H + 2 KV_H) * D] qkv tensor
    cache_view: bool = False  # k/v caches are one layer of a [layers, ...] tensor
    rotary: bool = False  # q and the new key come unrotated (paged_attention's `rotary`): rotate, cache, attend


CASES = (
    Case("gqa1_one_token", (1, 1, 2), 4, 4, 32, 16),
    Case("gqa1_odd_lens", (1, 17, 50, 33), 4, 4, 64, 16),
    Case("gqa2_odd_lens", (5, 16, 31, 64, 3), 8, 4, 32, 16, q_view=True),
    Case("gqa4_block8", (9, 40, 1, 23), 16, 4, 64, 8, cache_view=True),
    Case("gqa4_block5_dim80", (12, 7, 26), 8, 2, 80, 5),
    Case("gqa8_int32", (19, 44), 8, 1, 32, 16, index_dtype=torch.int32),
    Case("splits3", (1, 37, 70, 96), 8, 4, 32, 16, num_splits=3),
    Case("splits4_block_n32", (2, 33, 65, 130), 4, 2, 32, 8, num_splits=4, block_n=32),
    Case("block_n_smaller_than_block", (3, 40, 77), 4, 2, 32, 32, block_n=16),
    Case("sliding_window", (4, 9, 30, 61), 8, 4, 32, 8, sliding_window=12),
    Case("window_splits", (6, 29, 58), 4, 2, 32, 8, sliding_window=20, num_splits=3),
    Case("padding_rows", (0, 21, 0, 5), 4, 2, 32, 16),
    Case("padding_rows_splits", (0, 21, 0, 5), 4, 2, 32, 16, num_splits=2),
    Case("rotary", (1, 17, 50, 33), 8, 4, 32, 16, rotary=True, q_view=True),
    Case("rotary_splits", (1, 37, 70, 96), 8, 4, 32, 16, num_splits=3, rotary=True, cache_view=True),
    Case("rotary_window_padding", (0, 21, 0, 5, 30), 4, 2, 32, 8, sliding_window=12, num_splits=2, rotary=True),
    Case("rotary_block5_dim80", (12, 7, 26), 8, 2, 80, 5, rotary=True),
)


def rotary_inputs(case: Case, inp: dict, gen: torch.Generator) -> tuple[dict, dict, torch.Tensor]:
    """For a rotary case: (the Rotary fields, the inputs the plain kernel would get after a rotary + KV-write
    launch: q rotated, each sequence's new key and value written as its key L - 1, the rotated q)."""
    from loraledger.kernels.fused_ops import rope_ref

    q, dtype = inp["q"], inp["q"].dtype
    n, kvh, d, bs = q.shape[0], case.kv_heads, case.head_dim, case.block_size
    k_new = torch.randn(n, kvh, d, generator=gen, dtype=torch.float64).to(dtype)
    v_new = torch.randn(n, kvh, d, generator=gen, dtype=torch.float64).to(dtype)
    pos = (torch.tensor(case.context_lens, dtype=torch.float64) - 1).clamp(min=0)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    angles = torch.cat((pos[:, None] * inv_freq, pos[:, None] * inv_freq), dim=1)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    k_cache, v_cache = inp["k_cache"].clone(), inp["v_cache"].clone()
    for b, length in enumerate(case.context_lens):
        if length:
            slot = int(inp["block_tables"][b, (length - 1) // bs]) * bs + (length - 1) % bs
            k_cache.view(-1, kvh, d)[slot] = rope_ref(k_new[b : b + 1], cos[b : b + 1], sin[b : b + 1])[0]
            v_cache.view(-1, kvh, d)[slot] = v_new[b]
    q_rot = rope_ref(q, cos, sin)
    plain = {**inp, "q": q_rot, "k_cache": k_cache, "v_cache": v_cache}
    return {"k": k_new, "v": v_new, "cos": cos, "sin": sin}, plain, q_rot


def make_inputs(case: Case, dtype: torch.dtype, device: str, gen: torch.Generator) -> dict:
    """Random q and caches, a block table of shuffled block ids; NaN in every cache row and column that
    no sequence's context covers, POISON_BLOCK in every unused block-table entry."""
    bs, kvh, d = case.block_size, case.kv_heads, case.head_dim
    blocks_per_seq = [-(-n // bs) for n in case.context_lens]
    num_blocks = sum(blocks_per_seq) + case.spare_blocks
    max_blocks = max(blocks_per_seq) + 2
    k = torch.full((num_blocks, bs, kvh, d), math.nan, dtype=torch.float64)
    v = torch.full((num_blocks, bs, kvh, d), math.nan, dtype=torch.float64)
    ids = torch.randperm(num_blocks, generator=gen)
    tables = torch.full((len(case.context_lens), max_blocks), POISON_BLOCK, dtype=torch.int64)
    used = 0
    for b, (n, nb) in enumerate(zip(case.context_lens, blocks_per_seq)):
        tables[b, :nb] = ids[used : used + nb]
        used += nb
        # Scores spread over a few units, so the softmax is neither flat nor one-hot.
        rows = torch.randn(n, kvh, d, generator=gen, dtype=torch.float64) * 2.0
        k.view(-1, kvh, d)[(tables[b, :nb, None] * bs + torch.arange(bs)).flatten()[:n]] = rows
        v.view(-1, kvh, d)[(tables[b, :nb, None] * bs + torch.arange(bs)).flatten()[:n]] = torch.randn(
            n, kvh, d, generator=gen, dtype=torch.float64
        )
    q = torch.randn(len(case.context_lens), case.heads, d, generator=gen, dtype=torch.float64)
    if case.q_view:
        qkv = torch.full((q.shape[0], (case.heads + 2 * kvh) * d), math.nan, dtype=torch.float64)
        qkv[:, : case.heads * d] = q.flatten(1)
        q = qkv[:, : case.heads * d].view(-1, case.heads, d)
    if case.cache_view:
        k = torch.stack((torch.full_like(k, math.nan), k, torch.full_like(k, math.nan)))[1]
        v = torch.stack((torch.full_like(v, math.nan), v, torch.full_like(v, math.nan)))[1]
    return {
        "q": q.to(dtype).to(device),
        "k_cache": k.to(dtype).to(device),
        "v_cache": v.to(dtype).to(device),
        "block_tables": tables.to(case.index_dtype).to(device),
        "context_lens": torch.tensor(case.context_lens, dtype=case.index_dtype, device=device),
    }


def run_case(case: Case, dtype: torch.dtype, device: str, seed: int) -> dict:
    """Run one case through the kernel; returns its worst per-sequence relative error against float64."""
    from loraledger.kernels.paged_attention import paged_attention
    from loraledger.kernels.reference import paged_attention_ref

    gen = torch.Generator().manual_seed(seed)
    inp = make_inputs(case, dtype, device, gen)
    scale = case.head_dim**-0.5
    launch = {"scale": scale, "sliding_window": case.sliding_window, "max_context_len": max(case.context_lens),
              "num_splits": case.num_splits, "block_n": case.block_n}  # fmt: skip
    extra = {}
    if case.rotary:
        from loraledger.kernels.paged_attention import Rotary

        fields, plain, _ = rotary_inputs(case, {key: t.cpu() for key, t in inp.items()}, gen)
        plain = {key: t.to(device) for key, t in plain.items()}
        out = paged_attention(**inp, **launch, rotary=Rotary(*(fields[key].to(device) for key in Rotary._fields)))
        unset = -7.0  # NaN-free stand-in for the caches' poisoned rows, for an exact comparison

        def same(a: torch.Tensor, b: torch.Tensor) -> bool:
            """Bit for bit in fp16/bf16, whose products are rounded as torch rounds them; in fp32 the GPU may
            contract the rotation's x * cos + y * sin into a fused multiply-add (one rounding less)."""
            a, b = a.nan_to_num(nan=unset), b.nan_to_num(nan=unset)
            if a.dtype == torch.float32:
                return torch.allclose(a, b, rtol=1e-5, atol=1e-6)
            return torch.equal(a, b)

        extra = {"cache_as_written": same(inp["k_cache"], plain["k_cache"]) and same(inp["v_cache"], plain["v_cache"]),
                 "equals_unfused": same(out, paged_attention(**plain, **launch))}  # fmt: skip
        inp = plain
    else:
        out = paged_attention(**inp, **launch)
    ref = paged_attention_ref(
        *(inp[key].double().cpu() for key in ("q", "k_cache", "v_cache")),
        inp["block_tables"].cpu(),
        inp["context_lens"].cpu(),
        scale,
        sliding_window=case.sliding_window,
    )
    out = out.double().cpu()
    live = torch.tensor(case.context_lens) > 0
    errs = (out - ref)[live].flatten(1).norm(dim=1) / ref[live].flatten(1).norm(dim=1)
    return {
        "err": errs.max().item(),
        "finite": bool(torch.isfinite(out).all()),
        "padding_rows_zero": bool((out[~live] == 0).all()),
        **extra,
    }


def check(result: dict, dtype: torch.dtype) -> None:
    assert result["finite"], result
    assert result["padding_rows_zero"], result
    assert result["err"] <= TOLERANCE[dtype], result
    # A rotary case: the cache holds the rotated new keys and values exactly where a rotary + KV-write launch
    # puts them, and the output is bit for bit the plain kernel's on those inputs.
    assert result.get("cache_as_written", True) and result.get("equals_unfused", True), result


INTERPRETER_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}  # the interpreter's bf16 dot is wrong


def _run_all_interpreted() -> dict:
    """The child process: every case in every interpreter dtype, fresh seeds, results as JSON."""
    seed = int.from_bytes(os.urandom(4), "little")
    out = {"seed": seed}
    for i, case in enumerate(CASES):
        for name, dtype in INTERPRETER_DTYPES.items():
            out[f"{case.name}-{name}"] = run_case(case, dtype, "cpu", seed + i)
    return out


def _child(*args: str) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def interpreted() -> dict:
    return _child("kernel")


@pytest.mark.parametrize("dtype", INTERPRETER_DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_interpreted_kernel_matches_float64_reference(interpreted: dict, case: Case, dtype: str) -> None:
    result = interpreted[f"{case.name}-{dtype}"]
    assert math.isfinite(result["err"]), f"seed {interpreted['seed']}"
    check(result, INTERPRETER_DTYPES[dtype])


def test_reference_matches_sdpa() -> None:
    """The reference itself, against SDPA over the contiguous keys (GQA, a window, a padding row)."""
    from loraledger.kernels.reference import paged_attention_ref

    case = Case("sdpa", (0, 7, 40, 33), 8, 2, 16, 8, sliding_window=30)
    inp = make_inputs(case, torch.float64, "cpu", torch.Generator().manual_seed(3))
    out = paged_attention_ref(**inp, scale=0.3, sliding_window=case.sliding_window)
    assert (out[0] == 0).all()
    for b in range(1, 4):
        n = case.context_lens[b]
        lo = max(0, n - case.sliding_window)
        ids = (inp["block_tables"][b, :, None] * 8 + torch.arange(8)).flatten()[lo:n]
        keys = inp["k_cache"].view(-1, 2, 16)[ids].transpose(0, 1)  # [KV_H, L, D]
        values = inp["v_cache"].view(-1, 2, 16)[ids].transpose(0, 1)
        want = torch.nn.functional.scaled_dot_product_attention(
            inp["q"][b][:, None], keys, values, scale=0.3, enable_gqa=True
        )[:, 0]
        torch.testing.assert_close(out[b], want)


# --- the engine ---------------------------------------------------------------------------------------

ENGINE_ARCHS = {"llama": {}, "mistral": {"sliding_window": 8}}  # GQA 4:2; a window shorter than the prompts
ENGINE_PROMPTS = ([128, 72, 101, 108, 108, 111], [128, 65], [128] + list(range(40, 75)), [128, 97, 98, 99, 100])


def _engine_outputs(model_dir: str) -> list[dict]:
    """Greedy generations with logprobs over the tiny model: several requests, so steps after the
    prefills are pure decode steps of several sequences."""
    from loraledger.runtime.engine import Engine, GenerationRequest, SamplingParams

    engine = Engine.from_pretrained(model_dir, device="cpu", block_size=4, num_kv_blocks=64, max_num_batched_tokens=16)
    params = SamplingParams(temperature=0.0, max_tokens=10, logprobs=True, ignore_eos=True)
    results = engine.generate_batch([GenerationRequest(list(p), params=params) for p in ENGINE_PROMPTS])
    return [{"tokens": r.token_ids, "logprobs": r.logprobs} for r in results]


@pytest.fixture(scope="module", params=sorted(ENGINE_ARCHS))
def tiny_model(request, tmp_path_factory) -> str:
    from loraledger.runtime.engine.testing import make_tiny_model

    arch = request.param
    return str(make_tiny_model(tmp_path_factory.mktemp(arch) / "model", arch, **ENGINE_ARCHS[arch]))


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_engine_greedy_output_with_kernel_equals_torch_path(tiny_model: str) -> None:
    """The engine under the interpreter (decode steps through the kernel) against this process (the torch
    path): the same tokens, logprobs within fp32 noise."""
    torch_path = _engine_outputs(tiny_model)
    kernel_path = _child("engine", tiny_model)
    # Every decode step of every layer; most of them batch all the requests.
    assert max(kernel_path["kernel_batch_sizes"]) == len(ENGINE_PROMPTS), kernel_path["kernel_batch_sizes"]
    for want, got in zip(torch_path, kernel_path["outputs"], strict=True):
        assert got["tokens"] == want["tokens"]
        torch.testing.assert_close(torch.tensor(got["logprobs"]), torch.tensor(want["logprobs"]), atol=1e-4, rtol=0)


def _engine_outputs_through_kernel(model_dir: str) -> dict:
    """The child's side: _engine_outputs, counting the engine's calls of the kernel on the way."""
    import loraledger.kernels.paged_attention as module

    kernel = module.paged_attention
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[0].shape[0])
        return kernel(*args, **kwargs)

    module.paged_attention = counted
    return {"outputs": _engine_outputs(model_dir), "kernel_batch_sizes": calls}


if __name__ == "__main__":
    from loraledger.runtime.engine import attention

    if not attention._triton_interpreting():
        raise SystemExit("run with TRITON_INTERPRET=1")
    if sys.argv[1] == "kernel":
        print(json.dumps(_run_all_interpreted()))
    else:
        print(json.dumps(_engine_outputs_through_kernel(sys.argv[2])))
