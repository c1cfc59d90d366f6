"""Adapter validation (each bad file rejected with its own error, the engine serving on) and the tiered cache."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from loraledger.runtime.adapters import InvalidAdapterError
from loraledger.runtime.engine import Engine, GenerationRequest, SamplingParams
from loraledger.runtime.engine.testing import (
    SMALL_LORA_SHAPES,
    lora_state_dict,
    make_peft_adapter,
    make_tiny_model,
    small_adapter_spec,
    small_slot_pool,
)
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

GREEDY = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("m") / "model", "llama")


@pytest.fixture(scope="module")
def good(base, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapters")
    return {
        "qv": make_peft_adapter(base, tmp / "qv", r=4, targets=["q_proj", "v_proj"], seed=1),
        "mlp": make_peft_adapter(base, tmp / "mlp", r=8, targets=["gate_proj", "up_proj", "down_proj"], seed=2),
        "o": make_peft_adapter(base, tmp / "o", r=2, targets=["o_proj"], use_rslora=True, alpha=6, seed=3),
        "big": make_peft_adapter(base, tmp / "big", r=16, targets=["q_proj"], seed=4),
    }


@pytest.fixture
def engine(base):
    return Engine.from_pretrained(base, max_adapters=2, max_lora_rank=8, max_adapter_bytes=200_000)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder, **changes):
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _edit_tensors(folder, fn):
    path = folder / "adapter_model.safetensors"
    tensors = fn(load_file(path))
    save_file(tensors, path)


def _first(tensors, half="A"):
    return next(k for k in sorted(tensors) if f"lora_{half}" in k)


def _nan(t):
    k = _first(t)
    t[k] = t[k].clone()
    t[k][0, 0] = float("nan")
    return t


def _inf(t):
    k = _first(t, "B")
    t[k] = t[k].clone()
    t[k][0, 0], t[k][-1, -1] = float("inf"), float("-inf")  # their sum is NaN, each alone inf
    return t


def _drop_b(t):
    del t[_first(t, "B")]
    return t


def _wrong_shape(t):
    k = _first(t)
    t[k] = torch.zeros(t[k].shape[0], t[k].shape[1] + 1)
    return t


def _int_dtype(t):
    k = _first(t)
    t[k] = t[k].to(torch.int32)
    return t


def _rename(t, old, new):
    k = _first(t)
    t[k.replace(old, new)] = t.pop(k)
    return t


BAD = [
    # (id, how to break a copy of the "qv" adapter, file named in the error, words in the error)
    ("no-config", lambda f: (f / "adapter_config.json").unlink(), "adapter_config.json", "missing"),
    (
        "bad-json",
        lambda f: (f / "adapter_config.json").write_text("{not json"),
        "adapter_config.json",
        "not valid JSON",
    ),
    ("no-weights", lambda f: (f / "adapter_model.safetensors").unlink(), "adapter_model.safetensors", "missing"),
    (
        "pickle-only",
        lambda f: (f / "adapter_model.safetensors").rename(f / "adapter_model.bin"),
        "adapter_model.bin",
        "pickle",
    ),
    (
        "not-safetensors",
        lambda f: (f / "adapter_model.safetensors").write_bytes(b"\x00" * 64),
        "adapter_model.safetensors",
        "safetensors",
    ),
    (
        "too-big",
        lambda f: (f / "adapter_model.safetensors").write_bytes(b"\x00" * 300_000),
        "adapter_model.safetensors",
        "over the limit",
    ),
    ("not-lora", lambda f: _edit_config(f, peft_type="IA3"), "adapter_config.json", "peft_type"),
    ("dora", lambda f: _edit_config(f, use_dora=True), "adapter_config.json", "DoRA"),
    ("rank-over-max", lambda f: _edit_config(f, r=32), "adapter_config.json", "r must|rank"),
    (
        "bad-target",
        lambda f: _edit_config(f, target_modules=["q_proj", "embed_tokens"]),
        "adapter_config.json",
        "embed_tokens",
    ),
    ("nan", lambda f: _edit_tensors(f, _nan), "adapter_model.safetensors", "non-finite"),
    ("inf", lambda f: _edit_tensors(f, _inf), "adapter_model.safetensors", "non-finite"),
    ("missing-half", lambda f: _edit_tensors(f, _drop_b), "adapter_model.safetensors", "lora_B is missing"),
    ("shape", lambda f: _edit_tensors(f, _wrong_shape), "adapter_model.safetensors", "do not match the base model"),
    ("dtype", lambda f: _edit_tensors(f, _int_dtype), "adapter_model.safetensors", "dtype"),
    (
        "layer",
        lambda f: _edit_tensors(f, lambda t: _rename(t, "layers.0.", "layers.7.")),
        "adapter_model.safetensors",
        "layer 7",
    ),
    (
        "tensor-target",
        lambda f: _edit_tensors(f, lambda t: _rename(t, "self_attn.q_proj", "self_attn.rotary")),
        "adapter_model.safetensors",
        "rotary",
    ),
    (
        "stray-tensor",
        lambda f: _edit_tensors(f, lambda t: {**t, "lm_head.weight": torch.zeros(2, 2)}),
        "adapter_model.safetensors",
        "unexpected tensor",
    ),
]


@pytest.mark.parametrize(("case", "breaker", "filename", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_adapter_is_rejected_and_the_engine_keeps_serving(engine, good, tmp_path, case, breaker, filename, words):
    folder = _copy(good["qv"], tmp_path / case)
    breaker(folder)
    engine.add_adapter("ok", good["qv"])

    with pytest.raises(InvalidAdapterError, match=words) as info:
        engine.add_adapter(case, folder)

    assert info.value.source.endswith(filename) or filename in info.value.source
    assert str(folder) in str(info.value)
    assert case not in engine.adapter_ids()
    ok, base = engine.generate_batch(
        [GenerationRequest("still serving", adapter_id="ok", params=GREEDY), GenerationRequest("x", params=GREEDY)]
    )
    assert ok.finish_reason == "length" and base.finish_reason == "length"


def test_rank_above_engine_maximum(engine, good):
    with pytest.raises(InvalidAdapterError, match="rank 16 is over the maximum rank 8"):
        engine.add_adapter("big", good["big"])


def test_missing_folder_and_duplicate_id(engine, good, tmp_path):
    with pytest.raises(InvalidAdapterError, match="not a directory"):
        engine.add_adapter("nope", tmp_path / "nope")
    engine.add_adapter("qv", good["qv"])
    with pytest.raises(ValueError, match="already registered"):
        engine.add_adapter("qv", good["qv"])
    with pytest.raises(ValueError, match="base model"):
        engine.add_adapter("base", good["qv"])


def test_rslora_and_patterns_scale(base, tmp_path):
    from loraledger.runtime.adapters import AdapterSpec, read_peft_adapter

    folder = make_peft_adapter(
        base,
        tmp_path / "p",
        r=4,
        alpha=8,
        targets=["q_proj", "down_proj"],
        use_rslora=True,
        rank_pattern={"down_proj": 2},
        alpha_pattern={"layers.1.self_attn.q_proj": 3},
    )
    spec = AdapterSpec(2, {"q_proj": (64, 64), "down_proj": (128, 64)}, max_rank=8, max_bytes=1 << 20)
    weights = read_peft_adapter(folder, spec)
    a, _, scale = weights.modules[(0, "q_proj")]
    assert a.shape[0] == 4 and scale == pytest.approx(8 / math.sqrt(4))
    assert weights.modules[(1, "q_proj")][2] == pytest.approx(3 / math.sqrt(4))
    a, _, scale = weights.modules[(0, "down_proj")]
    assert a.shape[0] == 2 and scale == pytest.approx(8 / math.sqrt(2))


def test_targets_outside_the_pool_are_rejected(base, good):
    engine = Engine.from_pretrained(
        base, max_adapters=2, max_lora_rank=8, lora_targets=("q_proj", "k_proj", "v_proj", "o_proj")
    )
    engine.add_adapter("qv", good["qv"])
    with pytest.raises(InvalidAdapterError, match="not served"):
        engine.add_adapter("mlp", good["mlp"])


def test_lru_tiers_counters_and_pinning(base, good):
    # 2 slots, host budget 0: every device miss reads the disk again; 3 adapters cycle through.
    engine = Engine.from_pretrained(base, max_adapters=2, max_lora_rank=8, cpu_adapter_cache_bytes=0)
    for name in ("qv", "mlp", "o"):
        engine.add_adapter(name, good[name])
    engine.pin_adapter("o")
    alone = {}
    for name in ("qv", "mlp", "o", "qv", "mlp"):
        [res] = engine.generate_batch([GenerationRequest("tiers", adapter_id=name, params=GREEDY)])
        assert alone.setdefault(name, res.token_ids) == res.token_ids
    stats = engine.stats()["adapters"]
    assert stats["disk_reads"] >= 3 and stats["device_evictions"] >= 2
    assert stats["device_hits"] == 5 and stats["load_latency_p50_s"] is not None
    assert stats["disk_load_latency_p50_s"] is not None and stats["disk_read_p50_s"] is not None
    assert stats["host_hits"] + stats["disk_reads"] == stats["device_misses"]
    assert engine.adapters.is_resident("o")  # pinned: never evicted although least recently used
    with pytest.raises(ValueError, match="no slot"):
        engine.pin_adapter("qv")


def test_remove_adapter_fails_queued_requests_and_keeps_serving(base, good):
    engine = Engine.from_pretrained(base, max_adapters=2, max_lora_rank=8)
    engine.add_adapter("qv", good["qv"])
    engine.add_adapter("mlp", good["mlp"])
    running = GenerationRequest(
        "first", adapter_id="qv", params=SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    )
    queued = GenerationRequest("second", adapter_id="mlp", params=GREEDY)
    engine.add_request(running)
    engine.step()  # "first" is running and holds its slot
    engine.add_request(queued)
    engine.remove_adapter("mlp")
    engine.remove_adapter("qv")  # running requests finish on the weights they started with
    events = []
    while engine.has_unfinished():
        events += engine.step()
    last = {e.request_id: e for e in events}
    assert last[queued.request_id].finish_reason == "error" and "mlp" in last[queued.request_id].error
    assert last[running.request_id].finish_reason == "length"
    assert engine.adapter_ids() == []
    with pytest.raises(ValueError, match="unknown adapter"):
        engine.add_request(GenerationRequest("x", adapter_id="qv"))
    engine.add_adapter("qv", good["qv"])  # the slot was freed when the running request finished
    [res] = engine.generate_batch([GenerationRequest("x", adapter_id="qv", params=GREEDY)])
    assert res.finish_reason == "length"


def test_file_broken_on_disk_after_registration_fails_its_requests(base, good, tmp_path):
    folder = _copy(good["mlp"], tmp_path / "later")
    engine = Engine.from_pretrained(base, max_adapters=1, max_lora_rank=8, cpu_adapter_cache_bytes=0)
    engine.add_adapter("later", folder)
    engine.add_adapter("qv", good["qv"])
    engine.generate_batch([GenerationRequest("evict it", adapter_id="qv", params=GREEDY)])
    _edit_tensors(folder, _nan)
    bad, ok = engine.generate_batch(
        [GenerationRequest("y", adapter_id="later", params=GREEDY), GenerationRequest("z", params=GREEDY)]
    )
    assert bad.finish_reason == "error" and "non-finite" in bad.error
    assert ok.finish_reason == "length"


# --- the slot pool's layout and the host tier, without an engine -------------------------------------

SHAPES = SMALL_LORA_SHAPES


def _pool(num_slots=3):
    return small_slot_pool(num_slots)


def _peft_tensors(r, targets, seed):
    """A PEFT state dict of rank r for the SHAPES model."""
    return lora_state_dict(SHAPES, r, targets, num_layers=2, seed=seed)


def test_pool_views_alias_one_slot_contiguous_backing_tensor():
    pool = _pool()
    views = [*pool.lora_a.values(), *pool.lora_b.values()]
    backing = pool.slots.untyped_storage().data_ptr()
    assert all(v.untyped_storage().data_ptr() == backing for v in views)
    assert pool.nbytes == pool.slots.nbytes == 3 * pool.slot_bytes
    assert pool.slot_bytes == pool.bytes_per_slot(2, SHAPES, 8, torch.float32)
    # The per-layer views the kernels get: stride(0) is the slot stride; fused q/k/v share A strides.
    for name in SHAPES:
        assert pool.lora_a[name][1].stride(0) == pool.lora_b[name][1].stride(0) == pool.slot_elems
    assert pool.lora_a["q_proj"][0].stride() == pool.lora_a["k_proj"][0].stride() == pool.lora_a["v_proj"][0].stride()
    assert pool.lora_b["q_proj"][0].stride()[1:] == pool.lora_b["k_proj"][0].stride()[1:]

    # The views are disjoint: filling each with its own value leaves every other one as it was.
    for i, v in enumerate(views):
        v.fill_(i + 1)
    assert all(bool((v == i + 1).all()) for i, v in enumerate(views))

    # Writing one slot's image through the flat view shows up in every view of that slot, nowhere else.
    pool.slots.zero_()
    image = torch.randn(pool.slot_elems)
    pool.slot_image(1).copy_(image)
    assert not pool.slots[0].any() and not pool.slots[2].any()
    for name, (k, n) in SHAPES.items():
        assert not pool.lora_a[name][:, [0, 2]].any() and not pool.lora_b[name][:, [0, 2]].any()
        a_off, b_off = pool._offsets[name]
        a_len, b_len = 2 * 8 * k, 2 * n * 8
        assert torch.equal(pool.lora_a[name][:, 1], image[a_off : a_off + a_len].view(2, 8, k))
        assert torch.equal(pool.lora_b[name][:, 1], image[b_off : b_off + b_len].view(2, n, 8))


def test_packed_adapter_is_one_slot_image_with_scale_folded_and_zero_padding():
    from loraledger.runtime.adapters import adapter_from_tensors

    pool = _pool()
    tensors = _peft_tensors(4, ["q_proj", "down_proj"], seed=5)
    config = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "down_proj"]}
    packed = pool.pack(adapter_from_tensors(config, tensors, small_adapter_spec()), pin_memory=False)
    assert packed.flat.shape == (pool.slot_elems,) and packed.rank == 4

    pool.slots.fill_(7.0)  # stale weights of an earlier adapter: the image overwrites every element
    pool.write(2, packed)
    assert torch.equal(pool.slots[2], packed.flat) and bool((pool.slots[:2] == 7.0).all())
    for layer in range(2):
        prefix = f"base_model.model.model.layers.{layer}"
        a, b = tensors[f"{prefix}.self_attn.q_proj.lora_A.weight"], tensors[f"{prefix}.self_attn.q_proj.lora_B.weight"]
        assert torch.equal(pool.lora_a["q_proj"][layer, 2, :4], a)
        assert torch.allclose(pool.lora_b["q_proj"][layer, 2, :, :4], b * 2.0)
        assert not pool.lora_a["q_proj"][layer, 2, 4:].any() and not pool.lora_b["q_proj"][layer, 2, :, 4:].any()
        assert not pool.lora_a["k_proj"][layer, 2].any()  # not targeted: zeros, rank 0
        assert pool.ranks[layer, :, 2].tolist() == [4, 0, 0, 0, 0, 0, 4]
    pool.clear(2)
    assert not pool.ranks[:, :, 2].any()


def test_host_tier_load_evict_reload_gives_identical_slot_and_counts_host_hits():
    from loraledger.runtime.adapters import AdapterCache

    pool = _pool(num_slots=1)  # in-memory adapters never leave the host tier: the budget holds both
    cache = AdapterCache(pool, small_adapter_spec(), cpu_budget_bytes=2 * pool.host_image_bytes, device=torch.device("cpu"))
    targets = ["q_proj", "k_proj", "v_proj", "down_proj"]
    cache.add("a", config={"r": 8, "target_modules": targets}, tensors=_peft_tensors(8, targets, seed=1))
    cache.add("b", config={"r": 2, "target_modules": ["v_proj"]}, tensors=_peft_tensors(2, ["v_proj"], seed=2))

    def load(adapter_id):
        cache.prefetch([adapter_id])
        cache.poll()
        assert cache.is_resident(adapter_id)
        slot = cache.try_acquire(adapter_id)
        image = (pool.slots[slot].clone(), pool.ranks[:, :, slot].clone())
        cache.release(adapter_id)
        return image

    first = load("a")
    other = load("b")  # evicts "a" from the only slot
    again = load("a")
    assert not cache.is_resident("b")
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    stats = cache.stats_snapshot()
    assert stats["device_misses"] == stats["host_hits"] == 3 and stats["disk_reads"] == 0
    assert stats["device_evictions"] == 2 and stats["copied_bytes"] == 3 * pool.slot_bytes
    assert stats["host_load_latency_p50_s"] is not None and stats["copy_p99_s"] is not None
    assert stats["disk_load_latency_p50_s"] is None and stats["disk_read_p50_s"] is None
    assert stats["load_latency_p50_s"] is not None  # the old key, still exported by the server's metrics
    cache.close()


def test_finite_check_is_exact_and_names_the_module() -> None:
    """The fast finiteness check (one fp32 sum per tensor) never rejects finite values whose sum overflows, and
    a NaN or inf anywhere is reported with its module."""
    from loraledger.runtime.adapters.peft_format import AdapterSpec, adapter_from_tensors

    spec = AdapterSpec(num_layers=2, projection_shapes={"q_proj": (64, 64), "v_proj": (64, 32)}, max_rank=8,
                       max_bytes=1 << 20)
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}

    def tensors():
        return lora_state_dict(spec.projection_shapes, 4, spec.targets, num_layers=2, dtype=torch.bfloat16)

    huge = tensors()
    name = "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"
    huge[name] = torch.full((4, 64), 3e38, dtype=torch.bfloat16)  # finite; their fp32 sum is inf
    assert torch.isinf(huge[name].sum(dtype=torch.float32))
    weights = adapter_from_tensors(config, huge, spec)
    assert len(weights.modules) == 4
    for bad in (float("nan"), float("inf"), float("-inf")):
        broken = tensors()
        key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
        broken[key][5, 2] = bad
        with pytest.raises(InvalidAdapterError, match=r"layers\.1\.self_attn\.v_proj: non-finite"):
            adapter_from_tensors(config, broken, spec)
