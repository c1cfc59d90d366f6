"""Optional gradient-based attribution (TracIn with one checkpoint) on the LoRA parameters, for small models.

At training time, each contribution's loss gradient with respect to the LoRA parameters (P numbers) is
multiplied by a fixed random Gaussian matrix R (P x k, scaled by 1/sqrt(k), regenerated from a seed in
chunks, never stored) and the k-vector is saved: `influence.npy` [n, k] float32. For an output, the
same is done for the output's loss, and contribution i's influence is lr·<R·g_i, R·g_out>, which by
Johnson-Lindenstrauss approximates lr·<g_i, g_out> (TracIn's score at the final checkpoint). Positive
influences (proponents) are summed per contributor.

Cost: at training, one extra forward and backward per contribution (about one more epoch) plus P·k
multiply-adds each for the projection; storage 4·k bytes per contribution (k = 256: 100 MB per 100,000
contributions). Per call: one forward and backward of the base model with the adapter over the output
(hundreds of milliseconds on CPU for a small model; a GPU-step budget for a large one) plus P·k for the
projection and n·k for the scores. That is why span matching is the default and this method is for
small models and audits.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .index import AttributionIndex
from .record import AttributionRecord, combine_datanets

logger = logging.getLogger(__name__)

__all__ = ["GradientProjector", "influence_record", "lora_gradient", "save_influence"]

_CHUNK = 1 << 16


class GradientProjector:
    """Projects flattened LoRA gradients (P) to k dimensions with a seeded Gaussian matrix, chunk by chunk."""

    def __init__(self, num_params: int, dim: int, seed: int):
        if dim < 1:
            raise ValueError("projection dimension must be at least 1")
        self.num_params, self.dim, self.seed = num_params, dim, seed

    def project(self, grad: torch.Tensor) -> np.ndarray:
        """grad: float [P] -> float32 [k]."""
        gen = torch.Generator().manual_seed(self.seed)
        out = torch.zeros(self.dim, dtype=torch.float64)
        flat = grad.detach().to("cpu", torch.float64)
        for start in range(0, self.num_params, _CHUNK):
            stop = min(self.num_params, start + _CHUNK)
            r = torch.randn(stop - start, self.dim, generator=gen, dtype=torch.float64)
            out += flat[start:stop] @ r
        return (out / self.dim**0.5).to(torch.float32).numpy()


def _lora_params(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if "lora_" in n]


def lora_gradient(model: torch.nn.Module, token_ids: Sequence[int]) -> torch.Tensor:
    """The flattened gradient of the mean next-token loss over `token_ids` w.r.t. the LoRA parameters."""
    params = _lora_params(model)
    if not params:
        raise ValueError("the model has no LoRA parameters")
    device = params[0][1].device
    ids = torch.tensor([list(token_ids)], dtype=torch.long, device=device)
    if ids.shape[1] < 2:
        raise ValueError("need at least two tokens for a next-token loss")
    flags = [p.requires_grad for _, p in params]
    try:
        for _, p in params:
            p.requires_grad_(True)  # a PeftModel loaded for inference has them frozen
        loss = model(input_ids=ids, labels=ids).loss
        grads = torch.autograd.grad(loss, [p for _, p in params])
    finally:
        for (_, p), flag in zip(params, flags):
            p.requires_grad_(flag)
    return torch.cat([g.reshape(-1) for g in grads])


def save_influence(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    directory: Path,
    *,
    dim: int,
    seed: int,
    lr: float,
    progress: bool = False,
) -> None:
    """Saves the projected gradient of every training sequence (in index order) under `directory`."""
    from tqdm import tqdm

    params = _lora_params(model)
    projector = GradientProjector(sum(p.numel() for _, p in params), dim, seed)
    rows = np.zeros((len(sequences), dim), dtype=np.float32)
    was_training = model.training
    model.eval()
    for i, seq in enumerate(tqdm(sequences, disable=not progress, desc="influence gradients", unit="contribution")):
        if len(seq) >= 2:
            rows[i] = projector.project(lora_gradient(model, seq))
    model.train(was_training)
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "influence.npy", rows)
    meta = {"dim": dim, "seed": seed, "lr": lr, "numParams": projector.num_params, "params": [n for n, _ in params]}
    (directory / "influence.json").write_text(json.dumps(meta) + "\n")


def influence_record(
    model: torch.nn.Module, index: AttributionIndex, directory: Path, token_ids: Sequence[int], *, adapter: str
) -> AttributionRecord:
    """The attribution record of an output by gradient influence (`model` is the base with the adapter loaded)."""
    meta = json.loads((directory / "influence.json").read_text())
    rows = np.load(directory / "influence.npy", allow_pickle=False)
    if rows.shape[0] != len(index.contributions):
        raise ValueError("influence rows and index contributions disagree")
    params = _lora_params(model)
    if [n for n, _ in params] != meta["params"]:
        raise ValueError("the model's LoRA parameters differ from those the influence was saved for")
    projector = GradientProjector(meta["numParams"], meta["dim"], meta["seed"])
    was_training = model.training
    model.eval()
    test = projector.project(lora_gradient(model, token_ids)).astype(np.float64)
    model.train(was_training)
    influence = meta["lr"] * (rows.astype(np.float64) @ test)
    scores: dict[int, dict[str, int]] = {}
    record_id = {d.id: d.record_id for d in index.datanets}
    top = float(influence.max(initial=0.0))
    if top > 0:
        # integers relative to the largest influence keep the record's weights machine-independent
        quantized = np.floor(np.clip(influence, 0, None) / top * 1_000_000).astype(np.int64)
        for c, q in zip(index.contributions, quantized.tolist()):
            if q > 0:
                per = scores.setdefault(record_id[c.datanet], {})
                per[c.contributor] = per.get(c.contributor, 0) + q
    datanets, contributors = combine_datanets(
        [(d.record_id, d.weight_bps) for d in index.datanets], scores, index.data_shares
    )
    return AttributionRecord(
        adapter=adapter,
        method="influence" if scores else "data-share",
        output_tokens=len(token_ids),
        params={"influenceDim": int(meta["dim"])},
        spans=(),
        datanets=datanets,
        contributors=contributors,
    )
