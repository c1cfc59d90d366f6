"""The piecewise forward of non-decode steps (runtime/engine/piecewise_graphs.py) on a CPU: the same pieces a
GPU captures, run eagerly over the padded static buffers, give the same tokens and logits as the one-piece
forward, for prefill and mixed steps, with and without LoRA, across token-count buckets."""

from __future__ import annotations

import pytest
import torch

from loraledger.runtime.engine import Engine, GenerationRequest, SamplingParams
from loraledger.runtime.engine.piecewise_graphs import MixedGraphs, mixed_buckets
from loraledger.runtime.engine.testing import make_peft_adapter, make_tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def test_mixed_buckets():
    assert mixed_buckets(2048) == (16, 32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
    assert mixed_buckets(512) == (16, 32, 64, 128, 192, 256, 384, 512)
    assert mixed_buckets(100) == (16, 32, 64, 100)
    assert mixed_buckets(8) == (8,)
    big = mixed_buckets(8192)
    assert big[-1] == 8192 and all(b / a <= 2 for a, b in zip(big, big[1:]))
    with pytest.raises(ValueError):
        mixed_buckets(0)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def base(request, tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp(request.param) / "model", request.param)


@pytest.fixture(scope="module")
def adapters(base, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("a")
    return {
        "a": make_peft_adapter(base, tmp / "a", r=4, targets=["q_proj", "v_proj", "down_proj"], seed=1),
        "b": make_peft_adapter(base, tmp / "b", r=8, targets=["k_proj", "o_proj", "gate_proj", "up_proj"], seed=2),
    }


def _run(base, adapters, piecewise: bool):
    engine = Engine.from_pretrained(
        base, max_adapters=2, max_lora_rank=8, num_kv_blocks=96, block_size=4, max_num_batched_tokens=40,
        max_num_seqs=8,
    )
    engine.add_adapter("a", adapters["a"])
    engine.add_adapter("b", adapters["b"])
    mixed = None
    if piecewise:
        # What the engine builds on CUDA, without capture; the scratch slot is a block taken from the allocator.
        scratch = engine.scheduler.allocator.allocate(1)[0]
        mixed = engine._mixed = MixedGraphs(
            engine.model, engine.kv_cache, max_tokens=40, max_rows=8, scratch_slot=scratch * 4, capture=False,
            device=engine.device,
        )
    logits: dict[str, list[torch.Tensor]] = {}
    forward = engine._forward

    def recording(scheduled, *args):
        out, sampled = forward(scheduled, *args)
        for seq, row in zip(sampled, out):
            logits.setdefault(seq.request_id, []).append(row.clone())
        return out, sampled

    engine._forward = recording
    params = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
    prompts = [list(range(3, 3 + n)) for n in (5, 33, 1, 12, 50, 7)]  # 50: chunked over two steps
    kinds = ["a", None, "b", "a", "b", None]
    requests = [GenerationRequest(p, k, params, request_id=str(i)) for i, (p, k) in enumerate(zip(prompts, kinds))]
    for r in requests[:3]:
        engine.add_request(r)
    tokens: dict[str, list[int]] = {}
    step = 0
    while engine.has_unfinished() or step < 3:
        if step == 2:  # arrivals while the first ones decode: mixed steps
            for r in requests[3:]:
                engine.add_request(r)
        for ev in engine.step():
            tokens.setdefault(ev.request_id, []).extend(ev.token_ids)
        step += 1
    return tokens, logits, mixed


def test_piecewise_forward_matches_the_whole_forward(base, adapters):
    want_tokens, want_logits = _run(base, adapters, piecewise=False)[:2]
    got_tokens, got_logits, mixed = _run(base, adapters, piecewise=True)
    assert got_tokens == want_tokens
    for rid, rows in want_logits.items():
        for want, got in zip(rows, got_logits[rid], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    stats = mixed.stats()
    # Prefill and mixed steps went through the pieces, in more than one bucket (with and without LoRA).
    assert stats["steps"] >= 4 and len(stats["steps_per_bucket"]) >= 2, stats
    assert not stats["captured"]  # CPU: nothing captured, the same pieces ran eagerly


def test_piecewise_padding_writes_only_the_scratch_block(base, adapters):
    engine = Engine.from_pretrained(base, max_adapters=2, max_lora_rank=8, num_kv_blocks=16, block_size=4)
    scratch = engine.scheduler.allocator.allocate(1)[0]
    mixed = MixedGraphs(engine.model, engine.kv_cache, max_tokens=32, max_rows=4, scratch_slot=scratch * 4,
                        capture=False, device=engine.device)
    engine._mixed = mixed
    before = engine.kv_cache.k.clone()
    # 5 prompt tokens padded to the 16-token bucket: 11 padding rows.
    engine.generate_batch([GenerationRequest([4, 5, 6, 7, 8], None, SamplingParams(max_tokens=1))])
    changed = (engine.kv_cache.k != before).flatten(2).any(-1)  # [layers, blocks]
    written = set(changed.nonzero()[:, 1].tolist())
    assert mixed.stats()["steps_per_bucket"] == {16: 1}
    assert scratch in written and len(written - {scratch}) == 2  # the prompt's two blocks, and the scratch block
