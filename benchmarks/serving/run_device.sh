#!/usr/bin/env bash
# On a GPU machine, from the repository root: the engine's and paged attention's GPU tests, the paged-attention
# timing table, then two serving runs (S-LoRA's and Punica's settings); logs and results under $OUT.
# loraledger is imported from this checkout through a symlink (the GPU machine has no pip install of it).
set -uo pipefail
OUT=${OUT:-bench_out}
mkdir -p "$OUT" /tmp/llpkg
ln -sfn "$PWD" /tmp/llpkg/loraledger
export PYTHONPATH=/tmp/llpkg${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv >"$OUT/gpu.txt"
$PY -c 'import torch, triton, transformers, peft; print(torch.__version__, triton.__version__, transformers.__version__, peft.__version__)' | tee -a "$OUT/gpu.txt"

# tests/conftest.py needs the chain stack (web3), which the GPU machine lacks.
timeout 200 $PY -m pytest --noconftest -q -p no:cacheprovider -m gpu tests/gpu/test_engine_gpu.py \
    tests/gpu/test_paged_attention_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -30
timeout 90 $PY tests/gpu/test_paged_attention_gpu.py 2>&1 | tee "$OUT/paged_attention.txt" | tail -30
timeout 150 $PY benchmarks/serving/bench_serving.py --preset llama-3.2-1b --setting slora --adapters 1000 \
    --slots 64 --requests 400 --rate 40 --baselines nolora --json "$OUT/serving_slora.json" 2>&1 | tail -40
timeout 150 $PY benchmarks/serving/bench_serving.py --preset llama-3.2-1b --setting punica --adapters 1000 \
    --slots 64 --requests 400 --rate 40 --baselines nolora --json "$OUT/serving_punica.json" 2>&1 | tail -40
