"""The engine's decode step alone, at batch B and a fixed context, against its roofline: no LoRA, S-LoRA, Punica.

    python benchmarks/serving/bench_decode_step.py --preset llama-3.2-1b --batches 64 128 256 --context 512 \
        --json decode_step.json
    python benchmarks/serving/bench_decode_step.py --preset tiny --device cpu --batches 4 8 --context 32   # smoke

For each setting the engine (random weights at the preset's dimensions) is filled with B running sequences,
each of `--context` prompt tokens and, with LoRA, each with its own adapter (B distinct adapters resident, as
in Punica's "distinct within a batch"); once all are decoding, `--steps` engine.step() calls are timed on the
host (wall time: scheduling, batch building, the graph replay, sampling and the step's one synchronisation),
then the captured CUDA graph of the step's bucket is replayed alone `--replays` times between CUDA events:
the step's GPU time. host_ms = step wall − GPU time is what the host adds on top of the device.

Settings: nolora (the S-LoRA engine's base-model path, no adapter in the batch), slora (rank 8 on q, k, v, o),
punica (rank 16 on all seven projections). The roofline of a step at batch B and context c:
    bytes = base weights (the embedding table only where it doubles as lm_head) + B distinct adapters' A and B
            + KV read (B · c · 2 · layers · kv_heads · head_dim · 2 bytes)
    time  = max(bytes / copy bandwidth, FLOPs / matmul rate)
with the copy bandwidth of a 1 GiB device-to-device copy (read + write) and the rate of an 8192³ bf16 matmul,
both measured in the same run. `gpu_vs_roofline` is the step's GPU time over that floor (issue 5's goals:
≤ 1.5 for no LoRA at B ≥ 64, ≤ 1.3 for Punica's setting); `wall_vs_roofline` adds the host's share.

With --profile, a few more replays run under torch.profiler and the step's GPU time is split by kernel
(`kernel_breakdown`: microseconds per step for LoRA, attention, matmuls, the fused elementwise kernels and the
rest, the top kernels, and the gaps: graph time not covered by any kernel).

The GPU time replays the engine's own captured graph (Engine._graphs, the DecodeGraphs runner): the only
private attribute this harness reads. Where it cannot be found (the runner's layout changed, or CPU), the
GPU time is left out and only the wall time is reported.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import time
from pathlib import Path

import torch
from bench_serving import (
    PRESETS,
    SETTINGS,
    adapter_tensors,
    build_model,
    copy_bandwidth,
    free_engine,
    gpu_memory,
    log,
    matmul_rate,
    model_config,
    register,
    save,
)
from loraledger.runtime.engine import (
    Engine,
    EngineConfig,
    GenerationRequest,
    ModelConfig,
    SamplingParams,
)


def step_floor(config: ModelConfig, *, batch: int, context: float, rank: int, targets, distinct: int,
               copy_bps: float, flops_per_s: float, dtype_bytes: int) -> dict:  # fmt: skip
    """Bytes, FLOPs and the roofline time of one decode step (see the module docstring)."""
    c = config
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    per_layer = c.hidden_size * (q + 2 * kv) + q * c.hidden_size + 3 * c.hidden_size * c.intermediate_size
    linear_params = c.num_layers * per_layer + c.vocab_size * c.hidden_size  # + lm_head
    norms = (2 * c.num_layers + 1) * c.hidden_size
    weight_bytes = (linear_params + norms) * dtype_bytes
    shapes = c.projection_shapes()
    adapter_params = c.num_layers * rank * sum(sum(shapes[t]) for t in targets) if targets else 0
    adapter_bytes = distinct * adapter_params * dtype_bytes
    kv_bytes = batch * context * 2 * c.num_layers * kv * dtype_bytes
    flops = 2 * batch * linear_params + 2 * batch * adapter_params + 4 * batch * context * c.num_layers * q
    total = weight_bytes + adapter_bytes + kv_bytes
    return {
        "weight_bytes": weight_bytes,
        "adapter_bytes": adapter_bytes,
        "kv_bytes": int(kv_bytes),
        "flops": int(flops),
        "memory_floor_ms": 1e3 * total / copy_bps,
        "flop_floor_ms": 1e3 * flops / flops_per_s,
        "roofline_ms": 1e3 * max(total / copy_bps, flops / flops_per_s),
    }


def _graph(engine: Engine, bucket: int):
    """The engine's captured decode graph that its last step replayed, if of this bucket, or None (see the
    module docstring)."""
    runner = getattr(engine, "_graphs", None)
    graphs = getattr(runner, "_graphs", None)
    key = getattr(runner, "last_key", None)
    if not isinstance(graphs, dict) or key is None or key[0] != bucket:
        return None
    entry = graphs.get(key)
    return entry[0] if isinstance(entry, tuple) and isinstance(entry[0], torch.cuda.CUDAGraph) else None


def replay_ms(graph, replays: int) -> float:
    """Median GPU time of one replay, each between its own pair of CUDA events."""
    for _ in range(3):
        graph.replay()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(replays)]
    for start, end in events:
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


_KERNEL_KINDS = (  # (kind, pattern of the kernel's name), first match wins
    ("lora", r"_sgmv"),
    ("attention", r"paged_attention|flash|fmha|attention"),
    ("matmul", r"gemm|gemv|cutlass|xmma|nvjet|cublas|splitk"),
    ("fused_elementwise", r"rms|silu|rotary|_fused"),
)


def kernel_breakdown(graph, replays: int, step_ms: float) -> dict:
    """The kernels of `replays` graph replays under torch.profiler: microseconds per step by kind, the top 12
    kernels, and the gaps (step GPU time minus the kernels' time; negative where kernels overlap)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    by_kind, by_name = collections.Counter(), collections.Counter()
    launches = 0
    for avg in prof.key_averages():
        us = getattr(avg, "device_time_total", 0.0) or getattr(avg, "cuda_time_total", 0.0)
        if us <= 0 or avg.key.startswith(("Memcpy", "Memset")) or "cudaGraph" in avg.key:
            continue
        kind = next((k for k, pattern in _KERNEL_KINDS if re.search(pattern, avg.key, re.I)), "other")
        by_kind[kind] += us / replays
        by_name[avg.key[:90]] += us / replays
        launches += avg.count / replays
    total = sum(by_kind.values())
    return {
        "kernels_per_step": launches,
        "kernel_us": total,
        "gap_us": 1e3 * step_ms - total,
        "by_kind_us": dict(by_kind.most_common()),
        "top_us": dict(by_name.most_common(12)),
    }


def measure(engine: Engine, args, *, batch: int, adapter_ids: list[str] | None, vocab: int) -> dict:
    """Fills the engine with `batch` decoding sequences, times steps and the graph, then aborts them."""
    g = torch.Generator().manual_seed(batch)
    # Sequences prefilled first decode while the rest prefill: room for that, the warm-up and the timed steps.
    params = SamplingParams(max_tokens=engine.max_model_len - args.context, temperature=0, ignore_eos=True)
    rids = []
    for i in range(batch):
        prompt = torch.randint(vocab, (args.context,), generator=g).tolist()
        adapter = adapter_ids[i] if adapter_ids else None
        rids.append(engine.add_request(GenerationRequest(prompt, adapter, params)))
    pending, t0, fill_steps = set(rids), time.perf_counter(), 0
    emitted = dict.fromkeys(rids, 0)
    while pending:  # prefill (chunked) until every sequence has its first token
        for ev in engine.step():
            emitted[ev.request_id] += len(ev.token_ids)
            if ev.token_ids:
                pending.discard(ev.request_id)
        fill_steps += 1
        if time.perf_counter() - t0 > args.fill_timeout_s:
            raise RuntimeError(f"{len(pending)} of {batch} sequences still prefilling after {args.fill_timeout_s} s")
    fill_s = time.perf_counter() - t0
    for _ in range(args.warmup):  # the first decode step of a bucket captures its graph
        engine.step()
    wall = []
    phases_before = engine.stats().get("step_times") or {}
    for _ in range(args.steps):
        t = time.perf_counter()
        events = engine.step()  # ends with the sampled tokens' copy to the host: synchronised
        wall.append(time.perf_counter() - t)
        if sum(len(ev.token_ids) for ev in events) != batch:
            raise RuntimeError(f"a timed step decoded {sum(len(ev.token_ids) for ev in events)} of {batch} rows")
    result = {
        "batch": batch,
        # Attended context of a timed step: prompt + tokens so far (the last one is this step's input).
        "context_mean": args.context + sum(emitted.values()) / batch + args.warmup + (args.steps - 1) / 2,
        "fill_s": fill_s,
        "fill_steps": fill_steps,
        "step_wall_ms_p50": 1e3 * statistics.median(wall),
        "step_wall_ms_p90": 1e3 * sorted(wall)[int(0.9 * (len(wall) - 1))],
    }
    phases = engine.stats().get("step_times") or {}
    for key, total in phases.items():  # the engine's own host split of a step, per timed step
        if key.endswith("_s") and key in phases_before:
            result[f"host_{key[:-2]}_ms"] = 1e3 * (total - phases_before[key]) / args.steps
    graph = _graph(engine, batch) if engine.device.type == "cuda" else None
    if graph is not None:
        result["gpu_step_ms"] = replay_ms(graph, args.replays)
        result["host_ms"] = result["step_wall_ms_p50"] - result["gpu_step_ms"]
        if args.profile:
            try:
                result["kernel_breakdown"] = kernel_breakdown(graph, 5, result["gpu_step_ms"])
            except Exception as exc:  # noqa: BLE001 - the profiler's failure is reported, the row kept
                result["kernel_breakdown"] = {"error": f"{type(exc).__name__}: {exc}"}
    elif engine.device.type == "cuda":
        log(f"no captured decode graph found for bucket {batch}: GPU time left out (Engine._graphs changed?)")
    for rid in rids:
        engine.abort(rid)
    engine.step()  # takes the aborts in
    if engine.has_unfinished():
        raise RuntimeError("sequences left after aborting the batch")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="llama-3.2-1b", choices=[*PRESETS, "tiny"])
    p.add_argument("--layers", type=int, help="override the preset's layer count")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--settings", nargs="+", default=["nolora", "slora", "punica"], choices=["nolora", *SETTINGS])
    p.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--context", type=int, default=512, help="prompt tokens per sequence")
    p.add_argument("--steps", type=int, default=30, help="timed engine steps per batch size")
    p.add_argument("--warmup", type=int, default=3, help="untimed decode steps first (graph capture)")
    p.add_argument("--replays", type=int, default=50, help="graph replays timed per batch size")
    p.add_argument("--prefill-tokens", type=int, default=8192, help="max_num_batched_tokens (prefill chunk)")
    p.add_argument("--distinct-weights", type=int, default=4, help="distinct random weight sets behind the adapters")
    p.add_argument("--register-workers", type=int, default=8)
    p.add_argument("--fill-timeout-s", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="split each step's GPU time by kernel (torch.profiler)")
    p.add_argument("--no-gather", action="store_true", help="EngineConfig(lora_gather_kernels=False): the tile "
                   "LoRA kernels in every step (side-by-side timings)")
    p.add_argument("--no-overlap", action="store_true", help="EngineConfig(overlap_decode=False): every step's "
                   "tokens read before the next step is launched")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    t_start = time.perf_counter()
    config = model_config(args.preset, args.layers)
    model = build_model(config, args.device, args.seed)
    dtype_bytes = next(model.parameters()).element_size()
    copy_bps = copy_bandwidth(args.device, (1 << 30) if args.device == "cuda" else (1 << 26))
    flops_per_s = matmul_rate(args.device, 8192 if args.device == "cuda" else 512)
    report = {
        "mode": "decode_step",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "copy_bandwidth_GBps": copy_bps / 1e9,
        "matmul_TFLOPs": flops_per_s / 1e12,
        "env": {k: v for k, v in os.environ.items() if k.startswith("LORALEDGER_")},  # kernel switches (A/B runs)
        "rows": [],
    }
    if args.device == "cuda":
        report["device"] = torch.cuda.get_device_name()
    batches = sorted(args.batches)
    fill_steps = -(-max(args.batches) * args.context // args.prefill_tokens) + 1  # chunked prefill's steps
    max_len = args.context + fill_steps + args.warmup + args.steps + 16
    blocks_per_seq = -(-max_len // 16)
    # One engine per adapter layout: S-LoRA's serves both its own rows and the no-LoRA rows (base requests).
    engines = []
    if "nolora" in args.settings or "slora" in args.settings:
        engines.append(("slora", [s for s in ("nolora", "slora") if s in args.settings]))
    if "punica" in args.settings:
        engines.append(("punica", ["punica"]))
    for layout, settings in engines:
        rank, targets = SETTINGS[layout]
        with_lora = any(s != "nolora" for s in settings)
        cfg = EngineConfig(
            device=args.device,
            max_model_len=max_len,
            block_size=16,
            num_kv_blocks=batches[-1] * blocks_per_seq,
            max_num_seqs=batches[-1],
            max_num_batched_tokens=args.prefill_tokens,
            max_adapters=batches[-1] if with_lora else 1,
            max_lora_rank=rank,
            lora_targets=targets,
            cpu_adapter_cache_bytes=1 << 40,  # in-memory adapters stay on the host tier anyway
            **({"overlap_decode": False} if args.no_overlap else {}),  # (an engine before it has no such field)
            **({"lora_gather_kernels": False} if args.no_gather else {}),
        )
        engine = Engine(model, None, cfg)
        ids = [f"{layout}{i}" for i in range(batches[-1])] if with_lora else []
        register_s = 0.0
        if ids:
            sources = [adapter_tensors(config, rank, targets, args.seed + i) for i in range(args.distinct_weights)]
            register_s = register(engine, ids, sources, args.register_workers)
        for setting in settings:
            for batch in batches:
                row = {"setting": setting, "register_s": register_s}
                row.update(measure(engine, args, batch=batch, adapter_ids=ids if setting != "nolora" else None,
                                   vocab=config.vocab_size))  # fmt: skip
                floor = step_floor(
                    config, batch=batch, context=row["context_mean"], rank=rank,
                    targets=targets if setting != "nolora" else (), distinct=batch if setting != "nolora" else 0,
                    copy_bps=copy_bps, flops_per_s=flops_per_s, dtype_bytes=dtype_bytes,
                )  # fmt: skip
                row.update(floor)
                row["wall_vs_roofline"] = row["step_wall_ms_p50"] / floor["roofline_ms"]
                if "gpu_step_ms" in row:
                    row["gpu_vs_roofline"] = row["gpu_step_ms"] / floor["roofline_ms"]
                    total = floor["weight_bytes"] + floor["adapter_bytes"] + floor["kv_bytes"]
                    row["achieved_GBps"] = total / row["gpu_step_ms"] / 1e6
                row["output_tokens_per_s"] = batch / (row["step_wall_ms_p50"] / 1e3)
                report["rows"].append(row)
                print(_line(row), flush=True)
                save(report, args.json)
        report.setdefault("memory", {})[layout] = gpu_memory(args.device)
        free_engine(engine)
    report["total_s"] = time.perf_counter() - t_start
    print(json.dumps(report, indent=2, default=str))
    save(report, args.json)


def _line(row: dict) -> str:
    gpu = row.get("gpu_step_ms")
    gpu_part = (
        "" if gpu is None else f"gpu {gpu:.3f} ms ({row['gpu_vs_roofline']:.2f}x)  host {row['host_ms']:.3f} ms  "
    )
    kinds = row.get("kernel_breakdown", {}).get("by_kind_us")
    kind_part = "" if not kinds else "  kernels us: " + ", ".join(f"{k} {v:.0f}" for k, v in kinds.items())
    return (f"{row['setting']:>7} B={row['batch']:<4} wall {row['step_wall_ms_p50']:.3f} ms "
            f"({row['wall_vs_roofline']:.2f}x)  {gpu_part}roofline {row['roofline_ms']:.3f} ms "
            f"(mem {row['memory_floor_ms']:.3f}, flop {row['flop_floor_ms']:.3f}){kind_part}")  # fmt: skip


if __name__ == "__main__":
    main()
