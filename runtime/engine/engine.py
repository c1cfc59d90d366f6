"""The engine: requests in, a step loop (schedule → one forward over the mixed batch → sample), token events out.

    engine = Engine.from_pretrained("/models/llama", device="cuda", max_adapters=64)
    engine.add_adapter("sql-expert", "/adapters/sql-expert")
    engine.start()
    async for event in engine.generate(GenerationRequest("SELECT", adapter_id="sql-expert")):
        print(event.text, end="")
    engine.stop()

Threading: one step thread owns the scheduler, the KV cache and the model. Other threads talk to it
through an inbox (add, abort), and it answers through per-request sinks; `generate` bridges those to
asyncio. Without `start()`, `step()` and `generate_batch()` drive the same loop synchronously.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from loraledger.kernels import LoraMeta

from ..adapters.cache import AdapterCache
from ..adapters.peft_format import AdapterSpec
from ..adapters.slots import SlotPool
from .attention import AttentionMetadata
from .cuda_graphs import DecodeGraphs
from .kv_cache import BlockAllocator, KVCache
from .lora_linear import LoRABatch, SliceBuffers
from .model import LORA_PROJECTIONS, Transformer, load_model
from .sampling import SamplingParams, sample
from .scheduler import Scheduler, Sequence
from .tokenizer import Detokenizer, Tokenizer

logger = logging.getLogger(__name__)

__all__ = ["Engine", "EngineConfig", "GenerationEvent", "GenerationRequest", "GenerationResult", "Usage"]

BASE_ADAPTER_ID = "base"
_FUSED = ((0, 3), (3, 4), (4, 6), (6, 7))  # LORA_PROJECTIONS ranges of qkv, o, gate_up, down


@dataclass(frozen=True)
class EngineConfig:
    device: str = "cpu"
    dtype: torch.dtype | None = None  # default: bfloat16 on CUDA, float32 on CPU
    max_model_len: int | None = None  # default: min(the model's max positions, 8192)
    block_size: int = 16
    num_kv_blocks: int | None = None  # default: from kv_cache_bytes (CPU) or the free GPU memory
    kv_cache_bytes: int = 1 << 30  # CPU default budget for the KV cache
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512  # per step; longer prompts are prefilled in chunks
    max_adapters: int | None = 8  # device slots; None: as many as adapter_memory_bytes holds
    adapter_memory_bytes: int | None = None
    max_lora_rank: int = 16
    lora_targets: tuple[str, ...] = LORA_PROJECTIONS
    max_adapter_bytes: int = 1 << 30  # adapter_model.safetensors size limit
    cpu_adapter_cache_bytes: int = 4 << 30
    seed: int = 0
    # Pure-decode steps replay a CUDA graph per batch-size bucket (runtime/engine/cuda_graphs.py); mixed and
    # prefill steps run eagerly. Ignored on CPU, which has no CUDA graphs: every step runs eagerly there.
    cuda_graphs: bool = True

    def resolved_dtype(self) -> torch.dtype:
        if self.dtype is not None:
            return self.dtype
        return torch.bfloat16 if torch.device(self.device).type == "cuda" else torch.float32


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str | list[int]  # text (tokenized with special tokens) or token ids
    adapter_id: str | None = None  # None or "base": the base model
    params: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class GenerationEvent:
    """What one step added to a request: new tokens and text, and on the last event the finish reason."""

    request_id: str
    token_ids: tuple[int, ...]
    text: str
    finish_reason: str | None  # None while running; "stop", "length", "abort" or "error"
    usage: Usage
    logprobs: tuple[float, ...] | None = None  # with SamplingParams(logprobs=True)
    error: str | None = None  # with finish_reason "error"

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class GenerationResult:
    """A whole request's output (generate_batch)."""

    request_id: str
    token_ids: list[int]
    text: str
    finish_reason: str | None
    usage: Usage
    logprobs: list[float] | None
    error: str | None = None


class Engine:
    def __init__(self, model: Transformer, tokenizer: Tokenizer | None, config: EngineConfig):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.device = torch.device(config.device)
        self.dtype = config.resolved_dtype()
        mc = model.config
        self.eos_token_ids = frozenset(mc.eos_token_ids)

        unknown = set(config.lora_targets) - set(LORA_PROJECTIONS)
        if unknown:
            raise ValueError(f"unknown LoRA targets {sorted(unknown)}; choose from {LORA_PROJECTIONS}")
        shapes = {name: mc.projection_shapes()[name] for name in config.lora_targets}
        num_slots = config.max_adapters
        if num_slots is None:
            if config.adapter_memory_bytes is None:
                raise ValueError("set max_adapters or adapter_memory_bytes")
            slot_bytes = SlotPool.bytes_per_slot(mc.num_layers, shapes, config.max_lora_rank, self.dtype)
            num_slots = config.adapter_memory_bytes // slot_bytes
        self.slot_pool = SlotPool(
            num_slots=num_slots,
            num_layers=mc.num_layers,
            projections=LORA_PROJECTIONS,
            projection_shapes=shapes,
            max_rank=config.max_lora_rank,
            dtype=self.dtype,
            device=self.device,
        )
        self._attach_lora_buffers()
        self._lora_meta = LoraMeta(config.max_num_batched_tokens, self.device)
        spec = AdapterSpec(mc.num_layers, shapes, config.max_lora_rank, config.max_adapter_bytes)
        self.adapters = AdapterCache(
            self.slot_pool, spec, cpu_budget_bytes=config.cpu_adapter_cache_bytes, device=self.device
        )

        self.max_model_len = config.max_model_len or min(mc.max_position_embeddings, 8192)
        block_bytes = KVCache.bytes_per_block(
            num_layers=mc.num_layers,
            block_size=config.block_size,
            num_kv_heads=mc.num_kv_heads,
            head_dim=mc.head_dim,
            dtype=self.dtype,
        )
        num_blocks = config.num_kv_blocks or self._default_num_blocks(block_bytes)
        self.max_model_len = min(self.max_model_len, num_blocks * config.block_size)
        use_graphs = config.cuda_graphs and self.device.type == "cuda"
        self.kv_cache = KVCache(
            num_layers=mc.num_layers,
            num_blocks=num_blocks + (1 if use_graphs else 0),  # with graphs, one more block: padding rows write there
            block_size=config.block_size,
            num_kv_heads=mc.num_kv_heads,
            head_dim=mc.head_dim,
            dtype=self.dtype,
            device=self.device,
        )
        self.scheduler = Scheduler(
            allocator=BlockAllocator(num_blocks),
            block_size=config.block_size,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            adapters=self.adapters,
        )
        self._graphs: DecodeGraphs | None = None
        if use_graphs:
            self._graphs = DecodeGraphs(
                model,
                self.kv_cache,
                max_batch=config.max_num_seqs,
                block_size=config.block_size,
                max_blocks_per_seq=-(-self.max_model_len // config.block_size),
                scratch_slot=num_blocks * config.block_size,  # the block the allocator does not hand out
                max_context_len=self.max_model_len,
                capture=True,
                device=self.device,
            )
        self._generator = torch.Generator(self.device).manual_seed(config.seed)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[str, Callable[[GenerationEvent], None]] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self.num_steps = 0

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, *, device: str = "cpu", **config) -> Engine:
        """An engine over a local Hugging Face folder; keyword arguments are EngineConfig fields."""
        cfg = EngineConfig(device=device, **config)
        model = load_model(model_dir, device=torch.device(device), dtype=cfg.resolved_dtype())
        tokenizer = Tokenizer.from_dir(model_dir) if (Path(model_dir) / "tokenizer.json").is_file() else None
        return cls(model, tokenizer, cfg)

    # --- adapters -----------------------------------------------------------------------------------

    def add_adapter(
        self,
        adapter_id: str,
        path: str | Path | None = None,
        *,
        config: dict | None = None,
        tensors: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Registers a PEFT adapter from a folder or from (adapter_config dict, state dict); raises
        InvalidAdapterError naming the file and the problem."""
        if adapter_id == BASE_ADAPTER_ID:
            raise ValueError(f"{BASE_ADAPTER_ID!r} names the base model")
        self.adapters.add(adapter_id, path, config=config, tensors=tensors)

    def remove_adapter(self, adapter_id: str) -> None:
        self.adapters.remove(adapter_id)

    def pin_adapter(self, adapter_id: str) -> None:
        self.adapters.pin(adapter_id)

    def unpin_adapter(self, adapter_id: str) -> None:
        self.adapters.unpin(adapter_id)

    def adapter_ids(self) -> list[str]:
        return self.adapters.adapter_ids()

    # --- requests -----------------------------------------------------------------------------------

    def add_request(self, request: GenerationRequest) -> str:
        """Queues a request; raises ValueError (unknown adapter, prompt too long, ...) without queueing."""
        params = request.params
        adapter_id = None if request.adapter_id in (None, BASE_ADAPTER_ID) else request.adapter_id
        if adapter_id is not None and adapter_id not in self.adapters:
            raise ValueError(f"unknown adapter {adapter_id!r}")
        if isinstance(request.prompt, str):
            if self.tokenizer is None:
                raise ValueError("this engine has no tokenizer: pass token ids")
            prompt_ids = self.tokenizer.encode(request.prompt)
        else:
            prompt_ids = list(request.prompt)
        if not prompt_ids:
            raise ValueError("empty prompt")
        vocab = self.model.config.vocab_size
        if any(not 0 <= t < vocab for t in prompt_ids):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        if len(prompt_ids) >= self.max_model_len:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens leaves no room (max_model_len {self.max_model_len})")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        generator = None
        if params.seed is not None:
            generator = torch.Generator(self.device).manual_seed(params.seed)
        seq = Sequence(
            request_id=request.request_id,
            adapter_id=adapter_id,
            token_ids=prompt_ids,
            num_prompt_tokens=len(prompt_ids),
            params=params,
            max_len=min(len(prompt_ids) + params.max_tokens, self.max_model_len),
            generator=generator,
            detokenizer=None if self.tokenizer is None else Detokenizer.for_prompt(self.tokenizer, prompt_ids),
        )
        self._inbox.put(("add", seq))
        self._wake.set()
        return request.request_id

    def abort(self, request_id: str) -> None:
        """Cancels a request; it ends with one event whose finish_reason is "abort"."""
        self._inbox.put(("abort", request_id))
        self._wake.set()

    def has_unfinished(self) -> bool:
        return not self._inbox.empty() or self.scheduler.has_unfinished()

    def stats(self) -> dict:
        free = self.scheduler.allocator.num_free
        return {
            "steps": self.num_steps,
            "waiting": len(self.scheduler.waiting),
            "running": len(self.scheduler.running),
            "kv_blocks_free": free,
            "kv_blocks_total": self.scheduler.allocator.num_blocks,
            "preemptions": self.scheduler.num_preemptions,
            "adapters": self.adapters.stats_snapshot(),
        }

    # --- the step -----------------------------------------------------------------------------------

    def step(self) -> list[GenerationEvent]:
        """One iteration: take in new requests and cancellations, schedule, run the model once, sample."""
        events = self._drain_inbox()
        self.adapters.poll()
        out = self.scheduler.schedule()
        events += [self._event(seq, [], [], error=message) for seq, message in out.failed]
        if not out.scheduled:
            if self.scheduler.has_unfinished():
                self.adapters.wait(timeout_s=0.01)  # everything waits on adapter loads
            return events
        self.num_steps += 1
        logits, sampled = self._forward(out.scheduled)
        tokens, logprobs = sample(logits, [s.params for s in sampled], [s.generator for s in sampled], self._generator)
        tokens, logprobs = tokens.tolist(), logprobs.tolist()  # the step's one host synchronisation
        for seq, n in out.scheduled:
            seq.num_computed += n
        for seq, token, logprob in zip(sampled, tokens, logprobs):
            events.append(self._append_token(seq, token, logprob))
        return events

    def _forward(self, scheduled: list[tuple[Sequence, int]]) -> tuple[torch.Tensor, list[Sequence]]:
        """The model over the step's tokens: logits [len(sampled), vocab] of the rows to sample, and their
        sequences. A pure-decode step replays its bucket's CUDA graph; any other step runs eagerly."""
        graphs = self._graphs
        if graphs is not None and len(scheduled) <= graphs.max_batch and all(n == 1 for _, n in scheduled):
            bs = self.config.block_size
            token_ids, positions, slot_mapping, lora_slots, tables, rows, sampled = [], [], [], [], [], [], []
            for row, (seq, _) in enumerate(scheduled):
                p = seq.num_computed
                token_ids.append(seq.token_ids[p])
                positions.append(p)
                slot_mapping.append(seq.blocks[p // bs] * bs + p % bs)
                lora_slots.append(seq.slot)
                tables.append(seq.blocks)
                if p + 1 == len(seq.token_ids):
                    rows.append(row)
                    sampled.append(seq)
            logits = graphs.forward(token_ids, positions, slot_mapping, lora_slots, tables)
            if len(rows) == len(scheduled):
                return logits[: len(rows)], sampled
            return logits[torch.tensor(rows).to(self.device, non_blocking=True)], sampled
        batch = self._prepare(scheduled)
        logits = self.model(
            batch["input_ids"], batch["positions"], self.kv_cache, batch["attn"], batch["lora"], batch["logits_indices"]
        )
        return logits, batch["sampled"]

    def _prepare(self, scheduled: list[tuple[Sequence, int]]) -> dict:
        """Flattens the step's sequences into one token batch and builds its metadata on the host."""
        bs = self.config.block_size
        # Single-token rows (decodes) first: attention runs rows [0, num_decode_rows) through the decode kernel.
        scheduled = sorted(scheduled, key=lambda item: item[1] > 1)
        num_decode_rows = sum(n == 1 for _, n in scheduled)
        input_ids, positions, slot_mapping, token_slots = [], [], [], []
        token_seq, token_index, logits_indices, sampled = [], [], [], []
        context_lens, tables = [], []
        max_q = max(n for _, n in scheduled)
        positions_padded = []
        for row, (seq, n) in enumerate(scheduled):
            start = seq.num_computed
            pos = list(range(start, start + n))
            input_ids += seq.token_ids[start : start + n]
            positions += pos
            slot_mapping += [seq.blocks[p // bs] * bs + p % bs for p in pos]
            token_slots += [seq.slot] * n
            token_seq += [row] * n
            token_index += list(range(n))
            positions_padded.append(pos + [0] * (max_q - n))
            context_lens.append(start + n)
            tables.append(seq.blocks)
            if start + n == len(seq.token_ids):
                logits_indices.append(len(input_ids) - 1)
                sampled.append(seq)
        max_blocks = max(len(t) for t in tables)
        tables = [t + [0] * (max_blocks - len(t)) for t in tables]

        def dev(values) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64).to(self.device, non_blocking=True)

        attn = AttentionMetadata(
            slot_mapping=dev(slot_mapping),
            block_tables=dev(tables),
            context_lens=dev(context_lens),
            token_seq=dev(token_seq),
            token_index=dev(token_index),
            positions_padded=dev(positions_padded),
            max_query_len=max_q,
            max_context_len=max(context_lens),
            num_decode_rows=num_decode_rows,
            max_prefill_context_len=max(context_lens[num_decode_rows:], default=0),
        )
        lora = None
        if any(s >= 0 for s in token_slots):
            slots = dev(token_slots).to(torch.int32)
            lora = LoRABatch(token_slots=slots, meta=self._lora_meta.build(slots))
        return {
            "input_ids": dev(input_ids),
            "positions": dev(positions),
            "attn": attn,
            "lora": lora,
            "logits_indices": dev(logits_indices),
            "sampled": sampled,
        }

    def _append_token(self, seq: Sequence, token: int, logprob: float) -> GenerationEvent:
        params = seq.params
        if seq.first_token_s is None:
            seq.first_token_s = time.monotonic()
        seq.token_ids.append(token)
        reason = None
        stop_at = None
        if token in params.stop_token_ids or (not params.ignore_eos and token in self.eos_token_ids):
            reason = "stop"
        elif seq.detokenizer is not None:
            seq.detokenizer.add(token)
            if params.stop:
                stop_at = _find_stop(seq.detokenizer.text, params.stop, seq.emitted_chars)
                if stop_at is not None:
                    reason = "stop"
        if reason is None and len(seq.token_ids) >= seq.max_len:
            reason = "length"
        if reason is not None:
            self.scheduler.finish(seq, reason)
        return self._event(seq, [token], [logprob], stop_at=stop_at)

    def _event(self, seq: Sequence, tokens, logprobs, *, stop_at: int | None = None, error: str | None = None):
        text = ""
        if seq.detokenizer is not None:
            full = seq.detokenizer.text
            if stop_at is not None:
                visible = full[:stop_at]
            elif seq.finish_reason is not None or not seq.params.stop:
                visible = full
            else:  # hold back what could be the start of a stop string
                visible = full[: max(seq.emitted_chars, len(full) - max(map(len, seq.params.stop)) + 1)]
            text = visible[seq.emitted_chars :]
            seq.emitted_chars = len(visible)
        seq.num_emitted_tokens += len(tokens)
        return GenerationEvent(
            request_id=seq.request_id,
            token_ids=tuple(tokens),
            text=text,
            finish_reason=seq.finish_reason,
            usage=Usage(seq.num_prompt_tokens, len(seq.token_ids) - seq.num_prompt_tokens),
            logprobs=tuple(logprobs) if seq.params.logprobs else None,
            error=error,
        )

    def _drain_inbox(self) -> list[GenerationEvent]:
        events = []
        while True:
            try:
                kind, item = self._inbox.get_nowait()
            except queue.Empty:
                return events
            if kind == "add":
                self.scheduler.add(item)
                continue
            seq = self.scheduler.find(item)
            if seq is not None:
                self.scheduler.finish(seq, "abort")
                events.append(self._event(seq, [], []))

    def _default_num_blocks(self, block_bytes: int) -> int:
        per_seq = -(-self.max_model_len // self.config.block_size)
        enough = self.config.max_num_seqs * per_seq  # every sequence at full length: more would sit unused
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            allocated = torch.cuda.memory_allocated(self.device)
            # What this process may still take: the driver's free memory plus what torch's caching allocator
            # holds but does not use, capped by the utilisation share of the card minus what is allocated.
            reusable = free + torch.cuda.memory_reserved(self.device) - allocated
            budget = min(reusable, self.config.gpu_memory_utilization * total - allocated)
            blocks = int(budget // block_bytes)
            if blocks < per_seq:
                raise RuntimeError(
                    f"only {max(budget, 0) / 2**30:.2f} GiB of GPU memory left for the KV cache: not one "
                    f"{self.max_model_len}-token sequence fits (lower max_model_len or free memory)"
                )
            return min(blocks, enough)
        return max(1, min(self.config.kv_cache_bytes // block_bytes, enough))

    def _attach_lora_buffers(self) -> None:
        pool = self.slot_pool
        for layer in range(self.model.config.num_layers):
            for wrapper, (lo, hi) in zip(self.model.lora_layers(layer), _FUSED):
                names = LORA_PROJECTIONS[lo:hi]
                if not any(n in pool.lora_a for n in names):
                    continue
                wrapper.attach(
                    SliceBuffers(
                        lora_a=tuple(pool.lora_a[n][layer] if n in pool.lora_a else None for n in names),
                        lora_b=tuple(pool.lora_b[n][layer] if n in pool.lora_b else None for n in names),
                        ranks=pool.ranks[layer, lo:hi],
                        scales=pool.scales,
                    )
                )

    # --- synchronous and background drivers ---------------------------------------------------------

    def generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Runs requests to completion on the calling thread (offline use, tests, benchmarks)."""
        if self._thread is not None:
            raise RuntimeError("the background loop is running: use generate()")
        results = {}
        for r in requests:
            self.add_request(r)
            results[r.request_id] = GenerationResult(r.request_id, [], "", None, Usage(0, 0), [])
        while any(res.finish_reason is None for res in results.values()):
            for ev in self.step():
                res = results.get(ev.request_id)
                if res is None:
                    continue
                res.token_ids += ev.token_ids
                res.text += ev.text
                res.logprobs += ev.logprobs or ()
                res.usage, res.finish_reason, res.error = ev.usage, ev.finish_reason, ev.error
        for res in results.values():
            if not res.logprobs:
                res.logprobs = None
        return [results[r.request_id] for r in requests]

    def start(self) -> None:
        """Runs the step loop on a background thread until stop()."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="engine-step", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops the loop; unfinished requests end with finish_reason "abort"."""
        if self._thread is None:
            return
        self._stopping.set()
        self._wake.set()
        self._thread.join()
        self._thread = None
        for seq in [*self.scheduler.running, *self.scheduler.waiting]:
            self.scheduler.finish(seq, "abort")
            self._dispatch(self._event(seq, [], []))
        self._drain_inbox()

    def close(self) -> None:
        """stop(), then shuts down the adapter loader; the engine is done."""
        self.stop()
        self.adapters.close()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Streams a request's events; leaving the loop early (break, task cancelled) aborts the request."""
        if self._thread is None:
            raise RuntimeError("call start() first")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[GenerationEvent] = asyncio.Queue()
        self._sinks[request.request_id] = lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev)
        finished = False
        try:
            self.add_request(request)
            while not finished:
                event = await events.get()
                finished = event.finished
                yield event
        finally:
            self._sinks.pop(request.request_id, None)
            if not finished:
                self.abort(request.request_id)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            if not self.has_unfinished():
                self._wake.wait(timeout=0.1)
                self._wake.clear()
                continue
            try:
                events = self.step()
            except Exception:  # one bad step must not take the server down
                logger.exception("engine step failed; failing the running requests")
                events = self._fail_running("internal error in the engine step")
            for event in events:
                self._dispatch(event)

    def _dispatch(self, event: GenerationEvent) -> None:
        sink = self._sinks.get(event.request_id)
        if sink is not None:
            sink(event)

    def _fail_running(self, message: str) -> list[GenerationEvent]:
        events = []
        for seq in list(self.scheduler.running):
            self.scheduler.finish(seq, "error")
            events.append(self._event(seq, [], [], error=message))
        return events


def _find_stop(text: str, stops: tuple[str, ...], start: int) -> int | None:
    """Index of the earliest stop string in text that ends after `start` (text before it is already out)."""
    longest = max(map(len, stops))
    lo = max(0, start - longest + 1)
    hits = [i for s in stops if (i := text.find(s, lo)) != -1]
    return min(hits) if hits else None
