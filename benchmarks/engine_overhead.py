"""The engine's host overhead per step: everything a step does besides the model forward, on CPU with a tiny model.

The model is tiny (2 layers, hidden 64, a 131-token byte vocabulary), so what a step costs beyond its forward
is Python: scheduling, building the batch, sampling, appending tokens, detokenising, stop strings, events.
On a GPU that time is paid on the host while the device waits, so it bounds the step time from below.

    python benchmarks/engine_overhead.py                      # 64 and 256 sequences, base and LoRA, sync and async
    python benchmarks/engine_overhead.py --seqs 64 --modes sync --profile 25   # plus cProfile's top 25 functions

The requests mix greedy rows, sampled rows (temperature, top-k, top-p, half of them seeded) and rows with stop
strings; with LoRA three quarters of them use one of four adapters. Per run:
- decode steps (every scheduled sequence one token, the batch at least 90% full): the mean host time of a step,
  of its model forward and of the rest ("overhead"), and the tensor → host reads per step (`.item()`,
  `.tolist()`, `.cpu()`, `.numpy()`, `bool()/int()/float()` of a tensor, counted by wrapping those methods);
- all steps: the overhead split by the engine's own phases (`stats()["step_times"]`, per step): schedule,
  build (the batch's metadata: the forward phase less the model), sample, output (tokens, detokenising, stop
  strings, events), and dispatch (events to the streams, async only, outside step());
- wall time per step: in mode "async" it includes the asyncio consumers' share of the GIL.
Mode "sync" drives `step()` on the calling thread; "async" runs the background loop and streams every
request through `generate()` on an asyncio loop, as the server does.

On CPU the sampler's tensor ops (softmax, sort, noise) run on the host and count as overhead; on a GPU they
are launches. The LoRA rows' extra host reads come from the kernels' CPU reference path (kernels/reference.py),
not from the engine: the GPU kernels read no device value on the host.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import random
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from loraledger.runtime.engine import Engine, GenerationRequest, SamplingParams
from loraledger.runtime.engine.testing import make_peft_adapter, make_tiny_model

_HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__")


def build(root: Path) -> tuple[Path, dict[str, Path]]:
    base = make_tiny_model(root / "base")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    adapters = {
        f"a{i}": make_peft_adapter(base, root / f"a{i}", r=8, targets=targets, seed=i, std=0.05) for i in range(4)
    }
    return base, adapters


def make_requests(n: int, lora: bool, max_tokens: int, seed: int) -> list[GenerationRequest]:
    """A mix: a third greedy, a third sampled (temperature, top-p, top-k, some seeded), a third with stop strings
    that rarely match (so they are checked every step); with `lora`, three quarters on one of four adapters."""
    rng = random.Random(seed)
    words = ["the", "LoRA", "adapter", "serves", "tokens", "quickly", "on", "one", "GPU", "and", "many", "more"]
    out = []
    for i in range(n):
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(3, 8)))
        kind = i % 3
        if kind == 0:
            params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        elif kind == 1:
            params = SamplingParams(
                max_tokens=max_tokens,
                temperature=0.8,
                top_p=0.9,
                top_k=20,
                seed=i if i % 2 else None,
                ignore_eos=True,
                logprobs=True,
            )
        else:
            params = SamplingParams(max_tokens=max_tokens, temperature=0.7, stop=("\x00\x01", "qqqq"), ignore_eos=True)
        adapter = f"a{i % 4}" if lora and i % 4 else None
        out.append(GenerationRequest(prompt, adapter_id=adapter, params=params))
    return out


class StepTimer:
    """Wraps engine.step and engine.model.forward with perf_counter, and counts tensor-to-host reads in steps."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.rows: list[tuple[float, float, int, bool, int]] = []  # (step s, forward s, host reads, decode-only, rows)
        self._forward_s = 0.0
        self._reads = 0
        self._in_step = False
        model, step, schedule = engine.model, engine.step, engine.scheduler.schedule
        inner_forward = model.forward
        self._decode_only, self._batch = False, 0

        def timed_schedule():
            out = schedule()
            self._decode_only = bool(out.scheduled) and all(n == 1 for _, n in out.scheduled)
            self._batch = len(out.scheduled)
            return out

        def forward(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner_forward(*args, **kwargs)
            finally:
                self._forward_s += time.perf_counter() - t0

        def timed_step():
            self._forward_s, self._reads, self._in_step, self._batch = 0.0, 0, True, 0
            t0 = time.perf_counter()
            try:
                events = step()
            finally:
                self._in_step = False
            elapsed = time.perf_counter() - t0
            self.rows.append((elapsed, self._forward_s, self._reads, self._decode_only, self._batch))
            return events

        engine.scheduler.schedule = timed_schedule
        model.forward = forward
        engine.step = timed_step

    @contextmanager
    def counting_host_reads(self):
        originals = {name: getattr(torch.Tensor, name) for name in _HOST_READS}

        def wrap(name, fn):
            def counted(t, *args, **kwargs):
                if self._in_step:
                    self._reads += 1
                return fn(t, *args, **kwargs)

            return counted

        for name, fn in originals.items():
            setattr(torch.Tensor, name, wrap(name, fn))
        try:
            yield
        finally:
            for name, fn in originals.items():
                setattr(torch.Tensor, name, fn)

    def summary(self, full_batch: int) -> dict:
        def stats(rows):
            if not rows:
                return None
            n = len(rows)
            step_s = sum(r[0] for r in rows) / n
            fwd_s = sum(r[1] for r in rows) / n
            return {
                "steps": n,
                "step_ms": 1e3 * step_s,
                "forward_ms": 1e3 * fwd_s,
                "overhead_ms": 1e3 * (step_s - fwd_s),
                "host_reads_per_step": sum(r[2] for r in rows) / n,
            }

        ran = [r for r in self.rows if r[1] > 0]
        decode = [r for r in ran if r[3] and r[4] >= 0.9 * full_batch]
        return {"decode_full_batch": stats(decode), "all_steps": stats(ran)}


def run(base: Path, adapters: dict[str, Path], *, seqs: int, lora: bool, mode: str, max_tokens: int, profile: int):
    engine = Engine.from_pretrained(
        base,
        max_num_seqs=seqs,
        max_num_batched_tokens=max(512, 16 * seqs),
        max_adapters=len(adapters),
        max_lora_rank=8,
        block_size=16,
        max_model_len=512,
    )
    for name, path in adapters.items():
        engine.add_adapter(name, path)
    requests = make_requests(seqs, lora, max_tokens, seed=seqs)
    timer = StepTimer(engine)
    profiler = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    with timer.counting_host_reads():
        if profiler:
            profiler.enable()
        if mode == "sync":
            results = engine.generate_batch(requests)
            tokens = sum(len(r.token_ids) for r in results)
        else:
            tokens = asyncio.run(_stream_all(engine, requests))
        if profiler:
            profiler.disable()
    wall_s = time.perf_counter() - t0
    phases = engine.stats().get("step_times")  # None on an engine without the split (older commits)
    engine.close()
    out = {"seqs": seqs, "lora": lora, "mode": mode, "tokens": tokens, "tok_per_s": tokens / wall_s}
    out.update(timer.summary(full_batch=seqs))
    out["wall_ms_per_step"] = 1e3 * wall_s / out["all_steps"]["steps"]  # async: with the consumers' GIL share
    if phases is None:
        return out
    steps = phases["graphed_steps"] + phases.get("piecewise_steps", 0) + phases["eager_steps"]
    model_ms = out["all_steps"]["forward_ms"]
    # The engine's own split (stats()["step_times"]), per step over all steps; "build" is its forward phase
    # less the model's forward: the batch's metadata on the host and its copy.
    out["phases_ms"] = {
        "schedule": 1e3 * phases["schedule_s"] / steps,
        "build": 1e3 * phases["forward_s"] / steps - model_ms,
        "sample": 1e3 * phases["sample_s"] / steps,
        "output": 1e3 * phases["output_s"] / steps,
        "dispatch": 1e3 * phases["dispatch_s"] / steps,
    }
    if profiler:
        print(f"--- cProfile, {seqs} seqs, lora={lora}, {mode} (tottime) ---")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(profile)
    return out


async def _stream_all(engine: Engine, requests: list[GenerationRequest]) -> int:
    engine.start()
    try:

        async def one(request):
            count = 0
            async for ev in engine.generate(request):
                count += len(ev.token_ids)
            return count

        return sum(await asyncio.gather(*(one(r) for r in requests)))
    finally:
        engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seqs", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--modes", nargs="+", default=["sync", "async"], choices=["sync", "async"])
    parser.add_argument("--lora", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--profile", type=int, default=0, help="print cProfile's top N functions per run")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base, adapters = build(Path(tmp))
        # Warm-up: first calls of every path (imports, allocator) are not the steady state.
        run(base, adapters, seqs=8, lora=True, mode="sync", max_tokens=4, profile=0)
        for seqs in args.seqs:
            for lora in args.lora:
                for mode in args.modes:
                    rows.append(
                        run(
                            base,
                            adapters,
                            seqs=seqs,
                            lora=lora == "on",
                            mode=mode,
                            max_tokens=args.max_tokens,
                            profile=args.profile,
                        )
                    )
    print("seqs  lora  mode  | decode steps (>= 90% full): n  step ms  fwd ms  overhead ms  reads | all steps:"
          " overhead ms = schedule + build + sample + output (+ dispatch) | wall per step")  # fmt: skip
    for r in rows:
        d, a, ph = r["decode_full_batch"], r["all_steps"], r.get("phases_ms")
        dec = (
            f"{d['steps']:4d} {d['step_ms']:8.2f} {d['forward_ms']:7.2f} {d['overhead_ms']:12.2f} "
            f"{d['host_reads_per_step']:6.1f}"
            if d
            else "   (none)" + " " * 37
        )
        split = "(no split)"
        if ph is not None:
            split = " + ".join(f"{ph[k]:.2f}" for k in ("schedule", "build", "sample", "output"))
            split += f" (+ {ph['dispatch']:.2f})"
        print(
            f"{r['seqs']:4d}  {'on' if r['lora'] else 'off':4s}  {r['mode']:5s} | {dec} | "
            f"{a['overhead_ms']:.2f} = {split} | wall {r['wall_ms_per_step']:.2f} ms/step"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
