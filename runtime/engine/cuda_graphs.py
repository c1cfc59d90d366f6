"""CUDA graphs for the engine's pure-decode steps: one captured forward per batch-size bucket.

A decode step (every scheduled row one token) is padded to the smallest bucket that holds it; its inputs
are copied into fixed device buffers, and the graph captured for (bucket, LoRA kind) is replayed: "base" (no
adapter in the step), "tiles" (the SGMV tile kernels, over a LoraMeta built inside the graph) or "gather" (the
token-gather kernels, where kernels.prefers_gather picks them for the step's bucket and distinct adapters).
The graph runs the model up to the logits; sampling stays outside it.

    graphs = DecodeGraphs(model, kv_cache, max_batch=64, block_size=16, max_blocks_per_seq=512,
                          scratch_slot=scratch_block * 16, max_context_len=8192, capture=True)
    logits = graphs.forward(token_ids, positions, slot_mapping, lora_slots, block_tables)  # [bucket, V]

Padding rows are harmless: they read token 0 at position 0, write their K/V to a reserved scratch slot
(a KV block no sequence owns), have context length 0 (the paged-attention kernel gives zeros) and slot -1
(no LoRA); their logits are ignored.

What makes one graph serve every step of its bucket:
- every tensor the graph reads lives at a fixed address: the static input buffers here, the KV cache, the
  adapter slot pool (loading an adapter copies into it in place, so nothing is invalidated) and one LoraMeta
  built inside the graph from the step's token slots (the "tiles" graphs);
- the paged-attention split count is chosen on the host from `max_context_len`, fixed here to the engine's
  max_model_len; each sequence's share of the splits is computed on the device from its own length;
- block tables are [bucket, max_blocks_per_seq]; only the columns a step's longest table needs are copied
  (the kernel reads no entry past a sequence's length, so stale columns are never read).

Captures are lazy (the first step of a bucket): a warm-up forward on a side stream first (Triton compiles
on its first call), then the capture, on torch's side stream, into one memory pool shared by every bucket.
Without `capture` (CPU, tests) the same padded static-buffer forward runs eagerly.
"""

from __future__ import annotations

import abc
import logging

import torch

from loraledger.kernels import LoraMeta, prefers_gather

from .attention import AttentionMetadata
from .kv_cache import KVCache
from .lora_linear import lora_batch

logger = logging.getLogger(__name__)

__all__ = ["NUM_INPUTS", "CapturedBuckets", "DecodeGraphs", "bucket_for", "decode_buckets", "pad_block_tables", "pad_decode_inputs"]

NUM_INPUTS = 5  # token ids, positions, KV slot mapping, context lengths, LoRA slots: one int64 row each


def decode_buckets(max_batch: int) -> tuple[int, ...]:
    """Batch sizes that get a graph: 1, 2, 4, 8, then steps of 8 up to 32, of 16 up to 64, of 32 up to 256,
    of 64 beyond, and max_batch itself; padding wastes at most a few rows where a step costs the weights."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be positive, got {max_batch}")
    sizes = [1, 2, 4, 8]
    b = 8
    while b < max_batch:
        b += 8 if b < 32 else 16 if b < 64 else 32 if b < 256 else 64
        sizes.append(b)
    return tuple(sorted({s for s in sizes if s < max_batch} | {max_batch}))


def bucket_for(batch: int, buckets: tuple[int, ...]) -> int | None:
    """The smallest bucket >= batch (buckets ascending), None when batch is larger than every bucket."""
    for b in buckets:
        if b >= batch:
            return b
    return None


def pad_decode_inputs(
    token_ids: list[int],
    positions: list[int],
    slot_mapping: list[int],
    lora_slots: list[int],
    bucket: int,
    scratch_slot: int,
) -> list[int]:
    """The static input rows of one decode step, flattened: [NUM_INPUTS * bucket] as token ids, positions,
    KV slots, context lengths (position + 1) and LoRA slots, each padded to `bucket` rows with a padding
    row's values (token 0, position 0, the scratch KV slot, context 0, slot -1)."""
    n = len(token_ids)
    if not len(positions) == len(slot_mapping) == len(lora_slots) == n:
        raise ValueError("every input needs one entry per row")
    if n > bucket:
        raise ValueError(f"{n} rows do not fit a bucket of {bucket}")
    pad = bucket - n
    return [
        *token_ids,
        *[0] * pad,
        *positions,
        *[0] * pad,
        *slot_mapping,
        *[scratch_slot] * pad,
        *[p + 1 for p in positions],
        *[0] * pad,
        *lora_slots,
        *[-1] * pad,
    ]


def pad_block_tables(tables: list[list[int]], bucket: int) -> list[list[int]]:
    """[bucket, w] rows, w the longest table: each table padded with block 0 (never read past a sequence's
    length), padding rows all 0."""
    if len(tables) > bucket:
        raise ValueError(f"{len(tables)} rows do not fit a bucket of {bucket}")
    width = max((len(t) for t in tables), default=0)
    rows = [t + [0] * (width - len(t)) for t in tables]
    return rows + [[0] * width for _ in range(bucket - len(tables))]


class CapturedBuckets(abc.ABC):
    """What the engine's two graph runners share: graphs captured per (bucket, LoRA kind) key, lazily on a
    bucket's first step or all at once (`capture_all`); a key whose capture failed stays eager for good.
    A subclass sets `buckets`, `capture`, `_graphs` (key → its captured graphs), `_failed`, and `_capture`,
    and may name its LoRA kinds (`lora_kinds`: without LoRA first; False and True here)."""

    buckets: tuple[int, ...]
    capture: bool
    _graphs: dict
    _failed: set

    @abc.abstractmethod
    def _capture(self, bucket: int, lora) -> None:
        """Captures the graphs of one (bucket, LoRA kind) key into _graphs, or records it in _failed."""

    def lora_kinds(self, bucket: int) -> tuple:
        """The LoRA kinds a bucket's steps can take, the one without LoRA first."""
        return (False, True)

    def ensure_captured(self, bucket: int, lora) -> None:
        """Captures the key's graphs unless they exist, failed before, or capture is off."""
        key = (bucket, lora)
        if self.capture and key not in self._graphs and key not in self._failed:
            self._capture(bucket, lora)

    def capture_all(self, lora: bool = True) -> None:
        """Captures every bucket's graphs now (without and, if `lora`, with each kind of LoRA) instead of on
        first use."""
        for bucket in self.buckets:
            kinds = self.lora_kinds(bucket)
            for kind in kinds if lora else kinds[:1]:
                self.ensure_captured(bucket, kind)


class DecodeGraphs(CapturedBuckets):
    """Static buffers and the captured decode graphs of one engine (one stream, one step at a time)."""

    def __init__(
        self,
        model: torch.nn.Module,
        kv_cache: KVCache,
        *,
        max_batch: int,
        block_size: int,
        max_blocks_per_seq: int,
        scratch_slot: int,  # a flat KV slot of a block no sequence owns
        max_context_len: int,  # bounds every context length: fixes the attention's split count
        capture: bool,
        device: torch.device,
        gather_kernels: bool = True,  # steps of mostly distinct adapters may take the token-gather LoRA kernels
    ):
        self.model = model
        self.gather_kernels = gather_kernels
        self.kv_cache = kv_cache
        self.buckets = decode_buckets(max_batch)
        self.max_batch = max_batch
        self.block_size = block_size
        self.max_blocks_per_seq = max_blocks_per_seq
        self.scratch_slot = scratch_slot
        self.max_context_len = max_context_len
        self.capture = capture
        self.device = device
        i64 = {"dtype": torch.int64, "device": device}
        self._inputs = torch.zeros(NUM_INPUTS * max_batch, **i64)
        self._tables = torch.zeros(max_batch * max_blocks_per_seq, **i64)
        self._arange = torch.arange(max_batch, **i64)
        self._zeros = torch.zeros(max_batch, **i64)
        self._lora_meta = LoraMeta(max_batch, device)
        self._graphs: dict[tuple[int, str], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._failed: set[tuple[int, str]] = set()
        self._pool = None
        self.num_replays = 0  # graph replays
        self.num_steps = 0  # decode steps through the static buffers (replayed, or eager where capture failed)
        self.steps_per_bucket: dict[int, int] = {}  # decode steps through the static buffers, by bucket
        self.last_key: tuple[int, str] | None = None  # (bucket, LoRA kind) of the last step

    def stats(self) -> dict:
        """Steps, replays, steps per bucket, and the (bucket, LoRA kind) keys captured or left eager (failed
        capture)."""
        return {
            "steps": self.num_steps,
            "replays": self.num_replays,
            "steps_per_bucket": dict(self.steps_per_bucket),
            "captured": sorted(self._graphs),
            "failed": sorted(self._failed),
        }

    def views(self, bucket: int) -> dict[str, torch.Tensor]:
        """The static buffers as one bucket's inputs (the same addresses on every step of the bucket)."""
        rows = self._inputs[: NUM_INPUTS * bucket].view(NUM_INPUTS, bucket)
        return {
            "input_ids": rows[0],
            "positions": rows[1],
            "slot_mapping": rows[2],
            "context_lens": rows[3],
            "lora_slots": rows[4],
            "block_tables": self._tables[: bucket * self.max_blocks_per_seq].view(bucket, self.max_blocks_per_seq),
        }

    def fill(
        self,
        token_ids: list[int],
        positions: list[int],
        slot_mapping: list[int],
        lora_slots: list[int],
        block_tables: list[list[int]],
    ) -> int:
        """Pads one decode step to its bucket and copies it into the static buffers (two host→device copies
        from pinned memory, no synchronisation); returns the bucket."""
        bucket = bucket_for(len(token_ids), self.buckets)
        if bucket is None:
            raise ValueError(f"{len(token_ids)} rows exceed the largest bucket {self.buckets[-1]}")
        flat = pad_decode_inputs(token_ids, positions, slot_mapping, lora_slots, bucket, self.scratch_slot)
        self._inputs[: len(flat)].copy_(self._host(flat), non_blocking=True)
        tables = pad_block_tables(block_tables, bucket)
        width = len(tables[0])
        if width > self.max_blocks_per_seq:
            raise ValueError(f"a block table of {width} blocks exceeds {self.max_blocks_per_seq}")
        if width:
            self.views(bucket)["block_tables"][:, :width].copy_(self._host(tables), non_blocking=True)
        return bucket

    def _host(self, values: list) -> torch.Tensor:
        """values as an int64 host tensor, pinned on CUDA: the copy to the device is then truly asynchronous
        (from pageable memory the driver stages it and may wait for the stream)."""
        return torch.tensor(values, dtype=torch.int64, pin_memory=self.device.type == "cuda")

    def forward(
        self,
        token_ids: list[int],
        positions: list[int],
        slot_mapping: list[int],
        lora_slots: list[int],
        block_tables: list[list[int]],
        *,
        input_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:  # [bucket, vocab] float32; rows past len(token_ids) are padding
        """One decode step: fill the buffers, then replay the bucket's graph (captured on first use) or,
        without capture, run the same padded forward eagerly. The returned logits are the graph's output
        buffer: read them before the next step. `input_ids` ([rows] on the device) replaces token_ids: a
        step whose input tokens are still on the device (copied in stream order, no synchronisation)."""
        bucket = bucket_for(len(token_ids), self.buckets)
        kind = self.lora_kind(lora_slots, bucket)
        key = self.last_key = (bucket, kind)
        self.ensure_captured(bucket, kind)
        self.fill(token_ids, positions, slot_mapping, lora_slots, block_tables)
        if input_ids is not None:
            self.views(bucket)["input_ids"][: len(token_ids)].copy_(input_ids)
        self.steps_per_bucket[bucket] = self.steps_per_bucket.get(bucket, 0) + 1
        self.num_steps += 1
        graph = self._graphs.get(key)
        if graph is None:
            return self.run_model(bucket, kind)
        graph[0].replay()
        self.num_replays += 1
        return graph[1]

    def lora_kind(self, lora_slots: list[int], bucket: int) -> str:
        """The LoRA kind of a decode step with these slots (-1: no adapter) padded to bucket."""
        adapters = len({s for s in lora_slots if s >= 0})
        if not adapters:
            return "base"
        return "gather" if self._gathers(bucket, adapters) else "tiles"

    def lora_kinds(self, bucket: int) -> tuple[str, ...]:
        kinds = ("base", "tiles")
        return (*kinds, "gather") if self._gathers(bucket, bucket) else kinds

    def _gathers(self, bucket: int, adapters: int) -> bool:
        """Whether a step of `adapters` distinct adapters padded to bucket takes the token-gather kernels."""
        return self.gather_kernels and prefers_gather(bucket, adapters, self.device)

    def run_model(self, bucket: int, lora_kind: str) -> torch.Tensor:
        """The model over the static buffers of one bucket with one LoRA kind (what the graph captures)."""
        v = self.views(bucket)
        attn = AttentionMetadata(
            slot_mapping=v["slot_mapping"],
            block_tables=v["block_tables"],
            context_lens=v["context_lens"],
            token_seq=self._arange[:bucket],
            token_index=self._zeros[:bucket],
            positions_padded=v["positions"].view(bucket, 1),
            max_query_len=1,
            max_context_len=self.max_context_len,
            num_decode_rows=bucket,
        )
        lora = None
        if lora_kind != "base":
            slots = v["lora_slots"].to(torch.int32)
            lora = lora_batch(slots, self._lora_meta, gather=lora_kind == "gather")
        # Every row's logits (a decode row is one token): no gather of the rows before the final norm.
        return self.model(v["input_ids"], v["positions"], self.kv_cache, attn, lora, None)

    def _fill_padding(self, bucket: int) -> None:
        """Every row a padding row (context 0: the block tables are not read): what the warm-up runs on."""
        flat = pad_decode_inputs([], [], [], [], bucket, self.scratch_slot)
        self._inputs[: len(flat)].copy_(torch.tensor(flat, dtype=torch.int64), non_blocking=True)

    def _capture(self, bucket: int, lora_kind: str) -> None:
        key = (bucket, lora_kind)
        try:
            self._fill_padding(bucket)
            current = torch.cuda.current_stream(self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                self.run_model(bucket, lora_kind)  # warm-up: Triton compiles, cuBLAS picks its kernels
            current.wait_stream(side)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            # thread_local: the adapter loader's thread may issue copies on its own stream meanwhile.
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                out = self.run_model(bucket, lora_kind)
        except Exception:  # a capture that fails leaves this bucket eager, never the server down
            logger.exception("CUDA graph capture failed for decode bucket %d (lora=%s); it runs eagerly", *key)
            self._failed.add(key)
            return
        self._graphs[key] = (graph, out)
        logger.info("captured the decode graph of bucket %d (lora=%s)", bucket, lora_kind)
