"""The fused elementwise kernels (RMSNorm, add + RMSNorm, SiLU-and-mul, rotary, KV write) on CPU through Triton's
interpreter, against their torch references; and the engine with them against its torch path.

TRITON_INTERPRET=1 must be set before Triton defines the kernels and would leak into every other test of
the session, so the interpreted work runs in child processes (this file run as a script) and the tests read
their results. tests/gpu/test_fused_ops_gpu.py imports the case helpers from here and runs them on CUDA.
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

# (atol, rtol) of kernel vs reference, per dtype. The kernels round where the references round, so what is
# left is the order of a row's sum of squares and the last bit of exp/rsqrt: an ulp or two of the output.
TOLERANCE = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 2e-3),
    torch.bfloat16: (1e-2, 1.6e-2),
}
# Triton's interpreter rounds fp32 -> bf16 differently from torch (an ulp now and then): its bf16 results
# are held to two bf16 ulps.
INTERPRETER_BF16_TOLERANCE = (2e-2, 3.2e-2)
OPS = ("rms_norm", "fused_add_rms_norm", "silu_and_mul", "rotary_embedding", "rotary_embedding_and_cache", "write_kv_cache")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    op: str  # one of OPS
    t: int  # tokens
    n: int = 0  # norm: hidden size; silu_and_mul: I (the output's width)
    heads: int = 0  # rotary: query heads (0 for write_kv_cache)
    kv_heads: int = 0
    head_dim: int = 0
    view: bool = False  # the input is a column view of a wider tensor (rows not contiguous)


CASES = (
    Case("norm_t1_h96", "rms_norm", 1, n=96),
    Case("norm_t37_h160", "rms_norm", 37, n=160),
    Case("norm_t5_h2048_view", "rms_norm", 5, n=2048, view=True),
    Case("add_norm_t1_h96", "fused_add_rms_norm", 1, n=96),
    Case("add_norm_t37_h160", "fused_add_rms_norm", 37, n=160),
    Case("add_norm_t3_h1000_view", "fused_add_rms_norm", 3, n=1000, view=True),
    Case("silu_t1_i96", "silu_and_mul", 1, n=96),
    Case("silu_t37_i160", "silu_and_mul", 37, n=160),
    Case("silu_t3_i1500_view", "silu_and_mul", 3, n=1500, view=True),  # two column blocks, the second masked
    Case("rope_t1_mha", "rotary_embedding", 1, heads=4, kv_heads=4, head_dim=32),
    Case("rope_t37_gqa3_d80", "rotary_embedding", 37, heads=6, kv_heads=2, head_dim=80, view=True),
    Case("rope_cache_t1", "rotary_embedding_and_cache", 1, heads=4, kv_heads=2, head_dim=32, view=True),
    Case("rope_cache_t37_gqa4", "rotary_embedding_and_cache", 37, heads=8, kv_heads=2, head_dim=64, view=True),
    Case("rope_cache_d96", "rotary_embedding_and_cache", 9, heads=5, kv_heads=1, head_dim=96, view=True),
    # 72 heads of 128: several head blocks per token
    Case("rope_cache_72_heads", "rotary_embedding_and_cache", 3, heads=64, kv_heads=8, head_dim=128, view=True),
    Case("write_t1", "write_kv_cache", 1, kv_heads=2, head_dim=32),
    Case("write_t37_view", "write_kv_cache", 37, kv_heads=3, head_dim=80, view=True),
)


def make_inputs(case: Case, dtype: torch.dtype, device: str, gen: torch.Generator) -> dict:
    """Random inputs of a case; caches are NaN everywhere (the written slots are a random subset)."""

    def randn(*shape: int, std: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * std).to(dtype).to(device)

    def maybe_view(x: torch.Tensor) -> torch.Tensor:
        """x as the left columns of a wider tensor whose other columns are NaN."""
        if not case.view:
            return x
        wide = torch.full((x.shape[0], x.shape[1] + 24), math.nan, dtype=dtype, device=device)
        wide[:, : x.shape[1]] = x
        return wide[:, : x.shape[1]]

    t = case.t
    if case.op in ("rms_norm", "fused_add_rms_norm"):
        # An offset mean and spread, like hidden states; the weight around 1.
        inp = {"x": maybe_view(randn(t, case.n, std=3.0) + 0.5), "weight": randn(case.n, std=0.3) + 1.0, "eps": 1e-5}
        if case.op == "fused_add_rms_norm":
            inp["residual"] = maybe_view(randn(t, case.n, std=3.0))
        return inp
    if case.op == "silu_and_mul":
        return {"gate_up": maybe_view(randn(t, 2 * case.n, std=2.0))}
    d, kvh = case.head_dim, case.kv_heads
    num_slots = 2 * t + 7
    slots = torch.randperm(num_slots, generator=gen)[:t].to(device)
    if case.op == "write_kv_cache":
        return {
            "k": maybe_view(randn(t, kvh * d)).view(t, kvh, d),
            "v": maybe_view(randn(t, kvh * d)).view(t, kvh, d),
            "k_cache": torch.full((num_slots, kvh, d), math.nan, dtype=dtype, device=device),
            "v_cache": torch.full((num_slots, kvh, d), math.nan, dtype=dtype, device=device),
            "slot_mapping": slots,
        }
    # Positions up to 4k against Llama's frequencies: cos/sin as the model builds them.
    positions = torch.randint(0, 4096, (t,), generator=gen)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d, 2).float() / d))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    qkv = maybe_view(randn(t, (case.heads + 2 * kvh) * d))
    inp = {
        "qk": qkv[:, : (case.heads + kvh) * d].view(t, case.heads + kvh, d),
        "cos": emb.cos().to(dtype).to(device),
        "sin": emb.sin().to(dtype).to(device),
    }
    if case.op == "rotary_embedding_and_cache":
        inp["v"] = qkv[:, (case.heads + kvh) * d :].view(t, kvh, d)
        inp["k_cache"] = torch.full((num_slots, kvh, d), math.nan, dtype=dtype, device=device)
        inp["v_cache"] = torch.full((num_slots, kvh, d), math.nan, dtype=dtype, device=device)
        inp["slot_mapping"] = slots
    return inp


def apply(case: Case, inp: dict, *, reference: bool, copy: bool = True) -> dict[str, torch.Tensor]:
    """Runs the op (or its torch reference) on copies of the inputs (on the inputs themselves without
    `copy`: timing); returns every tensor it produces or updates, by name."""
    from loraledger.kernels import fused_ops as ops

    def fresh(x: torch.Tensor) -> torch.Tensor:
        """A copy with x's strides, so views stay views."""
        return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device).copy_(x)

    if copy:
        inp = {k: fresh(v) if isinstance(v, torch.Tensor) else v for k, v in inp.items()}
    if case.op == "rms_norm":
        fn = ops.rms_norm_ref if reference else ops.rms_norm
        return {"out": fn(inp["x"], inp["weight"], inp["eps"])}
    if case.op == "fused_add_rms_norm":
        if reference:
            out, residual = ops.fused_add_rms_norm_ref(inp["x"], inp["residual"], inp["weight"], inp["eps"])
        else:
            out, residual = ops.fused_add_rms_norm(inp["x"], inp["residual"], inp["weight"], inp["eps"])
            assert out is inp["x"] and residual is inp["residual"]  # in place
        return {"out": out, "residual": residual}
    if case.op == "silu_and_mul":
        fn = ops.silu_and_mul_ref if reference else ops.silu_and_mul
        return {"out": fn(inp["gate_up"])}
    if case.op == "write_kv_cache":
        fn = ops.write_kv_cache_ref if reference else ops.write_kv_cache
        fn(inp["k"], inp["v"], inp["k_cache"], inp["v_cache"], inp["slot_mapping"])
        return {"k_cache": inp["k_cache"], "v_cache": inp["v_cache"]}
    qk, cos, sin = inp["qk"], inp["cos"], inp["sin"]
    if reference:
        qk = ops.rope_ref(qk, cos, sin)
        if case.op == "rotary_embedding_and_cache":
            k = qk[:, case.heads :]
            ops.write_kv_cache_ref(k, inp["v"], inp["k_cache"], inp["v_cache"], inp["slot_mapping"])
    elif case.op == "rotary_embedding":
        ops.rotary_embedding(qk, cos, sin)
    else:
        ops.rotary_embedding_and_cache(qk, inp["v"], cos, sin, inp["k_cache"], inp["v_cache"], inp["slot_mapping"])
    out = {"qk": qk}
    if case.op == "rotary_embedding_and_cache":
        out |= {"k_cache": inp["k_cache"], "v_cache": inp["v_cache"]}
    return out


def run_case(case: Case, dtype: torch.dtype, device: str, seed: int, tolerance: tuple[float, float]) -> dict:
    """Kernel vs reference on the same inputs: the worst |out - ref| / (atol + rtol |ref|) over every
    output (<= 1 passes), and whether NaN sits exactly where the reference has it (unwritten cache slots,
    which a stray write would overwrite)."""
    inp = make_inputs(case, dtype, device, torch.Generator().manual_seed(seed))
    got, want = apply(case, inp, reference=False), apply(case, inp, reference=True)
    atol, rtol = tolerance
    worst, nan_match = 0.0, True
    for name, ref in want.items():
        out = got[name].double().cpu()
        ref = ref.double().cpu()
        nan_match &= bool((out.isnan() == ref.isnan()).all())
        live = ~ref.isnan()
        excess = (out[live] - ref[live]).abs() / (atol + rtol * ref[live].abs())
        worst = max(worst, excess.max().item() if excess.numel() else 0.0)
    return {"excess": worst, "nan_match": nan_match}


def check(result: dict) -> None:
    assert result["nan_match"], result
    assert result["excess"] <= 1.0, result


INTERPRETER_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _interpreter_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    return INTERPRETER_BF16_TOLERANCE if dtype == torch.bfloat16 else TOLERANCE[dtype]


def _run_all_interpreted() -> dict:
    """The child process: every case in every dtype, fresh seeds, results as JSON."""
    seed = int.from_bytes(os.urandom(4), "little")
    out = {"seed": seed}
    for i, case in enumerate(CASES):
        for name, dtype in INTERPRETER_DTYPES.items():
            out[f"{case.name}-{name}"] = run_case(case, dtype, "cpu", seed + i, _interpreter_tolerance(dtype))
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
    return _child("kernels")


@pytest.mark.parametrize("dtype", INTERPRETER_DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_interpreted_kernel_matches_reference(interpreted: dict, case: Case, dtype: str) -> None:
    result = interpreted[f"{case.name}-{dtype}"]
    assert math.isfinite(result["excess"]), f"seed {interpreted['seed']}"
    check(result)


def test_cases_cover_every_op() -> None:
    assert {c.op for c in CASES} == set(OPS)


def test_cpu_path_is_the_reference() -> None:
    """Without the interpreter (this process) each operator is its reference, bit for bit, in place where
    it says so."""
    for case in CASES:
        for dtype in (torch.float32, torch.bfloat16):
            inp = make_inputs(case, dtype, "cpu", torch.Generator().manual_seed(5))
            got, want = apply(case, inp, reference=False), apply(case, inp, reference=True)
            for name in want:
                torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, equal_nan=True)


def test_shape_errors_are_clear() -> None:
    from loraledger.kernels import fused_ops as ops

    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="weight"):
        ops.rms_norm(x, torch.ones(8, dtype=torch.float16), 1e-5)
    with pytest.raises(ValueError, match="contiguous rows"):
        ops.rms_norm(x.t(), torch.ones(4), 1e-5)
    with pytest.raises(ValueError, match="gate_up"):
        ops.silu_and_mul(torch.randn(4, 7))
    with pytest.raises(ValueError, match="cos"):
        ops.rotary_embedding(torch.randn(4, 2, 8), torch.randn(4, 4), torch.randn(4, 4))
    with pytest.raises(ValueError, match="D even"):
        ops.rotary_embedding(torch.randn(4, 2, 7), torch.randn(4, 7), torch.randn(4, 7))
    with pytest.raises(ValueError, match="slot_mapping"):
        ops.write_kv_cache(
            torch.randn(4, 2, 8), torch.randn(4, 2, 8), torch.zeros(9, 2, 8), torch.zeros(9, 2, 8), torch.zeros(4)
        )


def test_kv_cache_writes_each_layer_at_its_slots() -> None:
    from loraledger.runtime.engine.kv_cache import KVCache

    kv = KVCache(num_layers=3, num_blocks=4, block_size=2, num_kv_heads=2, head_dim=8, dtype=torch.float32, device="cpu")
    k, v = torch.randn(3, 2, 8), torch.randn(3, 2, 8)
    kv.write(1, k, v, torch.tensor([5, 0, 2]))
    assert torch.equal(kv.k[1, 2, 1], k[0]) and torch.equal(kv.v[1, 0, 0], v[1]) and torch.equal(kv.k[1, 1, 0], k[2])
    assert kv.k[0].abs().sum() == 0 and kv.v[2].abs().sum() == 0 and kv.k[1, 3].abs().sum() == 0


# --- the engine ---------------------------------------------------------------------------------------

ENGINE_ARCHS = {"llama": {}, "qwen2": {}}  # GQA + Llama 3 RoPE scaling; q/k/v bias
ENGINE_PROMPTS = ([128, 72, 101, 108, 108, 111], [128, 65], [128] + list(range(40, 75)), [128, 97, 98, 99, 100])


def _engine_outputs(model_dir: str) -> list[dict]:
    """Greedy generations with logprobs over the tiny model (chunked prefills mixed with decodes)."""
    from loraledger.runtime.engine import Engine, GenerationRequest, SamplingParams

    engine = Engine.from_pretrained(model_dir, device="cpu", block_size=4, num_kv_blocks=64, max_num_batched_tokens=16)
    params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=True, ignore_eos=True)
    results = engine.generate_batch([GenerationRequest(list(p), params=params) for p in ENGINE_PROMPTS])
    return [{"tokens": r.token_ids, "logprobs": r.logprobs} for r in results]


def _engine_outputs_through_kernels(model_dir: str) -> dict:
    """The child's side: _engine_outputs, counting the engine's launches of each fused kernel."""
    import loraledger.kernels.fused_ops_triton as module

    calls: dict[str, int] = {}
    for name in ("launch_rms_norm", "launch_rope_and_cache", "launch_silu_and_mul"):
        launch = getattr(module, name)

        def counted(*args, _launch=launch, _name=name, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _launch(*args, **kwargs)

        setattr(module, name, counted)
    return {"outputs": _engine_outputs(model_dir), "calls": calls}


@pytest.fixture(scope="module", params=sorted(ENGINE_ARCHS))
def tiny_model(request, tmp_path_factory) -> str:
    from loraledger.runtime.engine.testing import make_tiny_model

    arch = request.param
    return str(make_tiny_model(tmp_path_factory.mktemp(arch) / "model", arch, **ENGINE_ARCHS[arch]))


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_engine_greedy_output_with_kernels_equals_torch_path(tiny_model: str) -> None:
    """The engine under the interpreter (every norm, rotary, KV write and SiLU through the kernels) against
    this process (the torch path): the same tokens, logprobs within fp32 noise."""
    torch_path = _engine_outputs(tiny_model)
    kernel_path = _child("engine", tiny_model)
    assert set(kernel_path["calls"]) == {"launch_rms_norm", "launch_rope_and_cache", "launch_silu_and_mul"}
    for want, got in zip(torch_path, kernel_path["outputs"], strict=True):
        assert got["tokens"] == want["tokens"]
        torch.testing.assert_close(torch.tensor(got["logprobs"]), torch.tensor(want["logprobs"]), atol=1e-4, rtol=0)


if __name__ == "__main__":
    from loraledger.kernels import fused_ops

    if not fused_ops._triton_interpreting():
        raise SystemExit("run with TRITON_INTERPRET=1")
    if sys.argv[1] == "kernels":
        print(json.dumps(_run_all_interpreted()))
    else:
        print(json.dumps(_engine_outputs_through_kernels(sys.argv[2])))
