"""ModelFactory: a small LoRA run on a tiny Llama made on the fly lowers the loss and writes a loadable adapter."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eth_utils import to_checksum_address

from loraledger.runtime.attribution import AttributionIndex, AttributionService
from loraledger.runtime.cli import main
from loraledger.runtime.datanets import ContributionRow, DatanetStore
from loraledger.runtime.factory import AdapterManifest, TrainConfig, base_model_hash, train_adapter, weights_hash

torch = pytest.importorskip("torch")

CONTRIBUTORS = [to_checksum_address("0x" + c * 40) for c in "abc"]
WORDS = [f"w{i}" for i in range(120)]


def _texts(seed: int = 0, n: int = 12, length: int = 24) -> list[str]:
    """Runs of consecutive words from random starts: learnable (w_i -> w_i+1), and each text distinct."""
    rng = np.random.default_rng(seed)
    starts = rng.choice(len(WORDS), size=n, replace=False)
    return [" ".join(WORDS[(s + k) % len(WORDS)] for k in range(length)) for s in starts]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A 2-layer Llama (hidden 64) with a word-level tokenizer.json built here: no downloads."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.2,  # logits large enough for a few LoRA steps to move them
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture
def store(tmp_path):
    with DatanetStore(tmp_path / "d.db") as s:
        d = s.create("tiny")
        s.add(d, [ContributionRow(t, CONTRIBUTORS[i % 3]) for i, t in enumerate(_texts())])
        yield s


@pytest.mark.slow
def test_training_lowers_loss_and_writes_a_loadable_adapter(base_dir, store, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "tiny-adapter"
    targets = ("q_proj", "v_proj", "o_proj", "down_proj")
    config = TrainConfig(base_dir, (1,), out, rank=4, alpha=8, targets=targets, epochs=6, lr=2e-2, batch_size=4)
    result = train_adapter(store, config)
    assert result.loss_by_epoch[-1] < result.first_loss * 0.8
    assert list(result.loss_by_epoch) == sorted(result.loss_by_epoch, reverse=True)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()

    manifest = AdapterManifest.load(out)
    assert manifest.weights_hash == "0x" + weights_hash(out).hex()
    assert manifest.base_model_hash == "0x" + base_model_hash(base_dir).hex()
    assert manifest.contribution_hashes == [c.content_hash for c in store.contributions(1)]
    assert [(d.name, d.weight_bps, d.contributions) for d in manifest.datanets] == [("tiny", 10_000, 12)]
    assert manifest.training["rank"] == 4 and manifest.training["lossByEpoch"] == list(result.loss_by_epoch)

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(base, out)
    trained = dict(model.named_parameters())
    assert any("lora_B" in n and trained[n].abs().sum() > 0 for n in trained)

    # the index tokenizes contributions as the engine would, and a training text attributes to its contributor
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(base_dir / "tokenizer.json"))
    text = store.contributions(1)[4].text
    record = AttributionService(tmp_path).attribute("tiny-adapter", tok.encode(text, add_special_tokens=False).ids)
    weights = {c.address: c.weight_bps for c in record.contributors}
    assert record.method == "spans" and max(weights, key=weights.get) == CONTRIBUTORS[4 % 3]


@pytest.mark.slow
def test_influence_method_gives_a_valid_record(base_dir, store, tmp_path):
    from peft import PeftModel
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    from loraledger.runtime.attribution.influence import influence_record

    out = tmp_path / "infl"
    config = TrainConfig(base_dir, (1,), out, rank=2, targets=("q_proj",), epochs=2, lr=5e-3, influence_dim=32)
    train_adapter(store, config)
    assert np.load(out / "attribution" / "influence.npy").shape == (12, 32)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out)
    index = AttributionIndex.load(out / "attribution")
    tok = Tokenizer.from_file(str(base_dir / "tokenizer.json"))
    ids = tok.encode(store.contributions(1)[0].text, add_special_tokens=False).ids
    first = influence_record(model, index, out / "attribution", ids, adapter="infl")
    assert first.method in ("influence", "data-share")
    assert sum(c.weight_bps for c in first.contributors) == 10_000
    assert influence_record(model, index, out / "attribution", ids, adapter="infl").hash == first.hash


@pytest.mark.slow
def test_train_command(base_dir, tmp_path, capsys):
    db = str(tmp_path / "cli.db")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": t, "contributor": CONTRIBUTORS[0]}) + "\n" for t in _texts(1, n=4)))
    assert main(["datanets", "create", "cli", "--store", db]) == 0
    assert main(["datanets", "add", "cli", str(rows), "--store", db, "--quiet"]) == 0
    out = tmp_path / "cli-adapter"
    argv = ["train", "--base", str(base_dir), "--datanet", "cli", "--out", str(out), "--rank", "2", "--epochs", "1"]
    assert main([*argv, "--targets", "q_proj", "--lr", "1e-3", "--seed", "3", "--quiet", "--store", db]) == 0
    printed = capsys.readouterr().out
    assert "loss: first step" in printed and (out / "manifest.json").is_file()
    assert main(["train", "--base", str(tmp_path), "--datanet", "cli", "--out", str(out), "--store", db]) == 1
