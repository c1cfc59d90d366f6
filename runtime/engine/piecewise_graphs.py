"""Piecewise CUDA graphs for the engine's other steps (prefill chunks, prefill mixed with decodes).

A pure-decode step replays one whole-model graph (cuda_graphs.py). A step with a prefill chunk cannot: its
attention depends on the step's sequences (how many rows, how long their queries and contexts are). So, as
vLLM does, the model is cut at attention: piece 0 runs from the embeddings to layer 0's q (k and v written
to the cache), piece i from layer i-1's attention output to layer i's q, and the last piece from the last
attention output to the logits. Each piece is captured once per token-count bucket (with LoRA or not) and
replayed; attention runs eagerly between the pieces on the step's real tokens. An eager step launches
about 1,500 ops and Triton kernels one by one from Python, host-bound at 20-80 ms on a 1B model; replayed,
it launches L + 1 graphs plus the attention ops.

    graphs = MixedGraphs(model, kv_cache, max_tokens=2048, max_rows=64, scratch_slot=s, capture=True, device=d)
    logits = graphs.forward(input_ids, positions, token_slots, attn, logits_indices)  # [B, V]

The step's T tokens are padded to the smallest bucket >= T. Padding tokens are harmless: they write their
K/V to the scratch slot (a KV block no sequence owns), have no adapter (slot -1), never reach attention (it
runs on the first T rows; the padding rows of its output buffer keep stale values, which stay in their own
rows: every op of a piece is row-wise), and their logits are never asked for. Every tensor a piece reads or
writes across pieces lives in a static buffer here (ids, positions, KV slots, LoRA slots and metadata, q,
attention output, residual stream, cos/sin, rows to sample, logits), so the pieces of every bucket share one
memory pool: whatever a piece allocates is dead when it ends. Without `capture` (CPU, tests) the same
pieces run eagerly: what the engine replays on a GPU is tested against the one-piece forward on a CPU.
"""

from __future__ import annotations

import logging

import torch

from loraledger.kernels import LoraMeta

from .attention import AttentionMetadata
from .cuda_graphs import CapturedBuckets
from .kv_cache import KVCache
from .lora_linear import LoRABatch, lora_batch

logger = logging.getLogger(__name__)

__all__ = ["MixedGraphs", "mixed_buckets"]


def mixed_buckets(max_tokens: int) -> tuple[int, ...]:
    """Token counts that get graphs: 16, 32, 64, 128, then about 1.5x steps (192, 256, 384, 512, 768, ...), and
    max_tokens itself; a step computes at most 1.5x its tokens (2x below 128, where a step costs the weights)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    sizes, b = [16, 32, 64, 128], 128
    while b < max_tokens:
        b = b * 3 // 2 if (b & (b - 1)) == 0 else b * 4 // 3
        sizes.append(b)
    return tuple(sorted({s for s in sizes if s < max_tokens} | {max_tokens}))


class MixedGraphs(CapturedBuckets):
    """Static buffers and the captured pieces of one engine's non-decode steps (one stream, one step at a time)."""

    def __init__(
        self,
        model: torch.nn.Module,
        kv_cache: KVCache,
        *,
        max_tokens: int,  # the engine's max_num_batched_tokens: no step computes more
        max_rows: int,  # the engine's max_num_seqs: no step samples more rows
        scratch_slot: int,  # a flat KV slot of a block no sequence owns
        capture: bool,
        device: torch.device,
    ):
        self.model = model
        self.kv_cache = kv_cache
        self.buckets = mixed_buckets(max_tokens)
        self.max_tokens = max_tokens
        self.max_rows = max_rows
        self.scratch_slot = scratch_slot
        self.capture = capture
        self.device = device
        c = model.config
        dtype = model.embed_tokens.weight.dtype
        i64 = {"dtype": torch.int64, "device": device}
        act = {"dtype": dtype, "device": device}
        self._ids = torch.zeros(max_tokens, **i64)
        self._positions = torch.zeros(max_tokens, **i64)
        self._slot_mapping = torch.full((max_tokens,), scratch_slot, **i64)
        self._lora_slots = torch.full((max_tokens,), -1, dtype=torch.int32, device=device)
        self._rows = torch.zeros(max_rows, **i64)
        self._cos = torch.zeros(max_tokens, c.head_dim, **act)
        self._sin = torch.zeros(max_tokens, c.head_dim, **act)
        self._q = torch.zeros(max_tokens, c.num_heads, c.head_dim, **act)
        self._attn = torch.zeros(max_tokens, c.q_size, **act)
        self._residual = torch.zeros(max_tokens, c.hidden_size, **act)
        self._logits = torch.zeros(max_rows, c.vocab_size, dtype=torch.float32, device=device)
        self._lora_meta = LoraMeta(max_tokens, device)
        self._graphs: dict[tuple[int, bool], list[torch.cuda.CUDAGraph]] = {}
        self._failed: set[tuple[int, bool]] = set()
        self._pool = None
        self.num_steps = 0  # steps through the static buffers (replayed, or eager where capture failed)
        self.steps_per_bucket: dict[int, int] = {}

    def stats(self) -> dict:
        return {
            "steps": self.num_steps,
            "steps_per_bucket": dict(self.steps_per_bucket),
            "captured": sorted(self._graphs),
            "failed": sorted(self._failed),
        }

    def bucket(self, num_tokens: int) -> int | None:
        """The smallest bucket >= num_tokens, None when it is larger than every bucket."""
        return next((b for b in self.buckets if b >= num_tokens), None)

    def forward(
        self,
        input_ids: torch.Tensor,  # [T] int64 on the device
        positions: torch.Tensor,  # [T] int64
        token_slots: torch.Tensor | None,  # [T] int32 adapter slot per token (-1 none); None: no adapter at all
        attn: AttentionMetadata,  # the step's real tokens (and their KV slots)
        logits_indices: torch.Tensor,  # [B] int64 rows of T to sample, B <= max_rows
    ) -> torch.Tensor:  # [B, vocab] float32: a view of the static logits buffer, read it before the next step
        t, rows = input_ids.shape[0], logits_indices.shape[0]
        bucket = self.bucket(t)
        if bucket is None or rows > self.max_rows:
            raise ValueError(f"{t} tokens / {rows} rows do not fit ({self.max_tokens} / {self.max_rows})")
        use_lora = token_slots is not None
        key = (bucket, use_lora)
        self.ensure_captured(bucket, use_lora)
        self._ids[:t].copy_(input_ids)
        self._positions[:t].copy_(positions)
        self._slot_mapping[:t].copy_(attn.slot_mapping)
        self._slot_mapping[t:bucket].fill_(self.scratch_slot)
        self._rows[:rows].copy_(logits_indices)
        self._rows[rows:].zero_()
        lora = None
        if use_lora:
            self._lora_slots[:t].copy_(token_slots)
            self._lora_slots[t:bucket].fill_(-1)
            lora = self._lora_batch(bucket)
        self.num_steps += 1
        self.steps_per_bucket[bucket] = self.steps_per_bucket.get(bucket, 0) + 1
        graphs = self._graphs.get(key)
        layers = self.model.layers
        for i in range(len(layers) + 1):
            if i > 0:  # the previous layer's attention, eagerly, on the step's real tokens
                self._attn[:t].copy_(layers[i - 1].self_attn.attend(self._q[:t], self.kv_cache, attn))
            if graphs is None:
                self._piece(i, bucket, lora)
            else:
                graphs[i].replay()
        return self._logits[:rows]

    def _lora_batch(self, bucket: int) -> LoRABatch:
        slots = self._lora_slots[:bucket]
        return lora_batch(slots, self._lora_meta, gather=False)  # mixed steps: the tile kernels

    @torch.inference_mode()
    def _piece(self, i: int, bucket: int, lora: LoRABatch | None) -> None:
        """Piece i over the first `bucket` rows of the static buffers (what graph i of the bucket captures)."""
        m, b = self.model, bucket
        residual = self._residual[:b]
        if i == 0:
            x, cos, sin = m.embed(self._ids[:b], self._positions[:b])
            self._cos[:b].copy_(cos)
            self._sin[:b].copy_(sin)
            stream = None  # layer 0 starts the residual stream from the embeddings
        else:
            x, stream = m.layers[i - 1].after_attention(self._attn[:b], residual, lora)
        if i == len(m.layers):
            self._logits.copy_(m.logits(x, stream, self._rows))
            return
        q, stream = m.layers[i].before_attention(
            x, stream, self._cos[:b], self._sin[:b], self.kv_cache, self._slot_mapping[:b], lora
        )
        self._q[:b].copy_(q)
        if stream.data_ptr() != residual.data_ptr():  # the norms add into the stream in place after layer 0
            residual.copy_(stream)

    def _capture(self, bucket: int, use_lora: bool) -> None:
        key = (bucket, use_lora)
        pieces = len(self.model.layers) + 1
        try:
            # Padding inputs: every row writes the scratch slot, has no adapter, and row 0 is sampled.
            self._slot_mapping[:bucket].fill_(self.scratch_slot)
            self._lora_slots[:bucket].fill_(-1)
            self._rows.zero_()
            current = torch.cuda.current_stream(self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(current)
            graphs = []
            with torch.cuda.stream(side):
                lora = self._lora_batch(bucket) if use_lora else None
                for i in range(pieces):  # warm-up: Triton compiles, cuBLAS picks its kernels
                    self._piece(i, bucket, lora)
                if self._pool is None:
                    self._pool = torch.cuda.graph_pool_handle()
                for i in range(pieces):
                    graph = torch.cuda.CUDAGraph()
                    # thread_local: the adapter loader's thread may issue copies on its own stream meanwhile.
                    # capture_begin/end rather than torch.cuda.graph(): that one runs gc.collect() and
                    # empty_cache() per capture, and a model has dozens of pieces per bucket.
                    graph.capture_begin(pool=self._pool, capture_error_mode="thread_local")
                    try:
                        self._piece(i, bucket, lora)
                    finally:
                        graph.capture_end()
                    graphs.append(graph)
            current.wait_stream(side)
        except Exception:  # a capture that fails leaves this bucket eager, never the server down
            logger.exception("piecewise CUDA graph capture failed for %d tokens (lora=%s); it runs eagerly", *key)
            self._failed.add(key)
            return
        self._graphs[key] = graphs
        logger.info("captured %d pieces for steps of %d tokens (lora=%s)", pieces, bucket, use_lora)
