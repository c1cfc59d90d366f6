"""Multi-adapter serving benchmark: Poisson arrivals over many adapters, against no-LoRA, HF PEFT and the roofline.

Random weights at real dimensions (PRESETS: llama-3.2-1b, llama-3-8b), no downloads. Workloads like
S-LoRA's (rank 8 on q, k, v, o) and Punica's (rank 16 on all seven projections); input and output
lengths U[lo, hi]; adapter popularity uniform or Zipf.

    python benchmarks/serving/bench_serving.py --preset llama-3.2-1b --setting slora --adapters 1000 \
        --slots 64 --rate 40 --duration 60 --baselines nolora,hf --json out.json
    python benchmarks/serving/bench_serving.py --preset tiny --device cpu --adapters 20 --slots 8 \
        --max-num-seqs 16 --rate 20 --duration 3 --drain-s 5 --len-range 8 64 --baselines nolora,hf \
        --hf-requests 24 --hf-batch 8 --hf-max-s 2                                                   # smoke

Every run is bounded: requests arrive for --duration seconds (at most --requests of them); output tokens/s is
the tokens emitted inside that window over its length; then the requests still running get --drain-s more
seconds (for their TTFT/TPOT) and the rest are aborted. Before the window each engine is warmed up (Triton
compiles, every decode batch-size bucket's CUDA graph captured), so the window measures steady serving.

Adapters are written to disk once per distinct weight set (--distinct-files) and registered under many ids
on --register-workers threads, so 1,000 registered adapters need not mean 1,000 files; each id still occupies
its own host image, slot and cache entries, which is what the cache and the kernels see.

transformers + PEFT (--baselines hf; with --no-online, alone) runs offline on the workload's first requests
(all arrived at once): static batches of --hf-batch, `generate` with one adapter name per row, for --hf-max-s
(the batch running at the deadline is cut there); the engine then runs exactly the tokens HF produced (each
request with the output length HF reached), offline too, and lora_vs_hf is the ratio of tokens/s.

Sibling modes: bench_decode_step.py (the decode step alone against its roofline) and bench_adapter_scale.py
(100 → 5,000 registered adapters: GPU and host memory).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import gc
import json
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch
from loraledger.runtime.engine import (
    PRESETS,
    Engine,
    EngineConfig,
    GenerationRequest,
    ModelConfig,
    SamplingParams,
)
from loraledger.runtime.engine.model import random_model
from safetensors.torch import save_file

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
Workload = list[tuple[float, list[int], int, int | None]]  # (arrival s, prompt ids, output length, adapter index)


# --- shared by the serving modes ----------------------------------------------------------------------


def model_config(preset: str, layers: int | None = None) -> ModelConfig:
    config = TINY if preset == "tiny" else PRESETS[preset]
    return replace(config, num_layers=layers) if layers else config


def build_model(config: ModelConfig, device: str, seed: int = 0):
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return random_model(config, device=torch.device(device), dtype=dtype, seed=seed)


def adapter_tensors(config: ModelConfig, rank: int, targets, seed: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """One random PEFT adapter (A ~ N(0, 1/K), B ~ N(0, 0.01)) in bf16: (adapter_config, state dict)."""
    shapes = config.projection_shapes()
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config.num_layers):
        for name in targets:
            k, out = shapes[name]
            block = "mlp" if name in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            prefix = f"base_model.model.model.layers.{layer}.{block}.{name}"
            tensors[f"{prefix}.lora_A.weight"] = (torch.randn(rank, k, generator=g) / k**0.5).bfloat16()
            tensors[f"{prefix}.lora_B.weight"] = (torch.randn(out, rank, generator=g) * 0.01).bfloat16()
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(targets)}
    return cfg, tensors


def write_adapters(config: ModelConfig, root: Path, n: int, rank: int, targets, seed: int) -> list[Path]:
    """n random PEFT adapter folders."""
    folders = []
    for i in range(n):
        folder = root / f"adapter{i}"
        folder.mkdir(parents=True)
        cfg, tensors = adapter_tensors(config, rank, targets, seed + i)
        save_file(tensors, folder / "adapter_model.safetensors")
        (folder / "adapter_config.json").write_text(json.dumps(cfg))
        folders.append(folder)
    return folders


def register(engine: Engine, ids: list[str], sources: list, workers: int, only: list[int] | None = None) -> float:
    """Registers ids[i] from sources[i % len(sources)] (a folder, or an (adapter_config, tensors) pair) on
    `workers` threads (add() is thread-safe; reading, validating and packing release the GIL), for every i or
    for the indices `only`; returns seconds."""

    def add(i: int) -> None:
        src = sources[i % len(sources)]
        if isinstance(src, tuple):
            engine.add_adapter(ids[i], config=src[0], tensors=src[1])
        else:
            engine.add_adapter(ids[i], src)

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(add, range(len(ids)) if only is None else only))
    return time.perf_counter() - t0


def engine_config(args, *, rank: int, targets, max_model_len: int, **overrides) -> EngineConfig:
    fields = {
        "device": args.device,
        "max_adapters": args.slots,
        "max_lora_rank": rank,
        "lora_targets": targets,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_batched_tokens,
        "cpu_adapter_cache_bytes": int(args.cpu_cache_gb * 2**30),
        "max_model_len": max_model_len,
        "overlap_decode": not getattr(args, "no_overlap", False),
    }
    fields.update(overrides)
    return EngineConfig(**fields)


def free_engine(engine: Engine) -> None:
    """close() and give its device memory back, so the next engine's memory figures start clean."""
    engine.close()
    del engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def host_rss_gib() -> float:
    """This process's resident set (pinned host memory included), from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmRSS in /proc/self/status")


def gpu_memory(device: str) -> dict:
    if device != "cuda":
        return {}
    return {
        "gpu_allocated_gib": torch.cuda.memory_allocated() / 2**30,
        "gpu_max_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "gpu_max_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
    }


def log(message: str) -> None:
    """Progress on stderr (stdout carries the JSON report), so a run cut short by `timeout` shows where it was."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def save(report: dict, path: Path | None) -> None:
    """Writes the report so far (called after each phase: a timeout keeps what finished)."""
    if path is not None:
        path.write_text(json.dumps(report, indent=2, default=str))


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


def copy_bandwidth(device: str, nbytes: int = 1 << 30) -> float:
    """Bytes per second of a large device-to-device copy, read + write counted: the best of five rounds, so a
    round timed before the clocks came up does not lower every roofline of the run."""
    x = torch.empty(nbytes, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    return _best_rate(lambda: y.copy_(x), 2 * nbytes, device)


def matmul_rate(device: str, n: int = 8192) -> float:
    """FLOP/s of an n×n×n matmul in the device's serving dtype (bf16 on CUDA): the best of five rounds."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    return _best_rate(lambda: a @ b, 2 * n**3, device)


def _best_rate(op, units_per_op: float, device: str, rounds: int = 5, reps: int = 10) -> float:
    """Units per second of `op`, the best of `rounds` timed rounds of `reps` calls (after three untimed)."""
    for _ in range(3):
        op()
    sync(device)
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            op()
        sync(device)
        best = max(best, units_per_op * reps / (time.perf_counter() - t0))
    return best


# --- end to end ---------------------------------------------------------------------------------------


def make_workload(args, num_adapters: int, vocab: int) -> Workload:
    """Poisson arrivals inside [0, duration), at most args.requests of them."""
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
        if arrivals[i] < args.duration:
            out.append((arrivals[i], prompt, n_out, picks[i]))
    return out


def warm_up(engine: Engine, adapter_ids: list[str], vocab: int, len_hi: int) -> float:
    """Compiles and captures everything a measured run will meet, through the public step loop:
    1. max_num_seqs requests at once whose output lengths are 2, 3, ...: the decode batch shrinks through
       every batch-size bucket, so every decode graph is captured;
    2. staggered arrivals of prompts of many lengths (1, 15, 16, 17, ... tokens) joining running decodes:
       mixed prefill+decode steps of varied token counts, whose eager kernels Triton specialises (and
       compiles) by shape, as an online run's steps are."""
    n = engine.config.max_num_seqs
    longest = max(9, min(len_hi, engine.max_model_len - n - 4))
    g = torch.Generator().manual_seed(12345)

    def request(i: int, n_in: int, n_out: int) -> GenerationRequest:
        adapter = adapter_ids[i % len(adapter_ids)] if adapter_ids else None
        params = SamplingParams(max_tokens=n_out, temperature=0, ignore_eos=True)
        return GenerationRequest(torch.randint(vocab, (n_in,), generator=g).tolist(), adapter, params)

    t0 = time.perf_counter()
    engine.generate_batch([request(i, int(torch.randint(8, longest, (1,), generator=g)), i + 2) for i in range(n)])
    lengths = [1, 2, 7, 15, 16, 17, 31, 33, 63, 64, 65, 100, 127, 129, 200, 255, 257, 300, 400, 511, 512, 513]
    for i, n_in in enumerate(x for x in lengths if x < longest):
        engine.add_request(request(i, n_in, 12))
        engine.step()
        engine.step()
    while engine.has_unfinished():
        engine.step()
    return time.perf_counter() - t0


async def drive(engine: Engine, workload: Workload, adapter_ids, duration_s: float, drain_s: float) -> dict:
    """Submits at the arrival times; tokens/s over [0, duration_s); latencies of the requests that finished."""
    start = time.perf_counter()
    ttft, tpot = [], []
    emitted = {"window": 0, "all": 0, "finished": 0}

    async def one(arrival, prompt, n_out, pick):
        await asyncio.sleep(max(0.0, arrival - (time.perf_counter() - start)))
        sent = time.perf_counter()
        first = last = None
        count = 0
        params = SamplingParams(max_tokens=n_out, temperature=0, ignore_eos=True)
        adapter = None if pick is None else adapter_ids[pick]
        async for ev in engine.generate(GenerationRequest(prompt, adapter_id=adapter, params=params)):
            if ev.token_ids:
                now = time.perf_counter()
                if first is None:
                    first = now
                    ttft.append(first - sent)
                last = now
                count += len(ev.token_ids)
                emitted["all"] += len(ev.token_ids)
                if now - start < duration_s:
                    emitted["window"] += len(ev.token_ids)
        emitted["finished"] += 1
        if count > 1:
            tpot.append((last - first) / (count - 1))

    tasks = [asyncio.ensure_future(one(*w)) for w in workload]
    done, pending = await asyncio.wait(tasks, timeout=duration_s + drain_s)
    for task in pending:
        task.cancel()  # leaving generate() aborts the request
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        task.result()  # raise what a request raised
    return {
        "window_s": duration_s,
        "elapsed_s": time.perf_counter() - start,
        "requests": len(workload),
        "requests_finished": emitted["finished"],
        "output_tokens_in_window": emitted["window"],
        "output_tokens_per_s": emitted["window"] / duration_s,
        "ttft_p50_s": pct(ttft, 0.5),
        "ttft_p99_s": pct(ttft, 0.99),
        "tpot_p50_s": pct(tpot, 0.5),
        "tpot_p99_s": pct(tpot, 0.99),
    }


def offline(engine: Engine, workload: Workload, adapter_ids) -> dict:
    """The requests all at once through generate_batch (the same loop, on this thread)."""
    requests = [
        GenerationRequest(prompt, None if pick is None else adapter_ids[pick],
                          SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
        for _, prompt, n, pick in workload
    ]  # fmt: skip
    sync(engine.config.device)
    t0 = time.perf_counter()
    results = engine.generate_batch(requests)
    sync(engine.config.device)
    elapsed = time.perf_counter() - t0
    tokens = sum(len(r.token_ids) for r in results)
    return {
        "elapsed_s": elapsed,
        "requests": len(requests),
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / elapsed,
    }


def stat_delta(before: dict, after: dict, *, floats: bool = False) -> dict:
    """after − before for counters (ints; floats too with floats=True, for summed seconds); the rest as after."""
    kinds = (int, float) if floats else int
    return {
        k: v - before[k] if isinstance(v, kinds) and isinstance(before.get(k), kinds) else v for k, v in after.items()
    }


def window_steps(before: dict, after: dict) -> dict:
    """The engine's step_times over the window, with the mean host ms of a decode-graph, a piecewise-graph and
    an eager step."""
    d = stat_delta(before.get("step_times") or {}, after.get("step_times") or {}, floats=True)
    for kind in ("graphed", "piecewise", "eager"):
        if d.get(f"{kind}_steps") and f"{kind}_step_s" in d:
            d[f"{kind}_step_ms_mean"] = 1e3 * d[f"{kind}_step_s"] / d[f"{kind}_steps"]
    return d


class StackSampler:
    """A poor man's py-spy (none on the GPU machine): every `interval_s` a daemon thread records where the engine's
    step thread is (its innermost loraledger frame, and the frame below that is running when it is in torch or
    Triton); `top()` counts the places. A thread waiting for the GIL shows at the line it waits on."""

    def __init__(self, thread_name: str = "engine-step", interval_s: float = 0.002):
        self.thread_name, self.interval_s = thread_name, interval_s
        self.counts: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StackSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            ident = next((t.ident for t in threading.enumerate() if t.name == self.thread_name), None)
            frame = sys._current_frames().get(ident) if ident else None
            if frame is None:
                continue
            inner = frame
            while frame is not None and not frame.f_globals.get("__name__", "").startswith("loraledger"):
                frame = frame.f_back
            if frame is None:
                continue
            here = f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}:{frame.f_lineno}"
            if inner is not frame:
                here += f" > {Path(inner.f_code.co_filename).name}:{inner.f_code.co_name}"
            self.counts[here] += 1

    def top(self, n: int = 40) -> list[tuple[str, int]]:
        return self.counts.most_common(n)


def run_engine(args, model, sources: list, registered: int, workload: Workload, hf_subset: Workload | None) -> dict:
    """One engine: register, warm up, serve the workload for the window; with hf_subset, then serve it offline."""
    rank, targets = SETTINGS[args.setting]
    engine = Engine(
        model, None, engine_config(args, rank=rank, targets=targets, max_model_len=2 * args.len_range[1] + 16)
    )
    ids = [f"a{i}" for i in range(registered)]
    # Offline only (--no-online): the adapters the compared requests use are enough; registering 1,000 takes
    # most of a minute at 1B dimensions.
    only = None if args.online or hf_subset is None else sorted({w[3] for w in hf_subset if w[3] is not None})
    result = {"registered": registered if only is None else len(only),
              "register_s": register(engine, ids, sources, args.register_workers, only)}
    log(f"registered {result['registered']} adapters in {result['register_s']:.1f} s; warming up")
    result["engine_warmup_s"] = engine.warm_up() if args.device == "cuda" else 0.0  # what start() would do
    warm_ids = ids[: engine.config.max_num_seqs] if only is None else [ids[i] for i in only]
    result["warmup_s"] = warm_up(engine, warm_ids, model.config.vocab_size, args.len_range[1])
    log(f"warm-up {result['warmup_s']:.1f} s; serving {len(workload)} requests over {args.duration} s")
    if registered == 0:
        workload = [(t, prompt, n, None) for t, prompt, n, _ in workload]
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = engine.stats()
    steps = engine.num_steps
    if args.online:
        engine.start()
        sampler = StackSampler() if args.sample_stacks else None
        try:
            if sampler:
                sampler.__enter__()
            result.update(asyncio.run(drive(engine, workload, ids, args.duration, args.drain_s)))
        finally:
            if sampler:
                sampler.__exit__()
                result["engine_stacks"] = sampler.top()
            engine.stop()
        result["step_times"] = window_steps(before, engine.stats())  # host seconds per step phase, window + drain
        compiled = engine.stats()["kernel_compiles_since_warm_up"]
        result["kernel_compiles_in_window"] = None if compiled is None else compiled - (
            before["kernel_compiles_since_warm_up"] or 0)
    if hf_subset is not None:
        subset = hf_subset if registered else [(t, p, n, None) for t, p, n, _ in hf_subset]
        log(f"offline: the {len(subset)} requests transformers+PEFT completed")
        result["offline"] = offline(engine, subset, ids)
    result["steps"] = engine.num_steps - steps
    stats = engine.stats()
    result["adapters"] = stat_delta(before["adapters"], stats["adapters"])  # latency percentiles: warm-up's too
    result["preemptions"] = stats["preemptions"]
    result.update(gpu_memory(args.device))
    result["host_rss_gib"] = host_rss_gib()
    if args.device == "cuda":
        result["slot_pool_gib"] = engine.slot_pool.nbytes / 2**30
    free_engine(engine)
    return result


# --- transformers + PEFT ------------------------------------------------------------------------------


def run_hf(args, config: ModelConfig, adapters: list[Path], workload: Workload) -> tuple[dict, Workload]:
    """transformers + PEFT offline: static batches in arrival order, left-padded, `generate` with one adapter
    name per row (PEFT's mixed-batch inference). Adapter index i is file i % len(adapters), as in the engine.

    Bounded by args.hf_max_s: a stopping criterion ends the batch running at the deadline, and no batch starts
    after it. A request's useful output is min(its length, the steps its batch ran), however long its batch
    ran; the requests returned carry those lengths, so the engine is given exactly the same work."""
    from peft import PeftModel
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        StoppingCriteria,
        StoppingCriteriaList,
    )

    class Deadline(StoppingCriteria):
        def __init__(self, at_s: float):
            self.at_s = at_s

        def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
            stop = time.perf_counter() > self.at_s
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    hf_config = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
        rope_theta=config.rope_theta, tie_word_embeddings=config.tie_word_embeddings, pad_token_id=0,
    )  # fmt: skip
    t0 = time.perf_counter()
    with torch.device(args.device):
        base = LlamaForCausalLM(hf_config).to(dtype).eval()
    base.generation_config.eos_token_id = None
    used = sorted({pick % len(adapters) for *_, pick in workload})
    names = {i: f"f{i}" for i in used}
    model = PeftModel.from_pretrained(base, adapters[used[0]], adapter_name=names[used[0]])
    for i in used[1:]:
        model.load_adapter(adapters[i], adapter_name=names[i])
    model.eval()
    build_s = time.perf_counter() - t0
    log(f"transformers+PEFT built with {len(used)} adapters in {build_s:.1f} s; generating")
    outputs, done, cut = 0, [], 0
    sync(args.device)
    start = time.perf_counter()
    stop = StoppingCriteriaList([Deadline(start + args.hf_max_s)])
    for b in range(0, len(workload), args.hf_batch):
        if time.perf_counter() - start > args.hf_max_s:
            break
        batch = workload[b : b + args.hf_batch]
        width = max(len(prompt) for _, prompt, _, _ in batch)
        ids = torch.tensor([[0] * (width - len(p)) + p for _, p, _, _ in batch], device=args.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for _, p, _, _ in batch], device=args.device)
        new = max(n for _, _, n, _ in batch)
        rows = [names[pick % len(adapters)] for *_, pick in batch]
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new,
                do_sample=False,
                stopping_criteria=stop,
                adapter_names=rows,
            )
        steps = out.shape[1] - width
        cut += steps < new
        for arrival, prompt, n, pick in batch:
            if min(n, steps) > 0:
                done.append((arrival, prompt, min(n, steps), pick))
                outputs += min(n, steps)
    sync(args.device)
    elapsed = time.perf_counter() - start
    del model, base
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    stats = {"elapsed_s": elapsed, "output_tokens": outputs, "output_tokens_per_s": outputs / elapsed,
             "requests": len(done), "batch_size": args.hf_batch, "batches_cut_at_deadline": cut,
             "adapters_loaded": len(used), "build_s": build_s}  # fmt: skip
    log(f"transformers+PEFT: {outputs} tokens in {elapsed:.1f} s")
    return stats, done


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="llama-3.2-1b", choices=[*PRESETS, "tiny"])
    p.add_argument("--layers", type=int, help="override the preset's layer count (quick runs)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--setting", default="slora", choices=sorted(SETTINGS))
    p.add_argument("--adapters", type=int, default=100, help="adapters registered")
    p.add_argument("--distinct-files", type=int, default=16)
    p.add_argument("--register-workers", type=int, default=8, help="threads registering adapters")
    p.add_argument("--slots", type=int, default=64, help="device slot pool size")
    p.add_argument("--cpu-cache-gb", type=float, default=8.0, help="pinned host tier budget")
    p.add_argument("--popularity", default="uniform", choices=["uniform", "zipf"])
    p.add_argument("--zipf-alpha", type=float, default=1.0)
    p.add_argument("--rate", type=float, default=10.0, help="Poisson arrivals per second")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals; the measured window")
    p.add_argument("--requests", type=int, default=100_000, help="cap on the requests arriving in the window")
    p.add_argument(
        "--online",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the Poisson window (--no-online: only the offline transformers+PEFT comparison)",
    )
    p.add_argument("--drain-s", type=float, default=15.0, help="after the window, seconds before aborting the rest")
    p.add_argument("--len-range", type=int, nargs=2, default=(8, 512))
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-batched-tokens", type=int, default=2048)
    p.add_argument("--baselines", default="nolora", help="comma list of nolora, hf (transformers + PEFT); or none")
    p.add_argument("--hf-requests", type=int, default=64, help="first requests offered to transformers+PEFT")
    p.add_argument("--hf-batch", type=int, default=16, help="transformers+PEFT static batch size")
    p.add_argument("--hf-max-s", type=float, default=60.0, help="transformers+PEFT's time budget (then cut short)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-stacks", action="store_true", help="sample the engine thread's stack (StackSampler)")
    p.add_argument("--no-overlap", action="store_true", help="EngineConfig(overlap_decode=False): read every step's "
                   "tokens before the next step is launched")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    baselines = set(args.baselines.split(",")) - {"none", ""}

    config = model_config(args.preset, args.layers)
    log(f"building {args.preset} on {args.device}")
    model = build_model(config, args.device, args.seed)
    rank, targets = SETTINGS[args.setting]
    report = {"mode": "e2e", "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    if args.device == "cuda":
        report["device"] = torch.cuda.get_device_name()
    workload = make_workload(args, args.adapters, config.vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_adapters(config, Path(tmp), min(args.distinct_files, args.adapters), rank, targets, args.seed)
        hf_subset = None
        if "hf" in baselines:
            # Offline: the workload's first requests, all arrived at once, through HF first (time-bounded),
            # then the engine serves exactly the ones HF completed.
            first = [(0.0, prompt, n, pick) for _, prompt, n, pick in workload[: args.hf_requests]]
            report["hf"], hf_subset = run_hf(args, config, files, first)
            save(report, args.json)
        log("engine with LoRA")
        report["lora"] = run_engine(args, model, files, args.adapters, workload, hf_subset)
        save(report, args.json)
        if "nolora" in baselines and args.online:
            log("engine without LoRA")
            report["nolora"] = run_engine(args, model, files, 0, workload, None)
    if "nolora" in report and args.online:
        report["lora_vs_nolora"] = report["lora"]["output_tokens_per_s"] / report["nolora"]["output_tokens_per_s"]
    if "hf" in report:
        report["lora_vs_hf"] = report["lora"]["offline"]["output_tokens_per_s"] / report["hf"]["output_tokens_per_s"]
    print(json.dumps(report, indent=2, default=str))
    save(report, args.json)


if __name__ == "__main__":
    main()
