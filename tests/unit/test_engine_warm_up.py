"""Engine.warm_up: dummy forwards that compile every kernel variant before the first request, and leave no
trace: the KV blocks it borrows go back, the adapters' slots are untouched, and generation afterwards is
what a fresh engine generates."""

from __future__ import annotations

import pytest
import torch

from loraledger.runtime.engine import Engine, GenerationRequest, SamplingParams
from loraledger.runtime.engine.testing import make_peft_adapter, make_tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("m") / "model", "llama")


@pytest.fixture(scope="module")
def adapter(base, tmp_path_factory):
    return make_peft_adapter(base, tmp_path_factory.mktemp("a") / "a", r=4, targets=["q_proj", "down_proj"], seed=3)


def _requests() -> list[GenerationRequest]:
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    return [
        GenerationRequest([5, 9, 13, 2], "a", params),
        GenerationRequest(list(range(3, 40)), None, params),
        GenerationRequest([7] * 19, "a", params),
    ]


def _engine(base, adapter) -> Engine:
    engine = Engine.from_pretrained(
        base, max_adapters=2, max_lora_rank=8, num_kv_blocks=64, block_size=4, max_num_batched_tokens=80
    )
    engine.add_adapter("a", adapter)
    return engine


def test_warm_up_leaves_no_trace(base, adapter):
    fresh = _engine(base, adapter)
    expected = [r.token_ids for r in fresh.generate_batch(_requests())]

    engine = _engine(base, adapter)
    free = engine.scheduler.allocator.num_free
    pool = {name: t.clone() for name, t in engine.slot_pool.lora_a.items()}
    # Token counts up to max_num_batched_tokens, plain and mixed, without and with LoRA: 20 dummy forwards.
    calls = []
    forward = engine.model.forward
    engine.model.forward = lambda *args: calls.append(args[0].shape[0]) or forward(*args)
    seconds = engine.warm_up()
    engine.model.forward = forward
    assert seconds >= 0
    assert sorted(set(calls)) == [1, 2, 17, 64, 65, 80]
    assert len(calls) == 2 * 2 * 6  # (plain, mixed) x (no LoRA, LoRA) per length
    assert engine.scheduler.allocator.num_free == free
    assert all(torch.equal(pool[name], t) for name, t in engine.slot_pool.lora_a.items())
    assert [r.token_ids for r in engine.generate_batch(_requests())] == expected


def test_warm_up_without_enough_free_blocks_is_skipped(base, adapter):
    engine = Engine.from_pretrained(base, max_adapters=1, num_kv_blocks=8, block_size=4, max_num_batched_tokens=80)
    assert engine.warm_up() >= 0  # needs 20 blocks, has 8: skipped with a warning, nothing borrowed
    assert engine.scheduler.allocator.num_free == 8
