"""The engine against transformers+PEFT: one mixed batch of adapters and base requests, token for token."""

from __future__ import annotations

import pytest
import torch

from loraledger.runtime.engine import Engine, GenerationRequest, SamplingParams
from loraledger.runtime.engine.testing import PAD_ID, make_peft_adapter, make_tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

MAX_NEW = 12
# Prompts of several lengths: with a 16-token step budget the longer ones are prefilled in chunks
# while the others decode.
PROMPTS = [
    "Hello, world",
    "The quick brown fox jumps over the lazy dog, and then some more text",
    "a",
    "SELECT name FROM users WHERE id = 7;",
    "LoRA adapters, many of them, on one GPU",
    "short one",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor",
]
# (adapter id or None, prompt index): more adapters than the engine's 2 slots, base requests among them.
MIX = [(None, 0), ("r4_qv", 1), ("r8_all", 2), ("r2_mixed", 3), ("r4_qv", 4), (None, 5), ("r8_all", 6), ("r2_mixed", 0)]


def _adapters(base, tmp):
    return {
        "r4_qv": make_peft_adapter(base, tmp / "r4_qv", r=4, targets=["q_proj", "v_proj"], alpha=8, seed=1),
        "r8_all": make_peft_adapter(
            base,
            tmp / "r8_all",
            r=8,
            alpha=16,
            use_rslora=True,
            seed=2,
            targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
        "r2_mixed": make_peft_adapter(
            base,
            tmp / "r2_mixed",
            r=2,
            alpha=4,
            seed=3,
            targets=["o_proj", "gate_proj", "down_proj", "k_proj"],
            rank_pattern={"down_proj": 6},
            alpha_pattern={"k_proj": 10},
        ),
    }


# llama: GQA + Llama 3 RoPE scaling; qwen2: q/k/v bias; mistral: a sliding window shorter than the prompts.
ARCHS = {"llama": {}, "qwen2": {}, "mistral": {"sliding_window": 8}}


@pytest.fixture(scope="module", params=sorted(ARCHS))
def setup(request, tmp_path_factory):
    """(model dir, {adapter id: dir}, HF PeftModel holding every adapter)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tmp = tmp_path_factory.mktemp(request.param)
    base = make_tiny_model(tmp / "model", request.param, **ARCHS[request.param])
    adapters = _adapters(base, tmp)
    hf = AutoModelForCausalLM.from_pretrained(base).eval()
    hf.generation_config.eos_token_id = None  # both sides ignore EOS so every request runs MAX_NEW tokens
    first, *rest = adapters
    peft = PeftModel.from_pretrained(hf, adapters[first], adapter_name=first)
    for name in rest:
        peft.load_adapter(adapters[name], adapter_name=name)
    return base, adapters, peft.eval()


def _hf_greedy(peft, adapter_id, prompt_ids):
    """(tokens, log-softmax of each step's logits) from transformers+PEFT generate with one adapter or none."""
    kwargs = dict(
        input_ids=torch.tensor([prompt_ids]),
        max_new_tokens=MAX_NEW,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=PAD_ID,
    )
    with torch.no_grad():
        if adapter_id is None:
            with peft.disable_adapter():
                out = peft.generate(**kwargs)
        else:
            peft.set_adapter(adapter_id)
            out = peft.generate(**kwargs)
    return out.sequences[0, len(prompt_ids) :].tolist(), torch.log_softmax(torch.cat(out.logits).float(), dim=-1)


def _engine(base, adapters, **kw):
    engine = Engine.from_pretrained(base, max_adapters=2, max_num_batched_tokens=16, max_lora_rank=8, **kw)
    for name, path in adapters.items():
        engine.add_adapter(name, path)
    return engine


def test_mixed_batch_greedy_matches_transformers_peft(setup):
    base, adapters, peft = setup
    engine = _engine(base, adapters)
    params = SamplingParams(max_tokens=MAX_NEW, temperature=0, ignore_eos=True, logprobs=True)
    requests = [GenerationRequest(PROMPTS[p], adapter_id=a, params=params) for a, p in MIX]

    results = engine.generate_batch(requests)

    for (adapter_id, p), res in zip(MIX, results):
        prompt_ids = engine.tokenizer.encode(PROMPTS[p])
        want_tokens, want_logprobs = _hf_greedy(peft, adapter_id, prompt_ids)
        assert res.token_ids == want_tokens, (adapter_id, p)
        got = torch.tensor(res.logprobs)
        want = want_logprobs[torch.arange(MAX_NEW), torch.tensor(want_tokens)]
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        assert res.finish_reason == "length"
        assert res.usage.prompt_tokens == len(prompt_ids) and res.usage.completion_tokens == MAX_NEW
    stats = engine.stats()
    assert stats["kv_blocks_free"] == stats["kv_blocks_total"]
    assert stats["adapters"]["device_evictions"] > 0  # 3 adapters through 2 slots


def test_mixed_prefill_logits_match(setup):
    """Full next-token logits of one step holding every adapter and the base model."""
    base, adapters, peft = setup
    engine = Engine.from_pretrained(base, max_adapters=4, max_lora_rank=8)
    for name, path in adapters.items():
        engine.add_adapter(name, path)
        engine.pin_adapter(name)
    captured = []
    engine.model.register_forward_hook(lambda module, args, out: captured.append(out.clone()))
    params = SamplingParams(max_tokens=1, temperature=0)
    mix = [(None, 0), ("r4_qv", 1), ("r8_all", 2), ("r2_mixed", 3), (None, 4)]

    engine.generate_batch([GenerationRequest(PROMPTS[p], adapter_id=a, params=params) for a, p in mix])

    assert len(captured) == 1  # one step: all five prompts in one batch
    for row, (adapter_id, p) in enumerate(mix):
        ids = torch.tensor([engine.tokenizer.encode(PROMPTS[p])])
        with torch.no_grad():
            if adapter_id is None:
                with peft.disable_adapter():
                    want = peft(ids).logits[0, -1]
            else:
                peft.set_adapter(adapter_id)
                want = peft(ids).logits[0, -1]
        torch.testing.assert_close(captured[0][row], want.float(), atol=1e-4, rtol=1e-4)


def test_in_memory_adapter_equals_folder(setup):
    import json

    from safetensors.torch import load_file

    base, adapters, _ = setup
    engine = _engine(base, {"disk": adapters["r8_all"]})
    folder = adapters["r8_all"]
    engine.add_adapter(
        "mem",
        config=json.loads((folder / "adapter_config.json").read_text()),
        tensors=load_file(folder / "adapter_model.safetensors"),
    )
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    disk, mem = engine.generate_batch(
        [GenerationRequest(PROMPTS[1], adapter_id=a, params=params) for a in ("disk", "mem")]
    )
    assert disk.token_ids == mem.token_ids


def test_config_formats_and_rope_scaling():
    """transformers 4.x (rope_theta + rope_scaling) and 5.x (rope_parameters) configs read the same."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from loraledger.runtime.engine.model import ModelConfig, rope_inv_freq

    scaling = {
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    common = {"model_type": "llama", "vocab_size": 10, "hidden_size": 256, "intermediate_size": 8,
              "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 131072}  # fmt: skip
    old = ModelConfig.from_hf({**common, "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", **scaling}})
    new = ModelConfig.from_hf({**common, "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, **scaling}})
    assert old == new and old.rope_scaling["rope_type"] == "llama3" and old.num_kv_heads == 2
    hf = LlamaConfig(**{k: v for k, v in common.items() if k != "model_type"},
                     rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, **scaling})  # fmt: skip
    want, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, torch.device("cpu"))
    torch.testing.assert_close(rope_inv_freq(old), want.float())
    with pytest.raises(ValueError, match="unsupported RoPE"):
        ModelConfig.from_hf({**common, "rope_scaling": {"type": "yarn", "factor": 4.0}})
    with pytest.raises(ValueError, match="model_type"):
        ModelConfig.from_hf({**common, "model_type": "gpt2"})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_tables_give_the_computed_values(dtype):
    """Model.set_rope_tables (the engine sets it to max_model_len) gathers what embed computes otherwise, bit for
    bit, Llama-3 RoPE scaling included."""
    from loraledger.runtime.engine.model import ModelConfig, random_model

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}  # fmt: skip
    config = ModelConfig(vocab_size=50, hidden_size=64, intermediate_size=96, num_layers=1, num_heads=4,
                         num_kv_heads=2, head_dim=16, max_position_embeddings=4096, rope_scaling=scaling)  # fmt: skip
    model = random_model(config, device=torch.device("cpu"), dtype=dtype)
    ids = torch.randint(0, 50, (37,))
    positions = torch.randint(0, 700, (37,))
    want = model.embed(ids, positions)
    model.set_rope_tables(700)
    got = model.embed(ids, positions)
    assert model.rope_cos.shape == (700, 16) and model.rope_cos.dtype == dtype
    for w, g in zip(want, got, strict=True):
        assert torch.equal(w, g)
