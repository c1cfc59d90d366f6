#!/usr/bin/env bash
# One device call of a session, from the repository root on the GPU machine: PART=1 the GPU tests (kernels in
# the background, alongside the fused-ops, engine and paged-attention tests), then the decode step alone (as first
# run, also without the fused elementwise kernels: a switch since removed), then the S-LoRA serving window; PART=2 the engine GPU tests, where
# an eager step's time goes (profile_eager_step.py) and the Punica window; PART=3 the engine tests, the mixed
# step's profile and both serving windows (S-LoRA with its no-LoRA side, Punica); PART=4 the engine tests, a
# profile of steps with several prefills and the S-LoRA window; PART=5 (any other value) the GPU tests, the
# transformers+PEFT comparison, the 100 → 5,000 scale run at 4 layers, the decode step and a stack-sampled window; PART=7…52
# the sessions' calls (each block says what it runs); PART=6 what is still open for the next session.
# Logs and JSON under $OUT.
set -uo pipefail
OUT=${OUT:-bench_out}
mkdir -p "$OUT" /tmp/llpkg
ln -sfn "$PWD" /tmp/llpkg/loraledger
export PYTHONPATH=/tmp/llpkg${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
PY=${PY:-python3}
B=benchmarks/serving
SECONDS=0
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv >"$OUT/gpu.txt"
$PY -c 'import torch, triton; print(torch.__version__, triton.__version__)' >>"$OUT/gpu.txt"
run() {
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s, at ${SECONDS}s)"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "=== $name: exit $? at ${SECONDS}s"
}
PYTEST="$PY -m pytest --noconftest -q -p no:cacheprovider -m gpu"
# $OUT as one tarball: the machine returns few files.
pack_out() { (cd "$OUT" && tar czf /tmp/out.tgz . && rm -rf ./* && mv /tmp/out.tgz all.tgz); }
# The decode step without LoRA at B 64/128/256 for one model, on the package that $2 (a PYTHONPATH prefix, or "")
# puts first; the run is named $1 and its roofline lines are printed with that name.
decode_nolora_tree() {
    local name=$1 model=$2 prefix=$3
    PYTHONPATH=$prefix$PYTHONPATH run "$name" 200 $PY $B/bench_decode_step.py --preset "$model" --settings nolora \
        --batches 64 128 256 --context 512 --steps 10 --replays 30 --json "$OUT/$name.json"
    grep "roofline .* ms" "$OUT/$name.log" | tail -n 3 | sed "s/^/$name /"
}
# The 8B decode step (no LoRA, S-LoRA, Punica; B 64) with the token-gather LoRA kernels where the rule picks them
# and with the tile kernels everywhere (as run in the sixth session: LORALEDGER_SGMV_GATHER=0, since --no-gather).
decode_8b_gather_ab() {
    local mode flag
    for mode in gather tiles; do
        flag=""; [[ $mode == tiles ]] && flag=--no-gather
        run decode_step_8b_$mode 200 $PY $B/bench_decode_step.py --preset llama-3-8b --settings nolora slora punica \
            --batches 64 --context 512 --steps 10 --replays 20 $flag --json "$OUT/decode_step_8b_$mode.json"
        grep "roofline .* ms" "$OUT/decode_step_8b_$mode.log" | tail -n 4
    done
}
if [[ "${PART:-1}" == 1 ]]; then
    timeout 230 $PYTEST -n 6 tests/gpu/test_kernels_gpu.py >"$OUT/tests_kernels.log" 2>&1 &
    run tests_fused 120 $PYTEST -x tests/gpu/test_fused_ops_gpu.py
    tail -3 "$OUT/tests_fused.log"
    run tests_engine 150 $PYTEST tests/gpu/test_engine_gpu.py tests/gpu/test_paged_attention_gpu.py
    tail -3 "$OUT/tests_engine.log"
    wait
    tail -3 "$OUT/tests_kernels.log"
    run decode_step_1b 130 $PY $B/bench_decode_step.py --preset llama-3.2-1b --batches 64 128 256 --context 512 \
        --steps 20 --replays 40 --json "$OUT/decode_step_1b.json"
    run serving_slora 200 $PY $B/bench_serving.py --preset llama-3.2-1b --setting slora --adapters 1000 --slots 64 \
        --rate 40 --duration 30 --drain-s 10 --baselines nolora --json "$OUT/serving_slora.json"
elif [[ "${PART}" == 2 ]]; then
    run tests_engine 200 $PYTEST -x -rf --tb=short tests/gpu/test_engine_gpu.py tests/gpu/test_paged_attention_gpu.py
    tail -25 "$OUT/tests_engine.log"
    run profile_slora 80 $PY $B/profile_eager_step.py --preset llama-3.2-1b --setting slora --json "$OUT/profile_slora.json"
    head -60 "$OUT/profile_slora.log"
    run profile_nolora 60 $PY $B/profile_eager_step.py --preset llama-3.2-1b --setting nolora --top 15
    head -40 "$OUT/profile_nolora.log"
    run serving_punica 160 $PY $B/bench_serving.py --preset llama-3.2-1b --setting punica --adapters 1000 --slots 64 \
        --rate 40 --duration 30 --drain-s 10 --cpu-cache-gb 32 --baselines none --json "$OUT/serving_punica.json"
elif [[ "${PART}" == 3 ]]; then
    run tests_engine 200 $PYTEST -rf --tb=short tests/gpu/test_engine_gpu.py tests/gpu/test_paged_attention_gpu.py
    tail -15 "$OUT/tests_engine.log"
    run profile_slora 80 $PY $B/profile_eager_step.py --preset llama-3.2-1b --setting slora --top 12 --json "$OUT/profile_slora.json"
    head -45 "$OUT/profile_slora.log"
    run serving_slora 220 $PY $B/bench_serving.py --preset llama-3.2-1b --setting slora --adapters 1000 --slots 64 \
        --rate 40 --duration 30 --drain-s 10 --baselines nolora --json "$OUT/serving_slora.json"
    run serving_punica 160 $PY $B/bench_serving.py --preset llama-3.2-1b --setting punica --adapters 1000 --slots 64 \
        --rate 40 --duration 30 --drain-s 10 --cpu-cache-gb 32 --baselines none --json "$OUT/serving_punica.json"
elif [[ "${PART}" == 4 ]]; then
    run tests_engine 150 $PYTEST -rf --tb=short tests/gpu/test_engine_gpu.py
    tail -30 "$OUT/tests_engine.log"
    run profile_slora 80 $PY $B/profile_eager_step.py --preset llama-3.2-1b --setting slora --prefills 4 --prompt 400 \
        --top 12 --json "$OUT/profile_slora.json"
    head -45 "$OUT/profile_slora.log"
    run serving_slora 220 $PY $B/bench_serving.py --preset llama-3.2-1b --setting slora --adapters 1000 --slots 64 \
        --rate 40 --duration 30 --drain-s 10 --baselines nolora --json "$OUT/serving_slora.json"
elif [[ "${PART}" == 7 ]]; then  # the SGMV config sweep (kernels/configs.py): compile in 8 processes, then time
    for i in 0 1 2 3 4 5 6 7; do
        (cd benchmarks/kernels && timeout 200 $PY sweep_sgmv.py --compile-only --shard $i/8) >"/tmp/sweep_compile_$i.log" 2>&1 &
    done
    wait
    cat /tmp/sweep_compile_*.log | tail -n 5
    (cd benchmarks/kernels && run sweep 300 $PY sweep_sgmv.py --out "$OUT/sweep")
    cat "$OUT/sweep.log"
elif [[ "${PART}" == 8 ]]; then  # the stack-sampled S-LoRA window; transformers+PEFT side by side
    run serving_stacks 150 $PY $B/bench_serving.py --preset llama-3.2-1b --setting slora --adapters 1000 --slots 64 \
        --rate 40 --duration 20 --drain-s 5 --baselines none --sample-stacks --json "$OUT/serving_stacks.json"
    $PY -c "import json, sys; [print(n, c) for n, c in json.load(open(sys.argv[1]))['lora']['engine_stacks'][:25]]" \
        "$OUT/serving_stacks.json"
    run serving_hf 150 $PY $B/bench_serving.py --preset llama-3.2-1b --setting slora --adapters 1000 --slots 64 \
        --rate 40 --no-online --baselines hf --hf-requests 64 --hf-batch 16 --hf-max-s 30 --json "$OUT/serving_hf.json"
elif [[ "${PART}" == 9 ]]; then  # the 8B decode step; the full-depth 100 -> 5,000 adapter run
    run decode_step_8b 200 $PY $B/bench_decode_step.py --preset llama-3-8b --batches 64 128 --context 512 \
        --steps 10 --replays 30 --json "$OUT/decode_step_8b.json"
    run adapter_scale_full 200 $PY $B/bench_adapter_scale.py --preset llama-3.2-1b --setting slora \
        --sizes 100 1000 5000 --slots 64 --cpu-cache-gb 2 --json "$OUT/adapter_scale_full.json"
elif [[ "${PART}" == 10 ]]; then  # prefill attention per SDPA backend; kernel GPU tests; the S-LoRA window
    run prefill_attention 120 $PY $B/bench_prefill_attention.py --json "$OUT/prefill_attention.json"
    cat "$OUT/prefill_attention.log"
    run tests_kernels 260 $PYTEST -n 6 tests/gpu/test_kernels_gpu.py
    tail -n 3 "$OUT/tests_kernels.log"
    run serving_slora 220 $PY $B/bench_serving.py --preset llama-3.2-1b --setting slora --adapters 1000 --slots 64 \
        --rate 40 --duration 30 --drain-s 10 --baselines nolora --json "$OUT/serving_slora.json"
elif [[ "${PART}" == 11 ]]; then  # kernel GPU tests; the SDPA backend A/B in serving; the 8B decode step; ncu
    run tests_kernels 200 $PYTEST -n 6 tests/gpu/test_kernels_gpu.py
    tail -n 3 "$OUT/tests_kernels.log"
    run serving_slora_fixed 130 $PY $B/bench_serving.py --preset llama-3.2-1b --setting slora --adapters 1000 --slots 64 \
        --rate 40 --duration 20 --drain-s 5 --baselines none --json "$OUT/serving_slora_fixed.json"
    cp runtime/engine/attention.py /tmp/attention.py.bak
    sed -i 's/with sdpa_kernel(_CUDA_SDPA_BACKENDS) if q.is_cuda else/with/' runtime/engine/attention.py
    grep -n "        out = F.scaled_dot_product_attention" -B1 runtime/engine/attention.py
    run serving_slora_default_sdpa 130 $PY $B/bench_serving.py --preset llama-3.2-1b --setting slora --adapters 1000 \
        --slots 64 --rate 40 --duration 20 --drain-s 5 --baselines none --json "$OUT/serving_slora_default_sdpa.json"
    cp /tmp/attention.py.bak runtime/engine/attention.py
    run decode_step_8b 160 $PY $B/bench_decode_step.py --preset llama-3-8b --batches 64 128 --context 512 \
        --steps 10 --replays 30 --json "$OUT/decode_step_8b.json"
    (cd benchmarks/kernels && timeout 100 ncu --kernel-name regex:_sgmv --launch-skip 6 --launch-count 6 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section MemoryWorkloadAnalysis $PY profile_distinct.py) >"$OUT/ncu_distinct.log" 2>&1
    grep -E "_sgmv|Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|Warp Cycles Per Issued|Stall|Grid Size|Block Size|Waves" "$OUT/ncu_distinct.log" | head -120
elif [[ "${PART}" == 12 ]]; then  # the full-depth 100 -> 5,000 adapter run (host arena); the SGMV sweep again
    run adapter_scale_full 260 $PY $B/bench_adapter_scale.py --preset llama-3.2-1b --setting slora \
        --sizes 100 1000 5000 --slots 64 --cpu-cache-gb 2 --json "$OUT/adapter_scale_full.json"
    for i in 0 1 2 3 4 5 6 7; do
        (cd benchmarks/kernels && timeout 200 $PY sweep_sgmv.py --compile-only --shard $i/8) >"/tmp/sweep_compile_$i.log" 2>&1 &
    done
    wait
    (cd benchmarks/kernels && run sweep 250 $PY sweep_sgmv.py --out "$OUT/sweep")
    cat "$OUT/sweep.log"
elif [[ "${PART}" == 13 ]]; then  # the S-LoRA window at Llama-3-8B dimensions; the anchor cases of bench_sgmv
    run serving_slora_8b 330 $PY $B/bench_serving.py --preset llama-3-8b --setting slora --adapters 1000 --slots 64 \
        --rate 40 --duration 30 --drain-s 10 --cpu-cache-gb 16 --baselines nolora --json "$OUT/serving_slora_8b.json"
    tail -n 5 "$OUT/serving_slora_8b.log"
    (cd benchmarks/kernels && run sgmv_anchors 240 $PY bench_sgmv.py --no-grid --out "$OUT/sgmv_anchors")
    grep -E "^\[" "$OUT/sgmv_anchors.log" | tail -n 25
elif [[ "${PART}" == 15 ]]; then  # the small-floor SGMV cases on the tuned table; the Punica window (1B)
    (cd benchmarks/kernels && run sgmv_small_floor 300 $PY bench_sgmv.py --small-floor --out "$OUT/sgmv_small_floor")
    tail -n 3 "$OUT/sgmv_small_floor.log"
    run serving_punica 200 $PY $B/bench_serving.py --preset llama-3.2-1b --setting punica --adapters 1000 --slots 64 \
        --rate 40 --duration 30 --drain-s 10 --cpu-cache-gb 32 --baselines nolora --json "$OUT/serving_punica.json"
elif [[ "${PART}" == 16 ]]; then  # kernel GPU tests and the small-floor cases with the rank-64 table
    run tests_kernels 200 $PYTEST -n 6 tests/gpu/test_kernels_gpu.py
    tail -n 3 "$OUT/tests_kernels.log"
    (cd benchmarks/kernels && run sgmv_small_floor 300 $PY bench_sgmv.py --small-floor --out "$OUT/sgmv_small_floor")
    tail -n 3 "$OUT/sgmv_small_floor.log"
elif [[ "${PART}" == 17 ]]; then  # fourth session, call 1: GPU tests on per-tile records; the kernels A/B against
    # .prev/loraledger (a copy of 9428bdf's package, carried) on the small-floor and anchor cases
    timeout 280 $PYTEST -n 6 tests/gpu/test_kernels_gpu.py tests/gpu/test_fused_ops_gpu.py \
        tests/gpu/test_paged_attention_gpu.py >"/tmp/tests_kernels.log" 2>&1 &
    run tests_engine 280 $PYTEST -rf --tb=short tests/gpu/test_engine_gpu.py
    wait
    tail -n 4 /tmp/tests_kernels.log "$OUT/tests_engine.log"
    grep -E "FAILED|Error" /tmp/tests_kernels.log | head -20
    (cd benchmarks/kernels && run sgmv_ab 290 $PY bench_sgmv.py --small-floor --anchors-too --budget-s 230 \
        --compare prev="$PWD/../../.prev/loraledger/kernels" --out "$OUT/sgmv_ab")
    grep -E "^\[" "$OUT/sgmv_ab.log" | tail -n 30
elif [[ "${PART}" == 19 ]]; then  # fourth session, call 2: four kernel variants side by side (9428bdf's; the per-tile
    # records read one item ahead, .alt; this tree; this tree reading ranks per slot), qo and up shapes
    (cd benchmarks/kernels && run sgmv_ab4 420 $PY bench_sgmv.py --small-floor --anchors-too --budget-s 330 \
        --shapes qo,up --compare prev="$PWD/../../.prev/loraledger/kernels" ahead="$PWD/../../.alt/kernels" \
        --out "$OUT/sgmv_ab4")
    grep -E "^\[" "$OUT/sgmv_ab4.log" | tail -n 12
elif [[ "${PART}" == 18 ]]; then  # fourth session, call 2: the decode step with 9428bdf's package and this tree,
    # back to back at 8B, then 1B on this tree
    PYTHONPATH=$PWD/.prev run decode_step_8b_prev 200 $PY $B/bench_decode_step.py --preset llama-3-8b \
        --batches 64 128 --context 512 --steps 10 --replays 30 --json "$OUT/decode_step_8b_prev.json"
    run decode_step_8b 200 $PY $B/bench_decode_step.py --preset llama-3-8b --batches 64 128 --context 512 \
        --steps 10 --replays 30 --json "$OUT/decode_step_8b.json"
    run decode_step_1b 150 $PY $B/bench_decode_step.py --preset llama-3.2-1b --batches 64 128 256 --context 512 \
        --steps 20 --replays 40 --json "$OUT/decode_step_1b.json"
elif [[ "${PART}" == 20 ]]; then  # fourth session, call 3: where the decode step's GPU time goes (profiled by kernel
    # kind) at 8B and 1B; the paged attention kernel's launch configs per decode shape
    run decode_step_8b_profile 200 $PY $B/bench_decode_step.py --preset llama-3-8b --batches 64 128 --context 512 \
        --steps 10 --replays 30 --profile --json "$OUT/decode_step_8b_profile.json"
    grep -E "B=" "$OUT/decode_step_8b_profile.log" | head
    run decode_step_1b_profile 120 $PY $B/bench_decode_step.py --preset llama-3.2-1b --batches 64 128 256 \
        --context 512 --steps 20 --replays 40 --profile --json "$OUT/decode_step_1b_profile.json"
    grep -E "B=" "$OUT/decode_step_1b_profile.log" | head
    run paged_attention_sweep 220 $PY benchmarks/kernels/sweep_paged_attention.py --json "$OUT/paged_attention_sweep.json"
    cat "$OUT/paged_attention_sweep.log"
elif [[ "${PART}" == 21 ]]; then  # fourth session, call 4: tiles under 16 tokens (the expand without a dot): the
    # sweep of block_t with the expand's warps and column block, decode buckets T <= 64 and <= 256
    ONLY=block_t,bt,expand_warps,block_n
    for i in 0 1 2 3 4 5 6 7; do
        (cd benchmarks/kernels && timeout 200 $PY sweep_sgmv.py --compile-only --shard $i/8 --buckets 64,256 \
            --only $ONLY) >"/tmp/sweep_compile_$i.log" 2>&1 &
    done
    wait
    cat /tmp/sweep_compile_*.log | tail -n 5
    (cd benchmarks/kernels && run sweep_small_tiles 330 $PY sweep_sgmv.py --buckets 64,256 --only $ONLY \
        --out "$OUT/sweep_small_tiles")
    cat "$OUT/sweep_small_tiles.log"
elif [[ "${PART}" == 22 ]]; then  # fourth session, call 5: overlapped decoding (EngineConfig.overlap_decode): the
    # engine GPU tests, then the decode step with and without it, 1B then 8B
    run tests_engine 200 $PYTEST -rf --tb=short tests/gpu/test_engine_gpu.py
    tail -n 3 "$OUT/tests_engine.log"
    for mode in overlap no_overlap; do
        flag=""; [[ $mode == no_overlap ]] && flag=--no-overlap
        run decode_step_1b_$mode 120 $PY $B/bench_decode_step.py --preset llama-3.2-1b --batches 64 128 256 \
            --context 512 --steps 30 --replays 30 $flag --json "$OUT/decode_step_1b_$mode.json"
    done
    for mode in overlap no_overlap; do
        flag=""; [[ $mode == no_overlap ]] && flag=--no-overlap
        run decode_step_8b_$mode 150 $PY $B/bench_decode_step.py --preset llama-3-8b --batches 64 128 \
            --context 512 --steps 20 --replays 20 $flag --json "$OUT/decode_step_8b_$mode.json"
    done
elif [[ "${PART}" == 23 ]]; then  # fourth session, call 6: serving windows with overlapped decoding: S-LoRA at 8B
    # (with its no-LoRA side), S-LoRA at 1B at 80 requests/s (with its no-LoRA side, then LoRA without overlap)
    run serving_slora_8b 280 $PY $B/bench_serving.py --preset llama-3-8b --setting slora --adapters 1000 --slots 64 \
        --rate 40 --duration 20 --drain-s 5 --cpu-cache-gb 16 --baselines nolora --json "$OUT/serving_slora_8b.json"
    run serving_slora_1b 150 $PY $B/bench_serving.py --preset llama-3.2-1b --setting slora --adapters 1000 --slots 64 \
        --rate 80 --duration 20 --drain-s 5 --baselines nolora --json "$OUT/serving_slora_1b.json"
    run serving_slora_1b_no_overlap 120 $PY $B/bench_serving.py --preset llama-3.2-1b --setting slora --adapters 1000 \
        --slots 64 --rate 80 --duration 20 --drain-s 5 --baselines none --no-overlap \
        --json "$OUT/serving_slora_1b_no_overlap.json"
elif [[ "${PART}" == 24 ]]; then  # fourth session, call 7: the last bucket's config on an engine's mixed step
    # (64 decode tokens of distinct adapters + prefill segments, rank 8) and pure prefill guards
    ONLY=block_t,block_n,n_blocks,expand_warps,programs_per_sm,shrink_warps,k_chunk
    for i in 0 1 2 3 4 5 6 7; do
        (cd benchmarks/kernels && timeout 200 $PY sweep_sgmv.py --compile-only --shard $i/8 --buckets 2048 \
            --only $ONLY) >"/tmp/sweep_compile_$i.log" 2>&1 &
    done
    wait
    cat /tmp/sweep_compile_*.log | tail -n 5
    (cd benchmarks/kernels && run sweep_mixed 330 $PY sweep_sgmv.py --buckets 2048 --only $ONLY --out "$OUT/sweep_mixed")
    cat "$OUT/sweep_mixed.log"
elif [[ "${PART}" == 25 ]]; then  # fourth session, call 8: the S-LoRA window at 8B (30 s, as the runs) with
    # overlapped decoding; the full bench_sgmv grid on the final table (what PART=6 left open)
    run serving_slora_8b_30s 230 $PY $B/bench_serving.py --preset llama-3-8b --setting slora --adapters 1000 --slots 64 \
        --rate 40 --duration 30 --drain-s 5 --cpu-cache-gb 16 --baselines nolora --json "$OUT/serving_slora_8b_30s.json"
    (cd benchmarks/kernels && run sgmv_grid 330 $PY bench_sgmv.py --budget-s 230 --out "$OUT/sgmv_grid")
    grep -E "^\[" "$OUT/sgmv_grid.log" | tail -n 5
elif [[ "${PART}" == 26 ]]; then  # fourth session, call 9: the 8B S-LoRA window with 128 slots (queued requests'
    # adapters load into free slots before a running one finishes); the Punica window at 1B with overlap
    run serving_slora_8b_128slots 230 $PY $B/bench_serving.py --preset llama-3-8b --setting slora --adapters 1000 \
        --slots 128 --rate 40 --duration 30 --drain-s 5 --cpu-cache-gb 16 --baselines nolora \
        --json "$OUT/serving_slora_8b_128slots.json"
    run serving_punica_1b 170 $PY $B/bench_serving.py --preset llama-3.2-1b --setting punica --adapters 1000 --slots 64 \
        --rate 80 --duration 20 --drain-s 5 --cpu-cache-gb 32 --baselines nolora --json "$OUT/serving_punica_1b.json"
elif [[ "${PART}" == 27 ]]; then  # fourth session, calls 10 and 11 (SKIP_TESTS=1): narrow-head paged attention launch (block_n 32, two warps
    # from 1024 sequences x KV heads): GPU tests, then the 1B decode step's GPU time with 9428bdf's package and this tree
    if [[ -z "${SKIP_TESTS:-}" ]]; then
        timeout 200 $PYTEST -n 4 tests/gpu/test_paged_attention_gpu.py >/tmp/tests_attention.log 2>&1 &
        run tests_engine 200 $PYTEST -rf --tb=short tests/gpu/test_engine_gpu.py
        wait
        tail -n 2 /tmp/tests_attention.log "$OUT/tests_engine.log"
    fi
    PYTHONPATH=$PWD/.prev run decode_step_1b_prev 120 $PY $B/bench_decode_step.py --preset llama-3.2-1b --settings nolora \
        --batches 64 128 256 --context 512 --steps 10 --replays 40 --json "$OUT/decode_step_1b_prev.json"
    run decode_step_1b_attn 120 $PY $B/bench_decode_step.py --preset llama-3.2-1b --settings nolora \
        --batches 64 128 256 --context 512 --steps 10 --replays 40 --json "$OUT/decode_step_1b_attn.json"
elif [[ "${PART}" == 29 ]]; then  # fifth session, call 2 (and next): kernels/skinny_matmul.py (split-K matmul for few
    # rows): its GPU tests, then its launch configs against cuBLAS on the 1B and 8B projections (compiled in 8 shards
    # first); the sweep prints the table for configs._HOPPER_SKINNY
    timeout 150 $PYTEST -rf tests/gpu/test_skinny_matmul_gpu.py >"$OUT/tests_skinny.log" 2>&1 &
    for i in 0 1 2 3 4 5 6 7; do
        (cd benchmarks/kernels && timeout 200 $PY sweep_skinny.py --compile-only --shard $i/8 \
            --rows ${ROWS:-64,16}) >"/tmp/skinny_compile_$i.log" 2>&1 &
    done
    wait
    tail -n 3 "$OUT/tests_skinny.log" /tmp/skinny_compile_*.log | grep -v "^$" | tail -n 20
    (cd benchmarks/kernels && run sweep_skinny 400 $PY sweep_skinny.py --rows ${ROWS:-64,16} --budget-s 330 \
        --out "$OUT/sweep_skinny.json")
    cat "$OUT/sweep_skinny.log"
elif [[ "${PART}" == 30 ]]; then  # next: the decode step with kernels.linear's table (filled from PART=29's sweep)
    # and without it (as run: LORALEDGER_SKINNY_MATMUL=0, since removed; now a carried package whose
    # configs._HOPPER_SKINNY is {}, under .alt/cublas/loraledger), 1B no-LoRA then 8B no-LoRA and Punica; the engine GPU tests
    run tests_engine 200 $PYTEST -rf --tb=short tests/gpu/test_engine_gpu.py tests/gpu/test_skinny_matmul_gpu.py
    tail -n 3 "$OUT/tests_engine.log"
    for mode in skinny cublas; do
        [[ $mode == cublas ]] && export PYTHONPATH=$PWD/.alt/cublas:$PYTHONPATH
        [[ -z "${SKIP_1B:-}" ]] && run decode_step_1b_$mode 120 $PY $B/bench_decode_step.py --preset llama-3.2-1b --settings nolora \
            --batches 16 64 128 --context 512 --steps 10 --replays 40 --json "$OUT/decode_step_1b_$mode.json"
        run decode_step_8b_$mode 200 $PY $B/bench_decode_step.py --preset llama-3-8b --settings nolora punica \
            --batches 64 --context 512 --steps 10 --replays 20 --json "$OUT/decode_step_8b_$mode.json"
    done
    export PYTHONPATH=${PYTHONPATH#$PWD/.alt/cublas:}
elif [[ "${PART}" == 31 ]]; then  # next: rank-8 B loads 16 bytes wide (8d1c3b2), side by side with the kernels before
    # (carry .prev = `git archive 19831a5 __init__.py kernels runtime sdk agents` under .prev/loraledger): the GPU
    # tests, the rank-8 grid cases (bench_sgmv --ranks 8 --compare), the S-LoRA decode step at 8B with both packages
    timeout 280 $PYTEST -n 6 tests/gpu/test_kernels_gpu.py tests/gpu/test_skinny_matmul_gpu.py \
        >"$OUT/tests_kernels.log" 2>&1 &
    run tests_engine 280 $PYTEST -rf --tb=short tests/gpu/test_engine_gpu.py
    wait
    tail -n 3 "$OUT/tests_kernels.log" "$OUT/tests_engine.log"
    (cd benchmarks/kernels && run sgmv_rank8_ab 200 $PY bench_sgmv.py --ranks 8 --shapes qo,kv,up,down --budget-s 150 \
        --compare prev="$PWD/../../.prev/loraledger/kernels" --out "$OUT/sgmv_rank8_ab")
    grep -E "^\[" "$OUT/sgmv_rank8_ab.log" | tail -n 12
    [[ -n "${TESTS_AND_KERNELS_ONLY:-}" ]] && exit 0
    PYTHONPATH=$PWD/.prev run decode_step_8b_slora_prev 150 $PY $B/bench_decode_step.py --preset llama-3-8b \
        --settings nolora slora --batches 64 128 --context 512 --steps 10 --replays 20 \
        --json "$OUT/decode_step_8b_slora_prev.json"
    run decode_step_8b_slora 150 $PY $B/bench_decode_step.py --preset llama-3-8b --settings nolora slora \
        --batches 64 128 --context 512 --steps 10 --replays 20 --json "$OUT/decode_step_8b_slora.json"
elif [[ "${PART}" == 32 ]]; then  # next: the S-LoRA window at 8B (30 s, with its no-LoRA side) on this tree
    run serving_slora_8b_30s 400 $PY $B/bench_serving.py --preset llama-3-8b --setting slora --adapters 1000 --slots 64 \
        --rate 40 --duration 30 --drain-s 5 --cpu-cache-gb 16 --baselines nolora --json "$OUT/serving_slora_8b_30s.json"
elif [[ "${PART}" == 33 ]]; then  # fifth session, call 4: the S-LoRA decode step at 8B with 19831a5's package
    # (carried .prev) and this tree, while the split-K matmul's variants compile; then its sweep (PART=29's)
    for i in 0 1 2 3 4 5 6 7; do
        (cd benchmarks/kernels && timeout 200 $PY sweep_skinny.py --compile-only --shard $i/8 --rows 64,16 \
            --shapes 1b_qkv,1b_o,1b_down,8b_qkv,8b_o,8b_down) >"/tmp/skinny_compile_$i.log" 2>&1 &
    done
    PYTHONPATH=$PWD/.prev run decode_step_8b_slora_prev 150 $PY $B/bench_decode_step.py --preset llama-3-8b \
        --settings nolora slora --batches 64 --context 512 --steps 10 --replays 20 \
        --json "$OUT/decode_step_8b_slora_prev.json"
    run decode_step_8b_slora 150 $PY $B/bench_decode_step.py --preset llama-3-8b --settings nolora slora \
        --batches 64 --context 512 --steps 10 --replays 20 --json "$OUT/decode_step_8b_slora.json"
    wait
    (cd benchmarks/kernels && run sweep_skinny 260 $PY sweep_skinny.py --rows 64,16 --budget-s 200 \
        --shapes 1b_qkv,1b_o,1b_down,8b_qkv,8b_o,8b_down --out "$OUT/sweep_skinny.json")
    grep -v "^$" "$OUT/sweep_skinny.log" | tail -n 14
elif [[ "${PART}" == 34 ]]; then  # sixth session, call 1: the token-gather pair (kernels/sgmv_gather.py): its GPU
    # tests (every case on the gather and auto paths, graphs, host syncs) while the sweep's variants compile, then
    # sweep_gather.py alone on the GPU (variants against the table's two launches)
    timeout 200 $PYTEST -n 4 -rf tests/gpu/test_kernels_gpu.py -k "gather or auto or pdl" >"$OUT/tests_gather.log" 2>&1 &
    for i in 0 1 2 3 4 5 6 7 8 9; do
        (cd benchmarks/kernels && timeout 200 $PY sweep_gather.py --compile-only --shard $i/10) \
            >"/tmp/gather_compile_$i.log" 2>&1 &
    done
    wait
    tail -n 3 "$OUT/tests_gather.log" /tmp/gather_compile_*.log | grep -v "^$" | tail -n 24
    (cd benchmarks/kernels && run sweep_gather 330 $PY sweep_gather.py --budget-s 230 --out "$OUT/sweep_gather.json")
    grep -v "^\[" "$OUT/sweep_gather.log" | tail -n 30
elif [[ "${PART}" == 35 ]]; then  # sixth session, call 2: the gather path's GPU tests (kernels, the engine's graphs
    # with it), then the decode step at 8B (no LoRA, S-LoRA and Punica, B 64) with the gather path where the rule
    # picks it and without it (--no-gather)
    timeout 200 $PYTEST -n 4 -rf tests/gpu/test_kernels_gpu.py -k "gather or auto" >"$OUT/tests_gather.log" 2>&1 &
    run tests_engine 240 $PYTEST -rf --tb=short tests/gpu/test_engine_gpu.py
    wait
    tail -n 3 "$OUT/tests_gather.log" "$OUT/tests_engine.log"
    decode_8b_gather_ab
elif [[ "${PART}" == 36 ]]; then  # sixth session, call 3: the engine GPU tests (decode graphs of three LoRA kinds;
    # lm_head's fp32 output), the 1B no-LoRA decode step with 63f81a3's package (carried .prev: lm_head in bf16, then
    # widened) and this tree, the 8B decode step's GPU time with and without the gather path, the S-LoRA window at 8B
    # over 60 s with its no-LoRA side
    run tests_engine 240 $PYTEST -rf --tb=short tests/gpu/test_engine_gpu.py
    tail -n 3 "$OUT/tests_engine.log"
    PYTHONPATH=$PWD/.prev run decode_step_1b_prev 120 $PY $B/bench_decode_step.py --preset llama-3.2-1b --settings nolora \
        --batches 64 128 --context 512 --steps 10 --replays 40 --json "$OUT/decode_step_1b_prev.json"
    run decode_step_1b 120 $PY $B/bench_decode_step.py --preset llama-3.2-1b --settings nolora \
        --batches 64 128 --context 512 --steps 10 --replays 40 --json "$OUT/decode_step_1b.json"
    grep "roofline .* ms" "$OUT/decode_step_1b_prev.log" "$OUT/decode_step_1b.log" | tail -n 8
    decode_8b_gather_ab
    run serving_slora_8b_60s 330 $PY $B/bench_serving.py --preset llama-3-8b --setting slora --adapters 1000 --slots 64 \
        --rate 40 --duration 60 --drain-s 5 --cpu-cache-gb 16 --baselines nolora --json "$OUT/serving_slora_8b_60s.json"
    grep -i "tok/s\|ratio\|throughput" "$OUT/serving_slora_8b_60s.log" | tail -n 8
elif [[ "${PART}" == 37 ]]; then  # sixth session, call 4: every kernel GPU test and the engine GPU tests, the 1B
    # no-LoRA decode step with 63f81a3's package (carried .prev) and this tree (lm_head's fp32 output, no row gather
    # before the final norm in decode graphs, RoPE tables), the anchor cases of bench_sgmv (the gather pair where the rule picks
    # it); everything under $OUT packed into one archive at the end (the machine returns few files)
    timeout 280 $PYTEST -n 6 -rf tests/gpu/test_kernels_gpu.py >"$OUT/tests_kernels.log" 2>&1 &
    run tests_engine 240 $PYTEST -rf --tb=short tests/gpu/test_engine_gpu.py
    wait
    tail -n 3 "$OUT/tests_kernels.log" "$OUT/tests_engine.log"
    PYTHONPATH=$PWD/.prev run decode_step_1b_prev 120 $PY $B/bench_decode_step.py --preset llama-3.2-1b --settings nolora \
        --batches 64 128 --context 512 --steps 10 --replays 40 --json "$OUT/decode_step_1b_prev.json"
    run decode_step_1b 120 $PY $B/bench_decode_step.py --preset llama-3.2-1b --settings nolora \
        --batches 64 128 --context 512 --steps 10 --replays 40 --json "$OUT/decode_step_1b.json"
    grep "roofline .* ms" "$OUT/decode_step_1b_prev.log" "$OUT/decode_step_1b.log" | tail -n 8
    (cd benchmarks/kernels && run sgmv_anchors 200 $PY bench_sgmv.py --no-grid --out "$OUT/sgmv_anchors")
    grep -E "^\[" "$OUT/sgmv_anchors.log" | tail -n 20
    pack_out
elif [[ "${PART}" == 38 ]]; then  # sixth session, call 5: a second 60 s S-LoRA window at 8B on this tree
    run serving_slora_8b_60s 400 $PY $B/bench_serving.py --preset llama-3-8b --setting slora --adapters 1000 --slots 64 \
        --rate 40 --duration 60 --drain-s 5 --cpu-cache-gb 16 --baselines nolora --json "$OUT/serving_slora_8b_60s.json"
    grep -A8 "^## serving" "$OUT/serving_slora_8b_60s.log" | tail -n 9
    pack_out
elif [[ "${PART}" == 39 ]]; then  # sixth session, call 6: the kernel and engine GPU tests on the final tree
    timeout 200 $PYTEST -n 8 -rf tests/gpu/test_kernels_gpu.py >"$OUT/tests_kernels.log" 2>&1 &
    run tests_engine 150 $PYTEST -rf --tb=short tests/gpu/test_engine_gpu.py
    wait
    tail -n 3 "$OUT/tests_kernels.log" "$OUT/tests_engine.log"
elif [[ "${PART}" == 40 ]]; then  # seventh session, call 1: PDL for the decoder's own kernels (kernels/pdl.py). Their
    # GPU tests (fused ops, paged attention, split-K matmul, the PDL chain in a graph) and the engine's, then the
    # decode step side by side with 1fc9995's package (carried .prev: no PDL), twice in alternation at 1B (no LoRA,
    # B 64/128/256; S-LoRA and Punica at B 64) and once at 8B (B 64), and where the 1B B 64 step's time goes on both
    timeout 280 $PYTEST -n 4 -rf tests/gpu/test_fused_ops_gpu.py tests/gpu/test_paged_attention_gpu.py \
        tests/gpu/test_skinny_matmul_gpu.py tests/gpu/test_pdl_gpu.py >"$OUT/tests_ops.log" 2>&1 &
    run tests_engine 240 $PYTEST -rf --tb=short tests/gpu/test_engine_gpu.py
    wait
    tail -n 3 "$OUT/tests_ops.log" "$OUT/tests_engine.log"
    for round in 1 2; do
        for tree in prev pdl; do
            pp=""; [[ $tree == prev ]] && pp=$PWD/.prev
            PYTHONPATH=$pp${pp:+:}$PYTHONPATH run decode_step_1b_${tree}_$round 120 $PY $B/bench_decode_step.py \
                --preset llama-3.2-1b --settings nolora --batches 64 128 256 --context 512 --steps 10 --replays 40 \
                --json "$OUT/decode_step_1b_${tree}_$round.json"
            grep "roofline .* ms" "$OUT/decode_step_1b_${tree}_$round.log" | tail -n 3
        done
    done
    for tree in prev pdl; do
        pp=""; [[ $tree == prev ]] && pp=$PWD/.prev
        PYTHONPATH=$pp${pp:+:}$PYTHONPATH run decode_step_1b_lora_$tree 150 $PY $B/bench_decode_step.py \
            --preset llama-3.2-1b --settings slora punica --batches 64 --context 512 --steps 10 --replays 40 \
            --json "$OUT/decode_step_1b_lora_$tree.json"
        PYTHONPATH=$pp${pp:+:}$PYTHONPATH run decode_step_1b_profile_$tree 120 $PY $B/bench_decode_step.py \
            --preset llama-3.2-1b --settings nolora --batches 64 --context 512 --steps 10 --replays 40 --profile \
            --json "$OUT/decode_step_1b_profile_$tree.json"
        PYTHONPATH=$pp${pp:+:}$PYTHONPATH run decode_step_8b_$tree 200 $PY $B/bench_decode_step.py \
            --preset llama-3-8b --settings nolora slora punica --batches 64 --context 512 --steps 10 --replays 20 \
            --json "$OUT/decode_step_8b_$tree.json"
        grep "roofline .* ms" "$OUT/decode_step_1b_lora_$tree.log" "$OUT/decode_step_8b_$tree.log" | tail -n 6
    done
    pack_out
elif [[ "${PART}" == 41 ]]; then  # seventh session, call 2: decode attention with the rotary + KV write in its launch.
    # The GPU tests (paged attention with its rotary cases, the PDL chain, fused ops, engine), then the decode step of
    # three trees side by side: 1fc9995 (the session's start, carried .prev), eaec30e (PDL, carried .alt/pdl) and this
    # tree: 1B no LoRA B 64/128/256 twice in alternation, 1B S-LoRA/Punica B 64, 8B all three at B 64; this tree's
    # 1B B 64 profile
    timeout 280 $PYTEST -n 4 -rf tests/gpu/test_paged_attention_gpu.py tests/gpu/test_pdl_gpu.py \
        tests/gpu/test_fused_ops_gpu.py >"$OUT/tests_ops.log" 2>&1 &
    run tests_engine 240 $PYTEST -rf --tb=short tests/gpu/test_engine_gpu.py
    wait
    tail -n 3 "$OUT/tests_ops.log" "$OUT/tests_engine.log"
    tree_path() { case $1 in start) echo "$PWD/.prev:";; pdl) echo "$PWD/.alt/pdl:";; *) echo "";; esac; }
    for round in 1 2; do
        for tree in start pdl fused; do
            PYTHONPATH=$(tree_path $tree)$PYTHONPATH run decode_step_1b_${tree}_$round 120 $PY $B/bench_decode_step.py \
                --preset llama-3.2-1b --settings nolora --batches 64 128 256 --context 512 --steps 10 --replays 40 \
                --json "$OUT/decode_step_1b_${tree}_$round.json"
            grep "roofline .* ms" "$OUT/decode_step_1b_${tree}_$round.log" | tail -n 3 | sed "s/^/$tree $round /"
        done
    done
    for tree in start fused; do
        PYTHONPATH=$(tree_path $tree)$PYTHONPATH run decode_step_1b_lora_$tree 150 $PY $B/bench_decode_step.py \
            --preset llama-3.2-1b --settings slora punica --batches 64 --context 512 --steps 10 --replays 40 \
            --json "$OUT/decode_step_1b_lora_$tree.json"
        PYTHONPATH=$(tree_path $tree)$PYTHONPATH run decode_step_8b_$tree 200 $PY $B/bench_decode_step.py \
            --preset llama-3-8b --settings nolora slora punica --batches 64 --context 512 --steps 10 --replays 20 \
            --json "$OUT/decode_step_8b_$tree.json"
        grep -h "roofline .* ms" "$OUT/decode_step_1b_lora_$tree.log" "$OUT/decode_step_8b_$tree.log" | sed "s/^/$tree /"
    done
    run decode_step_1b_profile 120 $PY $B/bench_decode_step.py --preset llama-3.2-1b --settings nolora --batches 64 \
        --context 512 --steps 10 --replays 40 --profile --json "$OUT/decode_step_1b_profile.json"
    pack_out
elif [[ "${PART}" == 42 ]]; then  # seventh session, call 3: the fused rotary attention as two variants against the
    # unfused one (eaec30e, carried .alt/pdl): the first (7cc4293, carried .alt/barrier: the new key written, a barrier,
    # read back) and this tree's (the new key's tile taken after the loop from registers); no LoRA at 1B and 8B, B
    # 64/128/256; the paged-attention GPU tests on this tree meanwhile
    timeout 280 $PYTEST -n 2 -rf tests/gpu/test_paged_attention_gpu.py >"$OUT/tests_attention.log" 2>&1 &
    tree_path() { case $1 in pdl) echo "$PWD/.alt/pdl:";; barrier) echo "$PWD/.alt/barrier:";; *) echo "";; esac; }
    for model in llama-3.2-1b llama-3-8b; do
        for tree in pdl barrier peel; do
            decode_nolora_tree "decode_${model}_$tree" "$model" "$(tree_path $tree)"
        done
    done
    wait
    tail -n 3 "$OUT/tests_attention.log"
    pack_out
elif [[ "${PART}" == 43 ]]; then  # seventh session, call 4: the fused rotary attention (barrier form) against the
    # unfused launch (eaec30e, carried .alt/pdl), nothing else on the GPU: no LoRA at 1B and 8B, B 64/128/256, twice
    tree_path() { case $1 in pdl) echo "$PWD/.alt/pdl:";; *) echo "";; esac; }
    for round in 1 2; do
        for model in llama-3.2-1b llama-3-8b; do
            for tree in pdl fused; do
                decode_nolora_tree "decode_${model}_${tree}_$round" "$model" "$(tree_path $tree)"
            done
        done
    done
    pack_out
elif [[ "${PART}" == 44 ]]; then  # seventh session, call 5: the final tree: the engine, paged-attention and PDL GPU
    # tests, then (alone on the GPU) the decode step at 1B (no LoRA B 64/128/256; S-LoRA, Punica B 64) and 8B (B 64)
    run tests_gpu 300 $PYTEST -n 4 -rf tests/gpu/test_engine_gpu.py tests/gpu/test_paged_attention_gpu.py \
        tests/gpu/test_pdl_gpu.py
    tail -n 3 "$OUT/tests_gpu.log"
    run decode_step_1b 150 $PY $B/bench_decode_step.py --preset llama-3.2-1b --settings nolora --batches 64 128 256 \
        --context 512 --steps 10 --replays 40 --json "$OUT/decode_step_1b.json"
    run decode_step_1b_lora 150 $PY $B/bench_decode_step.py --preset llama-3.2-1b --settings slora punica --batches 64 \
        --context 512 --steps 10 --replays 40 --json "$OUT/decode_step_1b_lora.json"
    run decode_step_8b 200 $PY $B/bench_decode_step.py --preset llama-3-8b --settings nolora slora punica --batches 64 \
        --context 512 --steps 10 --replays 20 --json "$OUT/decode_step_8b.json"
    grep -h "roofline .* ms" "$OUT"/decode_step_*.log
    pack_out
elif [[ "${PART}" == 45 ]]; then  # eighth session, call 1: sgmv_gather's one-launch form (commit 2643143, reverted in
    # fe21171 after this call; the block as run): its GPU tests while Triton's cache warmed, then its sweep alone
    echo "PART=45 needs 2643143's tree (benchmarks/kernels/sweep_gather_one.py, GatherConfig.one_*)" >&2
    git show 2643143:benchmarks/device_session.sh | sed -n '/PART}" == 45/,/^elif/p' >&2
elif [[ "${PART}" == 46 ]]; then  # eighth session, call 2: the gather pair past 256 tokens (distinct and partly shared
    # adapters, its parameters around the table's; Triton's cache warmed in parallel first), then the anchor cases
    for i in 0 1 2 3 4 5 6 7; do
        (cd benchmarks/kernels && timeout 240 $PY sweep_gather.py --set large --compile-only --shard $i/8 \
            >"$OUT/compile_$i.log" 2>&1) &
    done
    wait
    tail -n 2 "$OUT"/compile_*.log
    (cd benchmarks/kernels && run sweep_gather_large 330 $PY sweep_gather.py --set large --budget-s 240 \
        --out "$OUT/sweep_gather_large.json")
    tail -n 16 "$OUT/sweep_gather_large.log"
    (cd benchmarks/kernels && run sgmv_anchors 240 $PY bench_sgmv.py --no-grid --out "$OUT/sgmv_anchors")
    tail -n 25 "$OUT/sgmv_anchors.log"
    pack_out
elif [[ "${PART}" == 47 ]]; then  # eighth session, call 3: the final tree's kernel and engine GPU tests
    run tests_gpu 560 $PYTEST -n 8 -rf tests/gpu/test_kernels_gpu.py tests/gpu/test_engine_gpu.py
    tail -n 3 "$OUT/tests_gpu.log"
    pack_out
elif [[ "${PART}" == 48 ]]; then  # eighth session, call 4: the bench_sgmv grid on the final table, alone on the GPU
    (cd benchmarks/kernels && run sgmv_grid 570 $PY bench_sgmv.py --budget-s 500 --out "$OUT/sgmv_grid")
    tail -n 5 "$OUT/sgmv_grid.log"
    pack_out
elif [[ "${PART}" == 49 ]]; then  # eighth session, call 5: the decode step of Punica's setting past 256 sequences (1B, B
    # 512 and 1024, every sequence its own adapter) with the gather pair's new bucket and with the tile kernels
    for mode in gather tiles; do
        flag=""; [[ $mode == tiles ]] && flag=--no-gather
        run decode_1b_punica_$mode 280 $PY $B/bench_decode_step.py --preset llama-3.2-1b --settings punica \
            --batches 512 1024 --context 512 --steps 8 --replays 20 $flag --json "$OUT/decode_1b_punica_$mode.json"
        grep "roofline .* ms" "$OUT/decode_1b_punica_$mode.log" | tail -n 2 | sed "s/^/$mode /"
    done
    pack_out
elif [[ "${PART}" == 50 ]]; then  # eighth session, call 6: the second gather bucket's parameters on small batches, and
    # the tile kernels' two largest buckets swept again (the anchors T 1024 n 64 up and prefill128 qo sit at 1.22-1.27x)
    for i in 0 1 2 3 4 5 6 7; do
        (cd benchmarks/kernels && timeout 200 $PY sweep_gather.py --set table --compile-only --shard $i/8 \
            >"$OUT/compile_g$i.log" 2>&1; timeout 200 $PY sweep_sgmv.py --buckets 1024,2048 --compile-only \
            --shard $i/8 >"$OUT/compile_s$i.log" 2>&1) &
    done
    wait
    (cd benchmarks/kernels && run sweep_gather_table 200 $PY sweep_gather.py --set table --budget-s 150 \
        --out "$OUT/sweep_gather_table.json")
    tail -n 16 "$OUT/sweep_gather_table.log"
    (cd benchmarks/kernels && run sweep_sgmv 240 $PY sweep_sgmv.py --buckets 1024,2048 --out "$OUT/sweep_sgmv")
    tail -n 24 "$OUT/sweep_sgmv.log"
    pack_out
elif [[ "${PART}" == 51 ]]; then  # eighth session, call 7: the gather pair's new launch parameters in both buckets: the
    # kernel and engine GPU tests, then alone on the GPU the anchor cases and Punica's decode step (8B B 64, 1B B 64/256)
    run tests_gpu 300 $PYTEST -n 8 -rf tests/gpu/test_kernels_gpu.py tests/gpu/test_engine_gpu.py
    tail -n 3 "$OUT/tests_gpu.log"
    (cd benchmarks/kernels && run sgmv_anchors 200 $PY bench_sgmv.py --no-grid --out "$OUT/sgmv_anchors")
    grep "n=64 \|n=256 \|n=1024 " "$OUT/sgmv_anchors.log" | head -n 8
    run decode_8b_punica 200 $PY $B/bench_decode_step.py --preset llama-3-8b --settings punica --batches 64 \
        --context 512 --steps 10 --replays 20 --json "$OUT/decode_8b_punica.json"
    run decode_1b_punica 150 $PY $B/bench_decode_step.py --preset llama-3.2-1b --settings punica --batches 64 256 \
        --context 512 --steps 10 --replays 30 --json "$OUT/decode_1b_punica.json"
    grep -h "roofline .* ms" "$OUT"/decode_*.log
    pack_out
elif [[ "${PART}" == 52 ]]; then  # eighth session, call 8: the bench_sgmv grid again on the final table (the gather
    # pair's new parameters), as much of it as 300 s hold, the anchors first
    (cd benchmarks/kernels && run sgmv_grid 360 $PY bench_sgmv.py --budget-s 300 --out "$OUT/sgmv_grid")
    tail -n 3 "$OUT/sgmv_grid.log"
    pack_out
elif [[ "${PART}" == 6 ]]; then  # for the next session: what is still open (issue 3's kernels): every kernel GPU
    # test, then the bench_sgmv grid on the final table (without the whole-K kernel's variant sweep since the eighth
    # session, so that more of its 288 cases fit)
    run tests_kernels 280 $PYTEST -n 8 -rf tests/gpu/test_kernels_gpu.py
    tail -n 3 "$OUT/tests_kernels.log"
    (cd benchmarks/kernels && run sgmv_grid 300 $PY bench_sgmv.py --budget-s 240 --out "$OUT/sgmv_grid")
    pack_out
else
    timeout 150 $PYTEST -n 6 tests/gpu/test_kernels_gpu.py tests/gpu/test_fused_ops_gpu.py \
        tests/gpu/test_paged_attention_gpu.py >"$OUT/tests_kernels.log" 2>&1 &
    run tests_engine 150 $PYTEST -rf --tb=short tests/gpu/test_engine_gpu.py
    wait
    tail -n 4 "$OUT/tests_engine.log" "$OUT/tests_kernels.log"
    run serving_hf 120 $PY $B/bench_serving.py --preset llama-3.2-1b --setting slora --adapters 1000 --slots 64 \
        --rate 40 --no-online --baselines hf --hf-requests 64 --hf-batch 16 --hf-max-s 30 --json "$OUT/serving_hf.json"
    run adapter_scale 130 $PY $B/bench_adapter_scale.py --preset llama-3.2-1b --setting slora \
        --layers 4 --sizes 100 1000 5000 --slots 64 --cpu-cache-gb 0.5 --json "$OUT/adapter_scale.json"
    run decode_step_1b 90 $PY $B/bench_decode_step.py --preset llama-3.2-1b --batches 64 128 256 --context 512 \
        --steps 20 --replays 40 --json "$OUT/decode_step_1b.json"
    run serving_stacks 100 $PY $B/bench_serving.py --preset llama-3.2-1b --setting slora --adapters 1000 --slots 64 \
        --rate 40 --duration 20 --drain-s 5 --baselines none --sample-stacks --json "$OUT/serving_stacks.json"
    $PY -c "import json, sys; [print(n, c) for n, c in json.load(open(sys.argv[1]))['lora']['engine_stacks'][:25]]" \
        "$OUT/serving_stacks.json"
fi
for f in "$OUT"/*.json; do [[ -e $f ]] && $PY $B/summarize.py "$f" 2>/dev/null | tail -25; done
echo "done in ${SECONDS}s"
