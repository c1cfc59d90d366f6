"""Where a mixed (prefill + decode) step's time goes, eager or through the piecewise graphs: wall time per step, then the same steps under
cProfile (Python-level: the ops launched, the Triton launchers, the batch building).

    python benchmarks/serving/profile_eager_step.py --preset llama-3.2-1b --setting slora
    python benchmarks/serving/profile_eager_step.py --preset tiny --device cpu --steps 4   # smoke

The engine (random weights) gets `--decodes` running sequences, each on its own adapter with --setting
slora/punica, then before every step `--prefills` new requests of `--prompt` tokens arrive: each step is a
mixed step of `--decodes` decode rows and prefill chunks (up to the engine's 2048-token budget). Engine.warm_up() runs first, and the Triton variants
compiled during the timed steps are counted (they would otherwise explain a slow step).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time
from pathlib import Path

import torch
from bench_serving import PRESETS, SETTINGS, adapter_tensors, build_model, log, model_config, register, sync
from loraledger.runtime.engine import Engine, EngineConfig, GenerationRequest, SamplingParams


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="llama-3.2-1b", choices=[*PRESETS, "tiny"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--setting", default="slora", choices=["nolora", *SETTINGS])
    p.add_argument("--decodes", type=int, default=48)
    p.add_argument("--prompt", type=int, default=256)
    p.add_argument("--prefills", type=int, default=1, help="new requests arriving before each step")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    config = model_config(args.preset)
    model = build_model(config, args.device)
    rank, targets = SETTINGS.get(args.setting, (8, ("q_proj",)))
    engine = Engine(model, None, EngineConfig(
        device=args.device, max_adapters=max(args.decodes + 8, 8), max_lora_rank=rank, lora_targets=targets,
        max_num_seqs=args.decodes + 16, max_num_batched_tokens=2048, max_model_len=4096,
    ))
    ids = []
    if args.setting != "nolora":
        ids = [f"a{i}" for i in range(args.decodes + 8)]
        register(engine, ids, [adapter_tensors(config, rank, targets, seed=i) for i in range(4)], 8)
    warm_s = engine.warm_up() if args.device == "cuda" else 0.0
    log(f"warm-up {warm_s:.1f} s")
    g = torch.Generator().manual_seed(0)

    def request(i: int, n_in: int, n_out: int) -> GenerationRequest:
        prompt = torch.randint(config.vocab_size, (n_in,), generator=g).tolist()
        adapter = ids[i % len(ids)] if ids else None
        return GenerationRequest(prompt, adapter, SamplingParams(max_tokens=n_out, temperature=0, ignore_eos=True))

    for i in range(args.decodes):
        engine.add_request(request(i, 64, 10_000))
    while any(s.num_computed < len(s.token_ids) - 1 for s in engine.scheduler.running) or engine.scheduler.waiting:
        engine.step()

    def mixed_steps(n: int, profiler=None) -> list[float]:
        times = []
        for i in range(n):
            for j in range(args.prefills):
                engine.add_request(request(args.decodes + i * args.prefills + j, args.prompt, 1))
            sync(args.device)
            t0 = time.perf_counter()
            if profiler:
                profiler.enable()
            engine.step()
            sync(args.device)
            if profiler:
                profiler.disable()
            times.append(time.perf_counter() - t0)
        return times

    mixed_steps(3)  # any variant the warm-up missed compiles here, not in the timed steps
    compiled_before = engine.stats()["kernel_compiles_since_warm_up"]
    before = dict(engine.stats()["step_times"])
    times = mixed_steps(args.steps)
    after = engine.stats()["step_times"]
    profiler = cProfile.Profile()
    prof_times = mixed_steps(args.steps, profiler)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.top)
    phases = {k: (after[k] - before[k]) / args.steps * 1e3 for k in ("schedule_s", "forward_s", "sample_s", "output_s")}
    report = {
        "preset": args.preset, "setting": args.setting, "decodes": args.decodes, "prompt": args.prompt,
        "prefills": args.prefills,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "eager_steps": after["eager_steps"] - before["eager_steps"],
        "piecewise_steps": after.get("piecewise_steps", 0) - before.get("piecewise_steps", 0),
        "step_ms_median": statistics.median(times) * 1e3,
        "step_ms_profiled_median": statistics.median(prof_times) * 1e3,
        "phase_ms_per_step": phases,
        "compiles_in_timed_steps": None if compiled_before is None
        else engine.stats()["kernel_compiles_since_warm_up"] - compiled_before,
    }
    print(json.dumps(report, indent=1))
    print(out.getvalue()[:12000])
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    engine.close()


if __name__ == "__main__":
    main()
