"""Multi-adapter serving benchmark: Poisson arrivals over many adapters, against no-LoRA, HF PEFT and the roofline.

Random weights at real dimensions (PRESETS: llama-3.2-1b, llama-3-8b), no downloads. Workloads like
S-LoRA's (rank 8 on q, k, v, o) and Punica's (rank 16 on all seven projections); input and output
lengths U[lo, hi]; adapter popularity uniform or Zipf.

    python benchmarks/serving/bench_serving.py --preset llama-3-8b --adapters 1000 --setting slora \
        --requests 1000 --rate 20 --slots 64 --baselines nolora,hf --json out.json
    python benchmarks/serving/bench_serving.py --preset tiny --device cpu --requests 8 --adapters 4   # smoke

Adapters are written to disk once per distinct weight set (--distinct-files) and registered under many
ids, so 5,000 registered adapters need not mean 5,000 files; each id still occupies its own slot and
cache entries, which is what the cache and the kernels see.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from loraledger.runtime.engine import PRESETS, Engine, EngineConfig, GenerationRequest, ModelConfig, SamplingParams
from loraledger.runtime.engine.model import random_model

TINY = ModelConfig(
    vocab_size=1000,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    max_position_embeddings=2048,
)
SETTINGS = {
    "slora": (8, ("q_proj", "k_proj", "v_proj", "o_proj")),
    "punica": (16, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
}


def write_adapters(config: ModelConfig, root: Path, n: int, rank: int, targets, seed: int) -> list[Path]:
    """n random PEFT adapters (A ~ N(0, 1/K), B ~ N(0, 0.01)) in bf16."""
    shapes = config.projection_shapes()
    g = torch.Generator().manual_seed(seed)
    folders = []
    for i in range(n):
        folder = root / f"adapter{i}"
        folder.mkdir(parents=True)
        tensors = {}
        for layer in range(config.num_layers):
            for name in targets:
                k, out = shapes[name]
                block = "mlp" if name in ("gate_proj", "up_proj", "down_proj") else "self_attn"
                prefix = f"base_model.model.model.layers.{layer}.{block}.{name}"
                tensors[f"{prefix}.lora_A.weight"] = (torch.randn(rank, k, generator=g) / k**0.5).bfloat16()
                tensors[f"{prefix}.lora_B.weight"] = (torch.randn(out, rank, generator=g) * 0.01).bfloat16()
        save_file(tensors, folder / "adapter_model.safetensors")
        cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(targets)}
        (folder / "adapter_config.json").write_text(json.dumps(cfg))
        folders.append(folder)
    return folders


def make_workload(args, num_adapters: int, vocab: int) -> list[tuple[float, list[int], int, int | None]]:
    """(arrival time s, prompt ids, output length, adapter index or None) per request."""
    g = torch.Generator().manual_seed(args.seed)
    lo, hi = args.len_range
    gaps = torch.empty(args.requests).exponential_(generator=g) / args.rate
    arrivals = torch.cumsum(gaps, 0).tolist()
    if args.popularity == "uniform":
        picks = torch.randint(num_adapters, (args.requests,), generator=g).tolist()
    else:  # Zipf over adapter ranks
        weights = 1.0 / torch.arange(1, num_adapters + 1, dtype=torch.float64) ** args.zipf_alpha
        picks = torch.multinomial(weights, args.requests, replacement=True, generator=g).tolist()
    out = []
    for i in range(args.requests):
        n_in = int(torch.randint(lo, hi + 1, (1,), generator=g))
        n_out = int(torch.randint(lo, hi + 1, (1,), generator=g))
        prompt = torch.randint(vocab, (n_in,), generator=g).tolist()
        out.append((arrivals[i], prompt, n_out, picks[i]))
    return out


async def drive(engine: Engine, workload, adapter_ids) -> dict:
    """Submits at the arrival times; returns throughput and latency percentiles."""
    start = time.perf_counter()
    ttft, tpot, outputs = [], [], 0

    async def one(arrival, prompt, n_out, pick):
        nonlocal outputs
        await asyncio.sleep(max(0.0, arrival - (time.perf_counter() - start)))
        sent = time.perf_counter()
        first = last = None
        count = 0
        params = SamplingParams(max_tokens=n_out, temperature=0, ignore_eos=True)
        adapter = None if pick is None else adapter_ids[pick]
        async for ev in engine.generate(GenerationRequest(prompt, adapter_id=adapter, params=params)):
            if ev.token_ids:
                now = time.perf_counter()
                first = first or now
                last = now
                count += len(ev.token_ids)
        ttft.append(first - sent)
        if count > 1:
            tpot.append((last - first) / (count - 1))
        outputs += count

    await asyncio.gather(*(one(*w) for w in workload))
    elapsed = time.perf_counter() - start
    return {
        "elapsed_s": elapsed,
        "output_tokens_per_s": outputs / elapsed,
        "ttft_p50_s": _pct(ttft, 0.5),
        "ttft_p99_s": _pct(ttft, 0.99),
        "tpot_p50_s": _pct(tpot, 0.5),
        "tpot_p99_s": _pct(tpot, 0.99),
    }


def _pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


def run_hf(args, config: ModelConfig, adapters: list[Path], workload, batch_size: int) -> dict:
    """transformers + PEFT on the same requests, offline (all arrived at once, so no queueing counts against it):
    static batches in arrival order, left-padded, `generate` with one adapter name per row (PEFT's mixed-batch
    inference); a request's useful output is its own length, however long its batch ran."""
    from peft import PeftModel
    from transformers import LlamaConfig, LlamaForCausalLM

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    hf_config = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
        rope_theta=config.rope_theta, tie_word_embeddings=config.tie_word_embeddings, pad_token_id=0,
    )  # fmt: skip
    with torch.device(args.device):
        base = LlamaForCausalLM(hf_config).to(dtype).eval()
    base.generation_config.eos_token_id = None
    names = [f"f{i}" for i in range(len(adapters))]
    model = PeftModel.from_pretrained(base, adapters[0], adapter_name=names[0])
    for name, folder in zip(names[1:], adapters[1:], strict=True):
        model.load_adapter(folder, adapter_name=name)
    model.eval()
    outputs = 0
    if args.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for b in range(0, len(workload), batch_size):
        batch = workload[b : b + batch_size]
        width = max(len(prompt) for _, prompt, _, _ in batch)
        ids = torch.tensor([[0] * (width - len(p)) + p for _, p, _, _ in batch], device=args.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for _, p, _, _ in batch], device=args.device)
        new = max(n for _, _, n, _ in batch)
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, adapter_names=[names[pick % len(names)] for *_, pick in batch])  # fmt: skip
        outputs += sum(n for _, _, n, _ in batch)
    if args.device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"elapsed_s": elapsed, "output_tokens_per_s": outputs / elapsed, "requests": len(workload),
            "batch_size": batch_size}  # fmt: skip


def run_engine(args, model, adapters: list[Path], registered: int, with_lora: bool, workload=None) -> dict:
    rank, targets = SETTINGS[args.setting]
    config = EngineConfig(
        device=args.device,
        max_adapters=args.slots,
        max_lora_rank=rank,
        lora_targets=targets,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_batched_tokens,
        cpu_adapter_cache_bytes=int(args.cpu_cache_gb * 2**30),
        max_model_len=2 * args.len_range[1] + 16,
    )
    engine = Engine(model, None, config)
    ids = []
    t0 = time.perf_counter()
    if with_lora:
        for i in range(registered):
            ids.append(f"a{i}")
            engine.add_adapter(ids[-1], adapters[i % len(adapters)])
    register_s = time.perf_counter() - t0
    if workload is None:
        workload = make_workload(args, args.adapters, model.config.vocab_size)  # the same requests either way
    if not with_lora:
        workload = [(t, prompt, n, None) for t, prompt, n, _ in workload]
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    engine.start()
    try:
        result = asyncio.run(drive(engine, workload, ids))
    finally:
        engine.stop()
    result.update(engine.stats())
    result["register_s"] = register_s
    if args.device == "cuda":
        result["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["slot_pool_gib"] = engine.slot_pool.nbytes / 2**30
    engine.close()
    return result


def roofline(model, args) -> dict:
    """Decode-step floors at batch B: bytes (weights + KV at mean context) over the measured copy rate."""
    if args.device != "cuda":
        return {}
    x = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize()
    copy_bw = 2 * x.numel() * 10 / (time.perf_counter() - t0)  # read + write
    c = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    ctx = sum(args.len_range)  # mean input + mean output/2 ≈ (lo + hi) / 2 + (lo + hi) / 4; keep it simple
    kv_per_token = 2 * c.num_layers * c.num_kv_heads * c.head_dim * 2
    batch = args.max_num_seqs
    return {
        "copy_bandwidth_GBps": copy_bw / 1e9,
        "decode_floor_s": (weights + batch * ctx * kv_per_token) / copy_bw,
        "decode_batch": batch,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="llama-3.2-1b", choices=[*PRESETS, "tiny"])
    p.add_argument("--layers", type=int, help="override the preset's layer count (quick runs)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--setting", default="slora", choices=sorted(SETTINGS))
    p.add_argument("--adapters", type=int, default=100, help="adapters registered")
    p.add_argument("--distinct-files", type=int, default=16)
    p.add_argument("--slots", type=int, default=32, help="device slot pool size")
    p.add_argument("--cpu-cache-gb", type=float, default=8.0)
    p.add_argument("--popularity", default="uniform", choices=["uniform", "zipf"])
    p.add_argument("--zipf-alpha", type=float, default=1.0)
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--rate", type=float, default=10.0, help="Poisson arrivals per second")
    p.add_argument("--len-range", type=int, nargs=2, default=(8, 512))
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-batched-tokens", type=int, default=2048)
    p.add_argument("--baselines", default="nolora", help="comma list: nolora, hf (transformers + PEFT)")
    p.add_argument("--hf-requests", type=int, default=64, help="requests of the offline transformers+PEFT comparison")
    p.add_argument("--hf-batch", type=int, default=16, help="transformers+PEFT static batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    config = TINY if args.preset == "tiny" else PRESETS[args.preset]
    if args.layers:
        config = replace(config, num_layers=args.layers)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model = random_model(config, device=torch.device(args.device), dtype=dtype, seed=args.seed)
    rank, targets = SETTINGS[args.setting]
    report = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    if args.device == "cuda":
        report["device"] = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory() as tmp:
        files = write_adapters(config, Path(tmp), min(args.distinct_files, args.adapters), rank, targets, args.seed)
        report["lora"] = run_engine(args, model, files, args.adapters, with_lora=True)
        if "nolora" in args.baselines.split(","):
            report["nolora"] = run_engine(args, model, files, 0, with_lora=False)
        if "hf" in args.baselines.split(","):
            # The same first --hf-requests requests, all arrived at once, through both: offline throughput.
            full = make_workload(args, args.adapters, model.config.vocab_size)
            subset = [(0.0, prompt, n, pick) for _, prompt, n, pick in full[: args.hf_requests]]
            report["lora_offline"] = run_engine(args, model, files, args.adapters, with_lora=True, workload=subset)
            report["hf"] = run_hf(args, config, files, subset, args.hf_batch)
            report["lora_vs_hf"] = report["lora_offline"]["output_tokens_per_s"] / report["hf"]["output_tokens_per_s"]
    report["roofline"] = roofline(model, args)
    if "nolora" in report:
        report["lora_vs_nolora"] = report["lora"]["output_tokens_per_s"] / report["nolora"]["output_tokens_per_s"]
    print(json.dumps(report, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
