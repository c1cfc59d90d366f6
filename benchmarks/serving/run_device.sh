#!/usr/bin/env bash
# On a GPU machine, from the repository root: issue 5's serving measurements in about 9 minutes, each command
# under `timeout`, JSON and logs under $OUT:
#   1. decode_step_1b      the graphed decode step alone vs its roofline, B = 64/128/256 (bench_decode_step.py)
#   2. serving_slora       S-LoRA setting, 1000 adapters / 64 slots, Poisson window, LoRA vs no LoRA
#   3. serving_punica      Punica setting, 1000 adapters, the same requests (its no-LoRA side is serving_slora's)
#   4. serving_hf          transformers+PEFT vs the engine, offline, on the same requests
#   5. adapter_scale       100 → 1,000 → 5,000 registered adapters: GPU memory, host RSS vs the pinned budget
#   6. decode_step_8b      step 1 at Llama-3-8B dimensions, if the elapsed time leaves room (BUDGET_S)
# RUN_TESTS=1 runs the engine's and paged attention's GPU tests first (outside the 9 minutes).
# loraledger is imported from this checkout through a symlink (the GPU machine has no pip install of it).
set -uo pipefail
OUT=${OUT:-bench_out}
BUDGET_S=${BUDGET_S:-540}
mkdir -p "$OUT" /tmp/llpkg
ln -sfn "$PWD" /tmp/llpkg/loraledger
export PYTHONPATH=/tmp/llpkg${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=${PY:-python3}
B=benchmarks/serving
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv >"$OUT/gpu.txt"
$PY -c 'import torch, triton, transformers, peft; print(torch.__version__, triton.__version__, transformers.__version__, peft.__version__)' | tee -a "$OUT/gpu.txt"

if [[ "${RUN_TESTS:-0}" == 1 ]]; then
    # tests/conftest.py needs the chain stack (web3), which the GPU machine lacks.
    timeout 200 $PY -m pytest --noconftest -q -p no:cacheprovider -m gpu tests/gpu/test_engine_gpu.py \
        tests/gpu/test_paged_attention_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -30
fi
SECONDS=0

run() {  # run NAME TIMEOUT_S ARGS...: one benchmark, its log in $OUT/NAME.log, its JSON in $OUT/NAME.json
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s, at ${SECONDS}s)"
    timeout "$limit" $PY "$@" --json "$OUT/$name.json" >"$OUT/$name.log" 2>&1
    echo "=== $name: exit $? after ${SECONDS}s"
    $PY $B/summarize.py "$OUT/$name.json" || tail -5 "$OUT/$name.log"
}

run decode_step_1b 150 $B/bench_decode_step.py --preset llama-3.2-1b --batches 64 128 256 --context 512
run serving_slora 220 $B/bench_serving.py --preset llama-3.2-1b --setting slora --adapters 1000 --slots 64 \
    --rate 40 --duration 30 --drain-s 10 --baselines nolora
run serving_punica 160 $B/bench_serving.py --preset llama-3.2-1b --setting punica --adapters 1000 --slots 64 \
    --rate 40 --duration 30 --drain-s 10 --cpu-cache-gb 32 --baselines none
run serving_hf 150 $B/bench_serving.py --preset llama-3.2-1b --setting slora --adapters 1000 --slots 64 \
    --rate 40 --no-online --baselines hf --hf-requests 64 --hf-batch 16 --hf-max-s 30
run adapter_scale 150 $B/bench_adapter_scale.py --preset llama-3.2-1b --setting slora --sizes 100 1000 5000 \
    --slots 64 --cpu-cache-gb 2
if (( SECONDS + 150 <= BUDGET_S )); then
    run decode_step_8b 150 $B/bench_decode_step.py --preset llama-3-8b --batches 64 128 --context 512
else
    echo "=== decode_step_8b skipped: ${SECONDS}s elapsed of ${BUDGET_S}s"
fi
echo "=== done in ${SECONDS}s"
$PY $B/summarize.py "$OUT"/*.json >"$OUT/summary.txt"
