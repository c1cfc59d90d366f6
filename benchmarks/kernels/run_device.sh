#!/usr/bin/env bash
# On a GPU machine, from the repository root: the kernels' GPU tests while Triton's cache warms for the
# benchmark, then bench_sgmv.py; logs and results under $OUT (default ./bench_out). loraledger is
# imported from this checkout through a symlink.
set -uo pipefail
OUT=${OUT:-bench_out}
mkdir -p "$OUT" /tmp/llpkg
ln -sfn "$PWD" /tmp/llpkg/loraledger
export PYTHONPATH=/tmp/llpkg${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv >"$OUT/gpu.txt"
$PY -c 'import torch, triton; print(torch.__version__, triton.__version__)' | tee -a "$OUT/gpu.txt"

# Warm Triton's kernel cache for the benchmark in parallel with the tests (both only compile and check).
for i in 0 1 2 3 4 5 6 7; do
    $PY benchmarks/kernels/bench_sgmv.py --compile-only --shard $i/8 ${BENCH_ARGS:-} >"$OUT/compile_$i.log" 2>&1 &
done
# tests/conftest.py needs the chain stack (web3), which GPU machines may lack: the kernel tests need none of it.
$PY -m pytest tests/gpu/test_kernels_gpu.py -q --noconftest -p no:cacheprovider -n 8 ${TEST_ARGS:-} 2>&1 \
    | tee "$OUT/gpu_tests.log" | tail -25
wait
cat "$OUT"/compile_*.log | tail -20 >"$OUT/compile.log"; rm -f "$OUT"/compile_*.log

# Time in one process, alone on the GPU.
$PY benchmarks/kernels/bench_sgmv.py --out "$OUT" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | tail -30
$PY benchmarks/kernels/report.py "$OUT/rows.json" >"$OUT/report.md" && tail -40 "$OUT/report.md"
