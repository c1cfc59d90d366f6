"""The engine in bf16 on CUDA against transformers+PEFT: logits at least as close to the fp32 truth as PEFT's own
bf16 logits are, and greedy tokens equal to the fp32 truth's over a short horizon (up to the first near-tie, where
bf16 rounding may pick either token)."""

from __future__ import annotations

import pytest
import torch

from loraledger.runtime.engine import Engine, GenerationRequest, SamplingParams
from loraledger.runtime.engine.testing import PAD_ID, make_peft_adapter, make_tiny_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning"),
]

HORIZON = 8
NEAR_TIE = 0.25  # logit margin under which bf16 may legitimately flip the argmax
LORA_STD = 0.05  # A and B entries: the LoRA delta stays a fraction of the base output, as with trained adapters
PROMPTS = [
    "Hello, world",
    "The quick brown fox jumps over the lazy dog, and then some more text to prefill in chunks",
    "a",
    "SELECT name FROM users WHERE id = 7;",
    "LoRA adapters, many of them, on one GPU",
]
MIX = [(None, 0), ("r8_qkvo", 1), ("r16_all", 2), ("r8_qkvo", 3), (None, 4), ("r16_all", 0)]
DIMS = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def setup(request, tmp_path_factory):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tmp = tmp_path_factory.mktemp(request.param)
    base = make_tiny_model(tmp / "model", request.param, **DIMS)
    adapters = {
        "r8_qkvo": make_peft_adapter(
            base, tmp / "a", r=8, targets=["q_proj", "k_proj", "v_proj", "o_proj"], seed=1, std=LORA_STD
        ),
        "r16_all": make_peft_adapter(
            base,
            tmp / "b",
            r=16,
            use_rslora=True,
            seed=2,
            std=LORA_STD,
            targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    }
    peft = {}
    for dtype in (torch.bfloat16, torch.float32):
        hf = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).cuda().eval()
        hf.generation_config.eos_token_id = None
        model = PeftModel.from_pretrained(hf, adapters["r8_qkvo"], adapter_name="r8_qkvo")
        model.load_adapter(adapters["r16_all"], adapter_name="r16_all")
        peft[dtype] = model.eval()
    engine = Engine.from_pretrained(base, device="cuda", max_adapters=2, max_lora_rank=16, max_num_batched_tokens=32)
    for name, path in adapters.items():
        engine.add_adapter(name, path)
    return engine, peft


def _hf(peft, adapter_id, ids, **kw):
    with torch.no_grad():
        if adapter_id is None:
            with peft.disable_adapter():
                return peft.generate(**kw) if kw else peft(ids).logits[0, -1].float()
        peft.set_adapter(adapter_id)
        return peft.generate(**kw) if kw else peft(ids).logits[0, -1].float()


def test_bf16_prefill_logits(setup):
    engine, peft = setup
    captured = []
    handle = engine.model.register_forward_hook(lambda m, a, out: captured.append(out.clone()))
    try:
        for adapter_id, p in MIX:
            engine.generate_batch(
                [
                    GenerationRequest(
                        PROMPTS[p], adapter_id=adapter_id, params=SamplingParams(max_tokens=1, temperature=0)
                    )
                ]
            )
            ids = torch.tensor([engine.tokenizer.encode(PROMPTS[p])], device="cuda")
            truth = _hf(peft[torch.float32], adapter_id, ids)
            peft_bf16_err = (_hf(peft[torch.bfloat16], adapter_id, ids) - truth).abs().max().item()
            err = (captured[-1][0].float() - truth).abs().max().item()
            scale = truth.abs().max().item()
            assert err <= 1.5 * peft_bf16_err + 0.01 * scale, (adapter_id, p, err, peft_bf16_err, scale)
    finally:
        handle.remove()


def test_bf16_mixed_batch_greedy_horizon(setup):
    engine, peft = setup
    params = SamplingParams(max_tokens=HORIZON, temperature=0, ignore_eos=True)
    results = engine.generate_batch([GenerationRequest(PROMPTS[p], adapter_id=a, params=params) for a, p in MIX])
    for (adapter_id, p), res in zip(MIX, results):
        ids = engine.tokenizer.encode(PROMPTS[p])
        out = _hf(
            peft[torch.float32],
            adapter_id,
            None,
            input_ids=torch.tensor([ids], device="cuda"),
            max_new_tokens=HORIZON,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=PAD_ID,
        )
        want = out.sequences[0, len(ids) :].tolist()
        for step, logits in enumerate(out.logits):
            top2 = logits[0].float().topk(2).values
            if (top2[0] - top2[1]).item() < NEAR_TIE:
                break  # a near-tie: past it the two sides may differ legitimately
            assert res.token_ids[step] == want[step], (adapter_id, p, step)
