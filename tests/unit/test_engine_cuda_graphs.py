"""The CPU-testable parts of the decode CUDA graphs: buckets, padding, the static buffers, and the padded
static-buffer forward (what a graph captures) run eagerly against the engine's own eager step."""

from __future__ import annotations

import pytest
import torch

from loraledger.runtime.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from loraledger.runtime.engine.cuda_graphs import (
    NUM_INPUTS,
    DecodeGraphs,
    bucket_for,
    decode_buckets,
    pad_block_tables,
    pad_decode_inputs,
)
from loraledger.runtime.engine.testing import make_peft_adapter, make_tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def test_decode_buckets():
    assert decode_buckets(64) == (1, 2, 4, 8, 16, 24, 32, 48, 64)
    assert decode_buckets(1) == (1,)
    assert decode_buckets(5) == (1, 2, 4, 5)
    assert decode_buckets(100) == (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 100)
    big = decode_buckets(512)
    assert big[-1] == 512 and list(big) == sorted(set(big))
    assert all(b / a <= 2 for a, b in zip(big, big[1:]))  # padding at most doubles a batch
    with pytest.raises(ValueError):
        decode_buckets(0)


def test_bucket_for():
    buckets = decode_buckets(64)
    assert [bucket_for(n, buckets) for n in (1, 2, 3, 5, 8, 9, 33, 48, 49, 64)] == [1, 2, 4, 8, 8, 16, 48, 48, 64, 64]
    assert bucket_for(65, buckets) is None


def test_pad_decode_inputs_layout():
    flat = pad_decode_inputs([11, 12], [5, 9], [37, 70], [3, -1], bucket=4, scratch_slot=999)
    assert len(flat) == NUM_INPUTS * 4
    rows = [flat[i * 4 : (i + 1) * 4] for i in range(NUM_INPUTS)]
    assert rows == [
        [11, 12, 0, 0],  # token ids
        [5, 9, 0, 0],  # positions
        [37, 70, 999, 999],  # KV slots: padding rows write to the scratch slot
        [6, 10, 0, 0],  # context lengths: position + 1, 0 for padding (attention gives zeros)
        [3, -1, -1, -1],  # LoRA slots: padding rows have none
    ]
    with pytest.raises(ValueError):
        pad_decode_inputs([1, 2, 3], [0, 1, 2], [0, 1, 2], [-1] * 3, bucket=2, scratch_slot=0)
    with pytest.raises(ValueError):
        pad_decode_inputs([1], [0, 1], [0], [-1], bucket=2, scratch_slot=0)


def test_pad_block_tables():
    assert pad_block_tables([[4, 5, 6], [7]], 4) == [[4, 5, 6], [7, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert pad_block_tables([], 2) == [[], []]
    with pytest.raises(ValueError):
        pad_block_tables([[1], [2], [3]], 2)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("m") / "model", "llama")


@pytest.fixture(scope="module")
def adapters(base, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("a")
    return {
        "a": make_peft_adapter(base, tmp / "a", r=4, targets=["q_proj", "v_proj", "down_proj"], seed=1),
        "b": make_peft_adapter(base, tmp / "b", r=8, targets=["k_proj", "o_proj", "gate_proj", "up_proj"], seed=2),
    }


def _static_graphs(engine: Engine, scratch_block: int) -> DecodeGraphs:
    """What the engine builds on CUDA, without capture: the padded static-buffer forward runs eagerly."""
    bs = engine.config.block_size
    return DecodeGraphs(
        engine.model,
        engine.kv_cache,
        max_batch=engine.config.max_num_seqs,
        block_size=bs,
        max_blocks_per_seq=-(-engine.max_model_len // bs),
        scratch_slot=scratch_block * bs,
        max_context_len=engine.max_model_len,
        capture=False,
        device=engine.device,
    )


def test_static_buffers_fill(base):
    engine = Engine.from_pretrained(base, max_adapters=2, max_lora_rank=8, num_kv_blocks=32, block_size=4)
    graphs = _static_graphs(engine, scratch_block=31)
    bucket = graphs.fill([7, 8, 9], [4, 0, 6], [21, 40, 50], [1, -1, 0], [[2, 5], [10], [11, 12]])
    assert bucket == 4
    v = graphs.views(4)
    assert v["input_ids"].tolist() == [7, 8, 9, 0]
    assert v["slot_mapping"].tolist() == [21, 40, 50, 31 * 4]
    assert v["context_lens"].tolist() == [5, 1, 7, 0]
    assert v["lora_slots"].tolist() == [1, -1, 0, -1]
    assert v["block_tables"][:, :2].tolist() == [[2, 5], [10, 0], [11, 12], [0, 0]]
    # A later, smaller step in the same bucket rewrites only the columns its tables need.
    # (Stale columns are never read: each row's context length bounds the blocks the kernel reads.)
    assert graphs.fill([1, 2, 3], [0, 1, 2], [8, 12, 16], [-1] * 3, [[2], [3], [4]]) == 4
    assert graphs.views(4)["block_tables"][:, :2].tolist() == [[2, 5], [3, 0], [4, 12], [0, 0]]
    graphs.fill([1], [0], [8], [-1], [[2]])
    assert graphs.views(1)["input_ids"].tolist() == [1]
    with pytest.raises(ValueError):
        graphs.fill([0] * 65, [0] * 65, [0] * 65, [-1] * 65, [[0]] * 65)


def test_padding_rows_write_only_the_scratch_block(base, adapters):
    engine = Engine.from_pretrained(base, max_adapters=2, max_lora_rank=8, num_kv_blocks=16, block_size=4)
    engine.kv_cache.k.normal_()
    engine.kv_cache.v.normal_()
    k_before, v_before = engine.kv_cache.k.clone(), engine.kv_cache.v.clone()
    graphs = _static_graphs(engine, scratch_block=15)
    # Three real rows (bucket 4: one padding row), at flat slots 9, 20 and 33.
    logits = graphs.forward([3, 4, 5], [1, 4, 1], [9, 20, 33], [-1, -1, -1], [[2], [0, 5], [8]])
    assert logits.shape[0] == 4 and torch.isfinite(logits).all()
    changed = (engine.kv_cache.k != k_before).flatten(3).any(-1) | (engine.kv_cache.v != v_before).flatten(3).any(-1)
    slots = changed.any(0).flatten().nonzero().flatten().tolist()  # flat slots written in any layer
    assert set(slots) <= {9, 20, 33, *range(15 * 4, 16 * 4)}
    assert {9, 20, 33} <= set(slots)


@pytest.mark.parametrize("max_num_seqs", [8, 3])
def test_static_buffer_decode_matches_eager_engine(base, adapters, max_num_seqs):
    """A mixed workload (two adapters and base, chunked prefill, requests finishing at different steps so the
    decode batch shrinks through buckets, an adapter loaded between steps): every pure-decode step through the
    padded static buffers gives the eager engine's tokens and logprobs."""
    prompts = ["Hello there", "a", "The quick brown fox jumps", "SELECT 1;", "xyz", "LoRA on one GPU"]
    mix = [None, "a", "b", "a", None, "b"]

    def run(static: bool):
        engine = Engine.from_pretrained(
            base, max_adapters=2, max_lora_rank=8, num_kv_blocks=64, block_size=4, max_num_seqs=max_num_seqs,
            max_num_batched_tokens=8,
        )
        engine.add_adapter("a", adapters["a"])
        if static:
            engine.kv_cache = _grown_cache(engine)  # block 64: the scratch block, which no sequence gets
            engine._graphs = _static_graphs(engine, scratch_block=64)
        results = {}
        step = 0
        reqs = []
        for i, (p, a) in enumerate(zip(prompts, mix)):
            params = SamplingParams(max_tokens=3 + 2 * i, temperature=0, ignore_eos=True, logprobs=True)
            reqs.append(GenerationRequest(p, adapter_id=a, params=params, request_id=str(i)))
        engine.add_request(reqs[0])
        engine.add_request(reqs[1])
        pending = reqs[2:]
        while engine.has_unfinished() or pending:
            if step == 2:
                engine.add_adapter("b", adapters["b"])  # loaded between steps
            if step >= 3 and step % 2 and pending:
                engine.add_request(pending.pop(0))
            for ev in engine.step():
                tokens, logprobs = results.setdefault(ev.request_id, ([], []))
                tokens += ev.token_ids
                logprobs += ev.logprobs or ()
            step += 1
        return engine, results

    _, eager = run(static=False)
    static_engine, static = run(static=True)
    used = static_engine._graphs.steps_per_bucket
    assert len(used) >= 2 and sum(used.values()) >= 10, used  # the batch moved through buckets
    assert sorted(static) == sorted(eager)
    for rid in eager:
        assert static[rid][0] == eager[rid][0], rid
        assert static[rid][1] == pytest.approx(eager[rid][1], abs=1e-4), rid


def _grown_cache(engine: Engine):
    """The engine's KV cache with one more (scratch) block, as the engine allocates it on CUDA with graphs."""
    from loraledger.runtime.engine.kv_cache import KVCache

    k = engine.kv_cache.k
    return KVCache(
        num_layers=k.shape[0],
        num_blocks=k.shape[1] + 1,
        block_size=k.shape[2],
        num_kv_heads=k.shape[3],
        head_dim=k.shape[4],
        dtype=k.dtype,
        device=k.device,
    )


def test_cuda_graphs_flag_is_ignored_on_cpu(base):
    engine = Engine.from_pretrained(base, max_adapters=1, num_kv_blocks=8, block_size=4, cuda_graphs=True)
    assert engine._graphs is None and engine.kv_cache.num_blocks == 8
    assert EngineConfig().cuda_graphs is True
    out = engine.generate_batch([GenerationRequest("abc", params=SamplingParams(max_tokens=2, temperature=0))])
    assert len(out[0].token_ids) == 2


_HOST_READS = ("tolist", "item", "cpu", "numpy", "__bool__", "__int__", "__float__")


def test_a_step_reads_from_the_device_once(base, monkeypatch):
    """The step's one host synchronisation, counted: every tensor → host read (.tolist, .item, .cpu, bool/int/
    float of a tensor) inside step(), on eager prefill steps and on decode steps through the static buffers,
    with greedy, sampled, seeded and stop-string requests (base model: on CPU the LoRA path is the kernels'
    torch reference, which reads the slots on the host)."""
    engine = Engine.from_pretrained(base, max_adapters=2, max_lora_rank=8, num_kv_blocks=64, block_size=4)
    engine.kv_cache = _grown_cache(engine)
    engine._graphs = _static_graphs(engine, scratch_block=64)
    reads = []
    for name in _HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(tensor, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    params = [
        SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, logprobs=True),
        SamplingParams(max_tokens=6, temperature=0.8, top_k=5, top_p=0.9, seed=7, ignore_eos=True),
        SamplingParams(max_tokens=6, temperature=1.0, stop=("zz", "qq"), ignore_eos=True),
    ]
    for i, p in enumerate(params):
        engine.add_request(GenerationRequest(["Hello there", "abc", "LoRA on one GPU"][i], params=p))
    per_step = []
    while engine.has_unfinished():
        before = len(reads)
        events = engine.step()
        if any(ev.token_ids for ev in events):
            per_step.append(len(reads) - before)
    assert engine._graphs.num_steps >= 4  # the decode steps went through the static buffers
    assert per_step == [1] * len(per_step), reads
