"""Sampling parameters and the batched sampler: greedy, temperature, top-k, top-p, per-request seeds."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

__all__ = ["SamplingParams", "sample"]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None  # a seeded request samples the same tokens whatever it is batched with
    stop: tuple[str, ...] = ()  # stop strings; the text is cut before them
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False  # report the log-probability of each sampled token (from the raw logits)

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @functools.cached_property
    def max_stop_len(self) -> int:
        """Length of the longest stop string (0 without any): how much streamed text is held back."""
        return max(map(len, self.stop), default=0)


def sample(
    logits: torch.Tensor,  # [B, V] float32
    params: list[SamplingParams],  # [B]
    generators: list[torch.Generator | None],  # [B] a request's own generator when seeded
    default_generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:  # tokens [B] int64, logprobs [B] float32 (NaN unless a row asked)
    """Greedy rows take the argmax; the others sample from softmax(logits / T) restricted to top-k and top-p.

    Sampling is argmax(probs / E) with E ~ Exp(1) (the Gumbel-max trick in exponential form), so a seeded
    row draws only from its own generator and is independent of the rest of the batch. One sequence of
    batched device ops for every row (one sort serves top-k and top-p); the host sends the rows' parameters
    in one copy and launches one extra op per seeded row only.
    """
    tokens = logits.argmax(dim=-1)
    if any(p.temperature != 0 for p in params):
        tokens = _sample_rows(logits, tokens, params, generators, default_generator)
    if not any(p.logprobs for p in params):  # a pass over [B, V] saved: nobody reads them
        return tokens, torch.full(tokens.shape, math.nan, dtype=torch.float32, device=tokens.device)
    logprobs = logits.gather(1, tokens[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
    return tokens, logprobs


def _sample_rows(
    logits: torch.Tensor,  # [B, V]
    argmax: torch.Tensor,  # [B] the greedy tokens
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    default_generator: torch.Generator,
) -> torch.Tensor:  # [B] greedy rows keep their argmax, the others are sampled
    vocab = logits.shape[1]
    ks = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
    ps = [p.top_p if p.top_p < 1.0 else math.inf for p in params]  # inf: rounding in the cumsum cannot drop
    top_k_on, top_p_on = any(k < vocab for k in ks), any(p < 1.0 for p in ps)
    # Greedy rows run through the same ops at temperature 1 and are replaced by their argmax at the end.
    temps = [p.temperature or 1.0 for p in params]
    rows = torch.tensor([temps, ps, ks, [p.greedy for p in params]], dtype=torch.float32, pin_memory=logits.is_cuda)
    rows = rows.to(logits.device, non_blocking=True)  # [4, B]: one copy for the whole batch, pinned (async)
    scaled = logits / rows[0][:, None]
    if top_k_on or top_p_on:
        drop = _filtered(scaled, rows[1], rows[2].long(), top_k_on=top_k_on, top_p_on=top_p_on)
        scaled = scaled.masked_fill(drop, -math.inf)
    probs = torch.softmax(scaled, dim=-1)
    noise = torch.empty_like(probs).exponential_(generator=default_generator)
    for row, generator in enumerate(generators):
        if generator is not None:
            noise[row].exponential_(generator=generator)  # a seeded row's noise comes from its own generator
    sampled = (probs / noise).argmax(dim=-1)
    return torch.where(rows[3].bool(), argmax, sampled)


def _filtered(
    logits: torch.Tensor,  # [B, V] temperature applied
    top_p: torch.Tensor,  # [B] float32, inf = off
    top_k: torch.Tensor,  # [B] int64, V = off
    *,
    top_k_on: bool,
    top_p_on: bool,
) -> torch.Tensor:  # [B, V] bool: the tokens top-k, then top-p, drop
    """Top-k keeps the tokens at least as likely as the k-th (ties stay); top-p then drops a token when the
    kept tokens strictly more likely than it already reach top_p (keeping at least one). One sort for both."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    if top_k_on:
        kth = sorted_logits.gather(1, (top_k - 1)[:, None])  # [B, 1]
        drop_sorted = sorted_logits < kth
        sorted_logits = sorted_logits.masked_fill(drop_sorted, -math.inf)
    else:
        drop_sorted = torch.zeros_like(sorted_logits, dtype=torch.bool)
    if top_p_on:
        probs = sorted_logits.softmax(dim=-1)
        drop_sorted |= (probs.cumsum(dim=-1) - probs) >= top_p[:, None]
    return torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
