"""The demo's base model, built on the spot: a tiny random Llama with a word-level tokenizer over the datanets'
words, whose chat template turns a user message into the datanets' "Q: ... A:" form. No downloads."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

__all__ = ["CHAT_TEMPLATE", "build_base_model"]

SPECIAL = ("<unk>", "<s>", "</s>")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}Q: {{ m['content'] }} A:{% endif %}"
    "{% endfor %}"
)
"""Only user turns reach the model, as "Q: <question> A:": the prefix of every contribution."""


def build_base_model(model_dir: Path, texts: Iterable[str], *, seed: int = 0) -> Path:
    """Writes config.json, model.safetensors, tokenizer.json and tokenizer_config.json into `model_dir`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    pre = pre_tokenizers.Whitespace()
    words: dict[str, None] = {}
    for text in texts:
        for word, _ in pre.pre_tokenize_str(text):
            words.setdefault(word, None)
    vocab = {t: i for i, t in enumerate([*SPECIAL, *sorted(words)])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # "land ." reads "land."
    tokenizer.add_special_tokens(list(SPECIAL))
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(model_dir / "tokenizer.json"))
    (model_dir / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "chat_template": CHAT_TEMPLATE})
    )
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
        initializer_range=0.1, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(model_dir, safe_serialization=True)
    return model_dir
