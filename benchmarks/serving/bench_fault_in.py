"""Adapter fault-in from the pinned-CPU tier: latency to resident, copy bandwidth next to a plain copy's, and
how much a concurrent decode-sized GPU workload slows down while adapters load.

Random weights at real dimensions (rank 16, all seven projections of Llama-3-8B: ~84 MB a slot), no files:
the adapters are registered as in-memory PEFT state dicts, so they live in the host tier and every load
below is a pinned-CPU hit (more adapters than slots, requested round-robin: each request is a miss).

    python benchmarks/serving/bench_fault_in.py --json out.json                 # CUDA, llama-3-8b
    python benchmarks/serving/bench_fault_in.py --device cpu --preset tiny      # smoke

Measured:
    fault-in      request (prefetch) → resident, spinning on poll(), the GPU otherwise idle
    copy          the slot image's host→device copy alone (CUDA events on the cache's load stream)
    plain copy    a bare pinned → device copy_ of the same bytes: the roofline of the above
    per-proj      the old write, one strided copy per projection and A/B, for contrast
    concurrent    a decode step's linear layers (32 layers x qkv, o, gate_up, down, bf16, --batch tokens) on
                  the default stream, synchronised per iteration like the engine's step; per-iteration
                  time alone and with one adapter load started just before each iteration (as the
                  engine's schedule() does before its forward), fault-in and copy time under load
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from loraledger.runtime.adapters import (
    AdapterCache,
    AdapterSpec,
    SlotPool,
    adapter_from_tensors,
)
from loraledger.runtime.engine.model import LORA_PROJECTIONS, PRESETS, ModelConfig
from safetensors.torch import save_file

TINY = ModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16)
_MLP = ("gate_proj", "up_proj", "down_proj")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def peft_tensors(mc: ModelConfig, rank: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A random PEFT state dict of rank `rank` on all seven projections (generated on the device: faster)."""
    g = torch.Generator(device).manual_seed(0)
    tensors = {}
    for layer in range(mc.num_layers):
        for name, (k, n) in mc.projection_shapes().items():
            prefix = f"base_model.model.model.layers.{layer}.{'mlp' if name in _MLP else 'self_attn'}.{name}"
            for half, shape in (("A", (rank, k)), ("B", (n, rank))):
                t = torch.randn(shape, generator=g, device=device, dtype=torch.float32) * 0.01
                tensors[f"{prefix}.lora_{half}.weight"] = t.to(dtype).cpu()
    return tensors


class Timer:
    """Host wall time on CPU; CUDA events on `stream` (default: the current stream) on CUDA."""

    def __init__(self, device: torch.device, stream: torch.cuda.Stream | None = None):
        self.cuda = device.type == "cuda"
        self.stream = stream

    def __enter__(self):
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record(self.stream)
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record(self.stream)
        else:
            self.t1 = time.perf_counter()

    @property
    def seconds(self) -> float:
        if self.cuda:
            self.end.synchronize()
            return self.start.elapsed_time(self.end) / 1e3
        return self.t1 - self.t0


def fault_in(cache: AdapterCache, adapter_id: str, between=None) -> float:
    """Seconds from the request to resident; `between()` runs right after the request.

    Waits with cache.wait() (a copy's event, or the disk read's future) rather than spinning on poll(),
    which would hold the GIL against the loader thread.
    """
    t0 = time.perf_counter()
    cache.prefetch([adapter_id])
    if between is not None:
        between()
    while True:
        cache.poll()
        if cache.is_resident(adapter_id):
            break
        cache.wait(timeout_s=0.001)
    seconds = time.perf_counter() - t0
    cache.prefetch([])
    return seconds


class DecodeLinears:
    """A decode step's projections at the model's sizes (one layer's weights reused for every layer)."""

    def __init__(self, mc: ModelConfig, batch: int, device: torch.device, dtype: torch.dtype):
        h, i = mc.hidden_size, mc.intermediate_size
        self.num_layers = mc.num_layers
        self.x = torch.randn(batch, h, device=device, dtype=dtype)
        self.w_qkv = torch.randn(mc.q_size + 2 * mc.kv_size, h, device=device, dtype=dtype) * 0.01
        self.w_o = torch.randn(h, mc.q_size, device=device, dtype=dtype) * 0.01
        self.w_gate_up = torch.randn(2 * i, h, device=device, dtype=dtype) * 0.01
        self.w_down = torch.randn(h, i, device=device, dtype=dtype) * 0.01
        self.weight_bytes = sum(w.nbytes for w in (self.w_qkv, self.w_o, self.w_gate_up, self.w_down))

    def step(self) -> None:
        x = self.x
        for _ in range(self.num_layers):
            F.linear(x, self.w_qkv)
            x = F.linear(x, self.w_o)
            gate_up = F.linear(x, self.w_gate_up)
            x = F.linear(gate_up[:, : self.w_down.shape[1]], self.w_down)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="llama-3-8b", choices=[*PRESETS, "tiny"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--adapters", type=int, default=16)
    p.add_argument("--loads", type=int, default=40, help="measured fault-ins (after one warm-up pass)")
    p.add_argument("--iterations", type=int, default=30, help="workload iterations, alone and with loads")
    p.add_argument("--batch", type=int, default=64, help="tokens per decode step of the concurrent workload")
    p.add_argument("--disk-loads", type=int, default=6, help="measured loads from disk (host tier off)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    mc = TINY if args.preset == "tiny" else PRESETS[args.preset]
    shapes = mc.projection_shapes()
    pool = SlotPool(
        num_slots=args.slots,
        num_layers=mc.num_layers,
        projections=LORA_PROJECTIONS,
        projection_shapes=shapes,
        max_rank=args.rank,
        dtype=dtype,
        device=device,
    )
    spec = AdapterSpec(mc.num_layers, shapes, args.rank, max_bytes=1 << 40)
    cache = AdapterCache(pool, spec, cpu_budget_bytes=1 << 40, device=device)
    tensors = peft_tensors(mc, args.rank, device, dtype)
    ids = [f"a{i}" for i in range(args.adapters)]
    t0 = time.perf_counter()
    for i, adapter_id in enumerate(ids):  # one weight set, a different alpha each: distinct images
        cache.add(adapter_id, config={"r": args.rank, "lora_alpha": args.rank + i}, tensors=tensors)
    register_s = (time.perf_counter() - t0) / len(ids)
    packed = pool.pack(adapter_from_tensors({"r": args.rank}, tensors, spec), pin_memory=cuda)
    folder = Path(tempfile.mkdtemp(prefix="fault_in_")) / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": args.rank}))
    save_file(tensors, folder / "adapter_model.safetensors")
    del tensors
    slot_mb = pool.slot_bytes / 1e6
    print(f"{args.preset} rank {args.rank}, all 7 projections: {slot_mb:.1f} MB a slot, {args.slots} slots "
          f"({pool.nbytes / 2**30:.2f} GiB), {args.adapters} adapters in the host tier "
          f"({register_s * 1e3:.0f} ms each to validate and pack)")  # fmt: skip

    order = [ids[i % len(ids)] for i in range(len(ids) + args.loads)]
    for adapter_id in order[: len(ids)]:  # warm-up: every adapter once (and the load stream, the events)
        fault_in(cache, adapter_id)
    copies_before = len(cache.stats.copy_s)
    latencies = [fault_in(cache, adapter_id) for adapter_id in order[len(ids) :]]
    copies = list(cache.stats.copy_s)[copies_before:]

    # The roofline: a bare copy of the same bytes; and the old write, one strided copy per projection and half.
    dst = torch.empty_like(pool.slots[0])
    plain, per_proj = [], []
    for _ in range(max(5, args.loads // 2)):
        with Timer(device) as t:
            dst.copy_(packed.flat, non_blocking=True)
        plain.append(t.seconds)
        with Timer(device) as t:
            for name, (a, b) in pool.image_views(packed.flat).items():
                pool.lora_a[name][:, 0].copy_(a, non_blocking=True)
                pool.lora_b[name][:, 0].copy_(b, non_blocking=True)
        per_proj.append(t.seconds)

    result = {
        "preset": args.preset,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "rank": args.rank,
        "slots": args.slots,
        "adapters": args.adapters,
        "slot_bytes": pool.slot_bytes,
        "register_ms": register_s * 1e3,
        "fault_in_p50_ms": pct(latencies, 0.5) * 1e3,
        "fault_in_p99_ms": pct(latencies, 0.99) * 1e3,
        "copy_p50_ms": pct(copies, 0.5) * 1e3,
        "copy_gb_per_s": pool.slot_bytes / pct(copies, 0.5) / 1e9,
        "plain_copy_p50_ms": pct(plain, 0.5) * 1e3,
        "plain_copy_gb_per_s": pool.slot_bytes / pct(plain, 0.5) / 1e9,
        "per_projection_write_p50_ms": pct(per_proj, 0.5) * 1e3,
    }

    if cuda:
        work = DecodeLinears(mc, args.batch, device, dtype)
        work.step()
        alone = []
        for _ in range(args.iterations):
            with Timer(device) as t:
                work.step()
            alone.append(t.seconds)
        loaded, under_load, launch = [], [], []
        copies_before = len(cache.stats.copy_s)
        for i in range(args.iterations):
            timer = Timer(device)

            def run_step(timer=timer) -> None:
                t0 = time.perf_counter()
                with timer:
                    work.step()
                launch.append(time.perf_counter() - t0)

            under_load.append(fault_in(cache, order[i % len(order)], between=run_step))
            loaded.append(timer.seconds)
        copies_under_load = list(cache.stats.copy_s)[copies_before:]
        base_ms, with_ms = statistics.median(alone) * 1e3, statistics.median(loaded) * 1e3
        result |= {
            "workload_batch": args.batch,
            "workload_weight_gb_per_s": work.weight_bytes * mc.num_layers / statistics.median(alone) / 1e9,
            "workload_iter_p50_ms": base_ms,
            "workload_iter_with_loads_p50_ms": with_ms,
            "workload_slowdown_pct": (with_ms / base_ms - 1) * 100,
            "fault_in_under_load_p50_ms": pct(under_load, 0.5) * 1e3,
            "fault_in_under_load_p99_ms": pct(under_load, 0.99) * 1e3,
            "workload_launch_p50_ms": pct(launch, 0.5) * 1e3,  # host time to enqueue a step: no poll meanwhile
            "copy_under_load_p50_ms": pct(copies_under_load, 0.5) * 1e3,
            "copy_under_load_p99_ms": pct(copies_under_load, 0.99) * 1e3,
        }
    result["cache_stats"] = cache.stats_snapshot()
    cache.close()

    # The disk tier: one folder (in the page cache after the first read) under more ids than slots, no host
    # tier, so every load reads, validates and packs it again before the copy.
    disk = AdapterCache(pool, spec, cpu_budget_bytes=0, device=device)
    disk_ids = [f"d{i}" for i in range(args.slots + 1)]
    for adapter_id in disk_ids:
        disk.add(adapter_id, folder)
    for i in range(len(disk_ids) + args.disk_loads):
        fault_in(disk, disk_ids[i % len(disk_ids)])
    stats = disk.stats_snapshot()
    disk.close()
    result |= {
        "disk_load_p50_ms": stats["disk_load_latency_p50_s"] * 1e3,
        "disk_read_validate_pack_p50_ms": stats["disk_read_p50_s"] * 1e3,
    }

    print(f"{'measure':34} {'value':>12}")
    for key, value in result.items():
        if isinstance(value, float):
            print(f"{key:34} {value:12.3f}")
    if not cuda:
        print("(no concurrent workload on CPU)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
