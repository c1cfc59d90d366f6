"""Tiny random models, tokenizers and PEFT adapters written to disk, for tests and benchmarks (no downloads).

Needs transformers and peft (the runtime extra); imported only by tests and benchmarks.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["TINY_CHAT_TEMPLATE", "lora_state_dict", "make_peft_adapter", "make_tiny_model", "write_tokenizer"]

# ASCII bytes as tokens 0..127, then <s>, </s>, <pad>: every output decodes to valid text.
BOS_ID, EOS_ID, PAD_ID = 128, 129, 130
TINY_VOCAB = 131
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def write_tokenizer(model_dir: str | Path) -> None:
    """A byte-level tokenizer over ASCII (no merges) with <s>/</s>/<pad>, and its tokenizer_config.json."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_char = _bytes_to_unicode()
    vocab = {byte_char[b]: b for b in range(128)}
    assert all(c in alphabet for c in vocab)
    vocab.update({"<s>": BOS_ID, "</s>": EOS_ID, "<pad>": PAD_ID})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in ("<s>", "</s>", "<pad>")])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS_ID)])
    model_dir = Path(model_dir)
    tok.save(str(model_dir / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "chat_template": TINY_CHAT_TEMPLATE}
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character map (what ByteLevel pre-tokenizes into)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def make_tiny_model(model_dir: str | Path, arch: str = "llama", *, seed: int = 0, **overrides) -> Path:
    """A random tiny decoder saved like a Hugging Face checkpoint (safetensors + config + tokenizer).

    llama: GQA (4 query heads, 2 kv heads) with Llama 3 RoPE scaling; qwen2: q/k/v bias; mistral: plain.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config
    from transformers import Qwen2ForCausalLM

    common = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        initializer_range=0.1,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        rope = {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
        config, cls = LlamaConfig(**{**common, "rope_scaling": rope, **overrides}), LlamaForCausalLM
    elif arch == "qwen2":
        config, cls = Qwen2Config(**{**common, **overrides}), Qwen2ForCausalLM
    elif arch == "mistral":
        config, cls = MistralConfig(**{**common, "sliding_window": None, **overrides}), MistralForCausalLM
    else:
        raise ValueError(f"unknown arch {arch!r}")
    torch.manual_seed(seed)
    model = cls(config).eval()
    if arch == "qwen2":  # HF initialises biases to zero; make them matter
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0.0, 0.5)
    model_dir = Path(model_dir)
    model.save_pretrained(model_dir)
    write_tokenizer(model_dir)
    return model_dir


def make_peft_adapter(
    base_dir: str | Path,
    out_dir: str | Path,
    *,
    r: int,
    targets: list[str],
    alpha: float = 16,
    use_rslora: bool = False,
    rank_pattern: dict | None = None,
    alpha_pattern: dict | None = None,
    seed: int = 0,
    std: float = 0.2,
) -> Path:
    """A PEFT LoRA adapter for the model at base_dir with random A and B ~ N(0, std) (so it changes the output)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=targets,
        use_rslora=use_rslora,
        rank_pattern=rank_pattern or {},
        alpha_pattern=alpha_pattern or {},
        init_lora_weights=False,
        lora_dropout=0.0,
    )
    torch.manual_seed(seed)
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, std)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    return out_dir


def lora_state_dict(
    shapes: dict[str, tuple[int, int]],  # projection → (in_features, out_features)
    r: int,
    targets,
    *,
    num_layers: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """A PEFT LoRA state dict under PEFT's names (lora_A [r, in], lora_B [out, r] per layer and target) with
    N(0, 1) values, for tests that need adapter tensors without a base model."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(num_layers):
        for name in targets:
            k, n = shapes[name]
            section = "mlp" if name in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            prefix = f"base_model.model.model.layers.{layer}.{section}.{name}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(r, k, generator=g).to(dtype)
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(n, r, generator=g).to(dtype)
    return tensors


# A small adapter layout for tests of the slot pool and the adapter cache without a model: two layers, four of
# the seven projections served, (in_features, out_features) each.
SMALL_LORA_SHAPES = {"q_proj": (64, 64), "k_proj": (64, 32), "v_proj": (64, 32), "down_proj": (128, 64)}


def small_slot_pool(num_slots: int, *, max_rank: int = 8, dtype: torch.dtype = torch.float32):
    """A CPU SlotPool of `num_slots` slots over SMALL_LORA_SHAPES (two layers)."""
    from ..adapters import SlotPool
    from .model import LORA_PROJECTIONS

    return SlotPool(num_slots=num_slots, num_layers=2, projections=LORA_PROJECTIONS,
                    projection_shapes=SMALL_LORA_SHAPES, max_rank=max_rank, dtype=dtype, device=torch.device("cpu"))


def small_adapter_spec(max_rank: int = 8):
    """The AdapterSpec of small_slot_pool's layout (a 16 MiB file limit)."""
    from ..adapters import AdapterSpec

    return AdapterSpec(2, SMALL_LORA_SHAPES, max_rank=max_rank, max_bytes=1 << 24)
