"""One-screen summary of the serving benchmarks' JSON files (bench_serving, bench_decode_step, bench_adapter_scale).

python benchmarks/serving/summarize.py bench_out/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(x, scale=1.0, digits=1) -> str:
    return "-" if x is None else f"{x * scale:,.{digits}f}"


def summarize(path: Path) -> list[str]:
    r = json.loads(path.read_text())
    mode = r.get("mode")
    lines = [f"## {path.name} ({mode}, {r.get('device', 'cpu')})"]
    if mode == "decode_step":
        lines.append(f"copy {r['copy_bandwidth_GBps']:.0f} GB/s, matmul {r['matmul_TFLOPs']:.0f} TFLOP/s")
        for row in r["rows"]:
            lines.append(
                f"{row['setting']:<7} B={row['batch']:<4} roofline {row['roofline_ms']:.3f} ms | gpu "
                f"{_f(row.get('gpu_step_ms'), digits=3)} ms ({_f(row.get('gpu_vs_roofline'), digits=2)}x) | wall "
                f"{row['step_wall_ms_p50']:.3f} ms ({row['wall_vs_roofline']:.2f}x) | host {_f(row.get('host_ms'), digits=3)} ms"
            )
    elif mode == "e2e":
        for side in ("lora", "nolora", "hf"):
            s = r.get(side)
            if not s:
                continue
            if "ttft_p50_s" in s:
                lines.append(
                    f"{side:<6} {s['output_tokens_per_s']:,.0f} tok/s over {s['window_s']:.0f} s, "
                    f"{s['requests_finished']}/{s['requests']} finished, TTFT p50/p99 {_f(s['ttft_p50_s'], digits=2)}/"
                    f"{_f(s['ttft_p99_s'], digits=2)} s, TPOT p50/p99 {_f(s['tpot_p50_s'], 1e3)}/{_f(s['tpot_p99_s'], 1e3)}"
                    f" ms, peak GPU {_f(s.get('gpu_max_allocated_gib'), digits=2)} GiB, register {s['register_s']:.1f} s"
                )
            if "offline" in s:
                o = s["offline"]
                lines.append(f"{side:<6} offline {o['output_tokens_per_s']:,.0f} tok/s on {o['requests']} requests")
            if side == "hf":
                lines.append(f"hf     {s['output_tokens_per_s']:,.0f} tok/s on {s['requests']} requests")
            st = s.get("step_times") or {}
            if "graphed_step_ms_mean" in st or "eager_step_ms_mean" in st:
                lines.append(
                    f"{side:<6} steps in window: {st.get('graphed_steps', 0)} graphed "
                    f"({_f(st.get('graphed_step_ms_mean'), digits=2)} ms), {st.get('piecewise_steps', 0)} piecewise "
                    f"({_f(st.get('piecewise_step_ms_mean'), digits=2)} ms), {st.get('eager_steps', 0)} eager "
                    f"({_f(st.get('eager_step_ms_mean'), digits=2)} ms), "
                    f"{s.get('kernel_compiles_in_window')} Triton compiles in the window"
                )
            a = s.get("adapters") or {}
            if a.get("device_misses"):
                lines.append(
                    f"{side:<6} adapters: {a['device_misses']} misses, fault-in p50/p99 "
                    f"{_f(a.get('load_latency_p50_s'), 1e3, 2)}/{_f(a.get('load_latency_p99_s'), 1e3, 2)} ms"
                )
        for key in ("lora_vs_nolora", "lora_vs_hf"):
            if key in r:
                lines.append(f"{key} = {r[key]:.3f}")
    elif mode == "adapter_scale":
        for row in r["sizes"]:
            lines.append(
                f"{row['registered']:>6} adapters: {row['output_tokens_per_s']:,.0f} tok/s, RSS {row['host_rss_gib']:.2f} GiB "
                f"(budget {r['cpu_budget_gib']} GiB, all on host {row['unbounded_host_gib']:.2f}), GPU alloc "
                f"{_f(row.get('gpu_allocated_gib'), digits=3)} GiB, register {row['register_s']:.1f} s"
            )
    return lines


def main() -> None:
    for arg in sys.argv[1:]:
        try:
            print("\n".join(summarize(Path(arg))))
        except (OSError, ValueError, KeyError) as e:
            print(f"## {arg}: unreadable ({e!r})")


if __name__ == "__main__":
    main()
