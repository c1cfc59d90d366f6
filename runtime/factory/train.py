"""ModelFactory training: a LoRA adapter fine-tuned with peft on datanets, written in PEFT format with its
manifest and attribution index."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..attribution.index import AttributionIndex, Contribution, DatanetShare, SpanParams
from ..attribution.record import BPS, apportion
from ..attribution.service import ATTRIBUTION_DIR
from ..datanets.store import DatanetError, DatanetStore
from .manifest import AdapterManifest, ManifestDatanet, base_model_hash, weights_hash

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_TARGETS", "TrainConfig", "TrainResult", "train_adapter"]

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class TrainConfig:
    base_dir: Path
    datanets: tuple[int, ...]  # local store ids
    out_dir: Path
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    epochs: int = 1
    lr: float = 2e-4
    seed: int = 0
    batch_size: int = 8
    max_seq_tokens: int = 512
    device: str = "auto"  # "auto": cuda when available, else cpu
    influence_dim: int = 0  # > 0: save TracIn gradients projected to this many dimensions
    progress: bool = False

    def validate(self) -> None:
        if not self.datanets:
            raise ValueError("train on at least one datanet")
        if self.rank < 1 or self.alpha <= 0 or self.epochs < 1 or self.lr <= 0 or self.batch_size < 1:
            raise ValueError("rank, alpha, epochs, lr and batch size must be positive")
        if self.max_seq_tokens < 2:
            raise ValueError("max_seq_tokens must be at least 2")
        if not self.targets:
            raise ValueError("name at least one target module")


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    manifest: AdapterManifest
    loss_by_epoch: tuple[float, ...]
    first_loss: float  # mean loss of the first step, before any update
    seconds: float


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def train_adapter(store: DatanetStore, config: TrainConfig) -> TrainResult:
    """Fine-tunes a LoRA adapter on every contribution of `config.datanets` and writes, into `out_dir`:
    adapter_config.json + adapter_model.safetensors (PEFT), manifest.json and attribution/ (the span
    index, plus TracIn gradients with `influence_dim`)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    config.validate()
    t_start = time.perf_counter()
    base_dir = Path(config.base_dir)
    if not (base_dir / "config.json").is_file() or not (base_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{base_dir} is not a Hugging Face model folder (config.json, tokenizer.json)")
    tokenizer = Tokenizer.from_file(str(base_dir / "tokenizer.json"))

    # ---- data: every contribution of the datanets, tokenized as the engine tokenizes outputs
    documents: list[tuple[Contribution, list[int]]] = []
    manifest_datanets: list[ManifestDatanet] = []
    for datanet_id in dict.fromkeys(config.datanets):
        datanet = store.get(datanet_id)
        rows = store.contributions(datanet.id)
        if not rows:
            raise DatanetError(f"datanet {datanet.name!r} has no contributions")
        encoded = tokenizer.encode_batch([r.text for r in rows], add_special_tokens=False)
        tokens = 0
        for row, enc in zip(rows, encoded):
            documents.append((Contribution(datanet.id, row.contributor, row.content_hash), list(enc.ids)))
            tokens += len(enc.ids)
        manifest_datanets.append(
            ManifestDatanet(
                datanet.id, datanet.name, 0, len(rows), tokens, datanet.chain_datanet_id, datanet.network_chain_id
            )
        )
    weights = apportion(BPS, {d.id: d.tokens for d in manifest_datanets})
    for d in manifest_datanets:
        d.weight_bps = weights.get(d.id, 0)
    if any(d.weight_bps == 0 for d in manifest_datanets):
        raise DatanetError("a datanet is too small next to the others to get a basis point of the data share")

    # ---- model
    device = _resolve_device(config.device)
    torch.manual_seed(config.seed)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype).to(device)
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        target_modules=list(config.targets),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    bos, eos = model.config.bos_token_id, model.config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    sequences = []
    for _, ids in documents:
        seq = ([bos] if bos is not None else []) + ids + ([eos] if eos is not None else [])
        sequences.append(seq[: config.max_seq_tokens])
    pad = 0 if eos is None else eos

    # ---- training loop
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    rng = np.random.default_rng(config.seed)
    steps_per_epoch = math.ceil(len(sequences) / config.batch_size)
    loss_by_epoch: list[float] = []
    first_loss = float("nan")
    model.train()
    with tqdm(total=steps_per_epoch * config.epochs, disable=not config.progress, unit="step", desc="training") as bar:
        for epoch in range(config.epochs):
            order = rng.permutation(len(sequences))
            total, count = 0.0, 0
            for start in range(0, len(order), config.batch_size):
                batch = [sequences[i] for i in order[start : start + config.batch_size]]
                input_ids, attention, labels = _collate(batch, pad, device)
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                    loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}; lower --lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                value = float(loss.item())
                if math.isnan(first_loss):
                    first_loss = value
                total, count = total + value, count + 1
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{value:.4f}")
            loss_by_epoch.append(total / count)
            logger.info("epoch %d: mean loss %.4f", epoch + 1, loss_by_epoch[-1])

    # ---- outputs
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    shares = [DatanetShare(d.id, d.weight_bps, d.chain_id) for d in manifest_datanets]
    index = AttributionIndex.build(documents, shares, SpanParams())
    index.save(out_dir / ATTRIBUTION_DIR)
    if config.influence_dim > 0:
        from ..attribution.influence import save_influence

        save_influence(
            model,
            [[t for t in s] for s in sequences],
            out_dir / ATTRIBUTION_DIR,
            dim=config.influence_dim,
            seed=config.seed,
            lr=config.lr,
            progress=config.progress,
        )
    seconds = time.perf_counter() - t_start
    training = {k: v for k, v in asdict(config).items() if k not in ("base_dir", "out_dir", "datanets", "progress")}
    training.update(
        targets=list(config.targets),
        device=device,
        dtype=str(dtype).removeprefix("torch."),
        steps=steps_per_epoch * config.epochs,
        firstLoss=first_loss,
        lossByEpoch=loss_by_epoch,
        seconds=round(seconds, 3),
    )
    manifest = AdapterManifest(
        base_model_path=str(base_dir.resolve()),
        base_model_hash="0x" + base_model_hash(base_dir).hex(),
        weights_hash="0x" + weights_hash(out_dir).hex(),
        datanets=manifest_datanets,
        contribution_hashes=[c.content_hash for c, _ in documents],
        training=training,
        attribution={
            "index": ATTRIBUTION_DIR,
            "method": "spans",
            "tokens": int(index.corpus.shape[0]),
            "influenceDim": config.influence_dim,
        },
        created_at=int(time.time()),
    )
    manifest.save(out_dir)
    return TrainResult(out_dir, manifest, tuple(loss_by_epoch), first_loss, seconds)


def _collate(batch: Sequence[Sequence[int]], pad: int, device: str):
    import torch

    width = max(len(s) for s in batch)
    input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, seq in enumerate(batch):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        labels[i, : len(seq)] = torch.tensor(seq)
    return input_ids.to(device), attention.to(device), labels.to(device)
