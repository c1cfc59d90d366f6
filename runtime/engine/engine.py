"""The engine: requests in, a step loop (schedule → one forward over the mixed batch → sample), token events out.

    engine = Engine.from_pretrained("/models/llama", device="cuda", max_adapters=64)
    engine.add_adapter("sql-expert", "/adapters/sql-expert")
    engine.start()
    async for event in engine.generate(GenerationRequest("SELECT", adapter_id="sql-expert")):
        print(event.text, end="")
    engine.stop()

Threading: one step thread owns the scheduler, the KV cache and the model. Other threads talk to it
through an inbox (add, abort), and it answers through per-request sinks; `generate` bridges those to
asyncio, one wake-up of the event loop per step. Without `start()`, `step()` and `generate_batch()` drive the
same loop synchronously.

A step synchronises with the device once: reading the sampled tokens and their logprobs (one transfer).
In steady decoding (every running sequence decoding, nothing to admit) the engine overlaps the host with the
device (EngineConfig.overlap_decode): it launches step N+1, whose input tokens are step N's sampled tokens
still on the device, before it reads step N's tokens back, so building a step and processing its output
happen while the GPU runs the one before. A sequence that stops at step N (a stop token or string) has then
computed one more token at N+1, which is discarded; a sequence known to reach its length at N is left out.
`stats()["step_times"]` splits the loop's host time by phase (StepTimes), graphed and eager steps apart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from loraledger.kernels import LoraMeta, compiles, prefers_gather

from ..adapters.cache import AdapterCache
from ..adapters.peft_format import AdapterSpec
from ..adapters.slots import SlotPool
from .attention import AttentionMetadata
from .cuda_graphs import DecodeGraphs
from .kv_cache import BlockAllocator, KVCache
from .lora_linear import SliceBuffers, lora_batch
from .model import LORA_PROJECTIONS, Transformer, load_model
from .piecewise_graphs import MixedGraphs
from .sampling import SamplingParams, sample
from .scheduler import Scheduler, Sequence, SequenceStatus
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
    # The other steps (prefill, prefill mixed with decodes) replay the model's pieces between attentions,
    # captured per token-count bucket (runtime/engine/piecewise_graphs.py). Needs cuda_graphs.
    piecewise_graphs: bool = True
    # start() first compiles every Triton kernel variant and captures every decode graph a step can meet
    # (Engine.warm_up), so no request waits on a compile. CUDA only.
    warm_up: bool = True
    # In steady decoding, launch step N+1 (its input tokens taken on the device from step N's samples) before
    # reading step N's tokens back: the host's work per step overlaps the device's (see the module docstring).
    overlap_decode: bool = True
    # Steps of mostly distinct adapters take the token-gather LoRA kernels where kernels.prefers_gather picks
    # them (batches of up to 1024 tokens); False keeps the tile kernels everywhere (side-by-side timings).
    lora_gather_kernels: bool = True

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


@dataclass
class StepTimes:
    """Host seconds the step loop spent per phase, summed over steps (engine.stats()["step_times"]).

    schedule: inbox, adapter polling, the scheduler; forward: building the batch and launching the model (a
    CUDA-graph replay or the eager forward); sample: launching the sampler and reading its tokens back, the
    step's one host synchronisation, so on a GPU it includes the wait for the device's queued work; output:
    appending tokens, detokenising, stop checks and building the events; dispatch: handing the events to
    their streams (background loop only). graphed_step_s, piecewise_step_s and eager_step_s split the first
    four's sum between pure-decode steps through the CUDA-graph buffers, other steps through the piecewise
    graphs, and steps run eagerly.
    """

    graphed_steps: int = 0
    piecewise_steps: int = 0
    eager_steps: int = 0
    tokens: int = 0  # tokens the forwards computed (prompt and output)
    schedule_s: float = 0.0
    forward_s: float = 0.0
    sample_s: float = 0.0
    output_s: float = 0.0
    dispatch_s: float = 0.0
    graphed_step_s: float = 0.0
    piecewise_step_s: float = 0.0
    eager_step_s: float = 0.0

    def add(self, kind: str, tokens: int, schedule_s: float, forward_s: float, sample_s: float, output_s: float):
        """kind: "graphed" (a decode graph's replay), "piecewise" (the pieces between attentions), "eager"."""
        total = schedule_s + forward_s + sample_s + output_s
        setattr(self, f"{kind}_steps", getattr(self, f"{kind}_steps") + 1)
        setattr(self, f"{kind}_step_s", getattr(self, f"{kind}_step_s") + total)
        self.tokens += tokens
        self.schedule_s += schedule_s
        self.forward_s += forward_s
        self.sample_s += sample_s
        self.output_s += output_s


@dataclass
class _Launched:
    """A step whose sampled tokens are on their way to the host: what completing it needs."""

    rows: list[Sequence]  # the sampled sequences, in batch order
    tokens: torch.Tensor  # [B] int64 on the device: the input ids of a decode step launched after this one
    host: torch.Tensor  # [2, B] float64 (pinned on CUDA): tokens and logprobs, once `ready` has passed
    ready: torch.cuda.Event | None  # recorded after the copy to the host (None on CPU: the copy was synchronous)
    decode: bool  # a decode step (one token per row, every row sampled): the next one can start before it completes
    kind: str  # how the forward ran (StepTimes)
    num_tokens: int
    schedule_s: float
    forward_s: float
    sample_s: float


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
        # Positions stay below max_model_len; the margin covers a step computed past a sequence's end.
        self.model.set_rope_tables(self.max_model_len + config.block_size)
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
                gather_kernels=config.lora_gather_kernels,
            )
        self._mixed: MixedGraphs | None = None
        if use_graphs and config.piecewise_graphs:
            self._mixed = MixedGraphs(
                model,
                self.kv_cache,
                max_tokens=config.max_num_batched_tokens,
                max_rows=config.max_num_seqs,
                scratch_slot=num_blocks * config.block_size,
                capture=True,
                device=self.device,
            )
        self._arange = torch.arange(max(config.max_num_batched_tokens, config.max_num_seqs), device=self.device)
        self._generator = torch.Generator(self.device).manual_seed(config.seed)
        self.step_times = StepTimes()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}  # request id → its stream
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self.num_steps = 0
        self._inflight: _Launched | None = None  # a decode step launched ahead, not yet read back
        self.num_overlapped_steps = 0  # steps launched before the previous step's tokens were read
        self._warmed_up = False
        compiles.install()
        self._compiles_at_warm_up: int | None = None

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
        return not self._inbox.empty() or self.scheduler.has_unfinished() or self._inflight is not None

    def stats(self) -> dict:
        free = self.scheduler.allocator.num_free
        return {
            "steps": self.num_steps,
            "overlapped_steps": self.num_overlapped_steps,
            "waiting": len(self.scheduler.waiting),
            "running": len(self.scheduler.running),
            "kv_blocks_free": free,
            "kv_blocks_total": self.scheduler.allocator.num_blocks,
            "preemptions": self.scheduler.num_preemptions,
            "adapters": self.adapters.stats_snapshot(),
            "step_times": dataclasses.asdict(self.step_times),
            "cuda_graphs": None if self._graphs is None else self._graphs.stats(),
            "piecewise_graphs": None if self._mixed is None else self._mixed.stats(),
            # Triton variants compiled since warm_up(): each one stalled a step (None: no warm-up ran).
            "kernel_compiles_since_warm_up": None if self._compiles_at_warm_up is None
            else sum(compiles.compiled().values()) - self._compiles_at_warm_up,
        }

    # --- the step -----------------------------------------------------------------------------------

    def step(self) -> list[GenerationEvent]:
        """One iteration: take in new requests and cancellations, schedule, run the model once, sample; returns
        the events of the steps whose tokens this call read: with overlapped decoding, the step the call before
        launched (and, where steady decoding ends, the step scheduled after it)."""
        t0 = time.perf_counter()
        events = self._drain_inbox()
        self.adapters.poll()
        if self._inflight is not None:
            prev = self._inflight
            self._inflight = self._launch_ahead(prev, t0)
            events += self._complete(prev)
            if self._inflight is not None:
                return events
            t0 = time.perf_counter()  # steady decoding ended (arrivals, a prefill, short of blocks): schedule
        out = self.scheduler.schedule()
        events += [self._event(seq, [], [], error=message) for seq, message in out.failed]
        if not out.scheduled:
            if self.scheduler.has_unfinished():
                self.adapters.wait(timeout_s=0.01)  # everything waits on adapter loads
            return events
        launched = self._launch(out.scheduled, time.perf_counter() - t0)
        self._inflight = self._launch_ahead(launched, time.perf_counter())
        return events + self._complete(launched)

    def _launch(self, scheduled: list[tuple[Sequence, int]], schedule_s: float,
                input_ids: torch.Tensor | None = None) -> _Launched:  # fmt: skip
        """Runs the model over the scheduled tokens and launches the sampler and the copy of its tokens to
        the host, without waiting for them. `input_ids`: a decode step's input tokens on the device (each
        row's token at position num_computed, not yet on the host)."""
        self.num_steps += 1
        t1 = time.perf_counter()
        graphed_before = 0 if self._graphs is None else self._graphs.num_steps
        piecewise_before = 0 if self._mixed is None else self._mixed.num_steps
        logits, sampled = self._forward(scheduled, input_ids)
        if self._graphs is not None and self._graphs.num_steps != graphed_before:
            kind = "graphed"
        elif self._mixed is not None and self._mixed.num_steps != piecewise_before:
            kind = "piecewise"
        else:
            kind = "eager"
        t2 = time.perf_counter()
        tokens, logprobs = sample(logits, [s.params for s in sampled], [s.generator for s in sampled], self._generator)
        # The step's one transfer to the host: tokens and logprobs together (float64 holds any token id).
        both = torch.stack((tokens.double(), logprobs.double()))
        ready = None
        if both.is_cuda:
            host = torch.empty(both.shape, dtype=both.dtype, pin_memory=True)
            host.copy_(both, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        else:
            host = both
        for seq, n in scheduled:
            seq.num_computed += n
        decode = len(sampled) == len(scheduled) and all(n == 1 for _, n in scheduled)
        return _Launched(sampled, tokens, host, ready, decode, kind, sum(n for _, n in scheduled), schedule_s,
                         t2 - t1, time.perf_counter() - t2)

    def _launch_ahead(self, prev: _Launched, t0: float) -> _Launched | None:
        """Launches the decode step after `prev` before prev's tokens are read, when steady decoding allows it
        (overlap_decode on, prev a decode step, every running sequence among its rows, no request that could
        be admitted, KV blocks for every row); else None, and the next step() schedules afresh."""
        sched = self.scheduler
        if not (self.config.overlap_decode and prev.decode) or (sched.waiting and len(sched.running) < sched.max_num_seqs):
            return None
        in_prev = {id(seq) for seq in prev.rows}
        if any(id(seq) not in in_prev for seq in sched.running):
            return None  # a sequence still prefilling needs the scheduler's chunk
        # Rows: prev's sequences still running, less those whose prev token reaches their length.
        index, rows = [], []
        for i, seq in enumerate(prev.rows):
            if seq.status is SequenceStatus.RUNNING and len(seq.token_ids) + 1 < seq.max_len:
                index.append(i)
                rows.append(seq)
        if not rows or not sched.extend_blocks(rows):
            return None
        ids = prev.tokens
        if len(index) != len(prev.rows):  # rows dropped out: gather the rest's tokens (pinned, no sync)
            index_host = torch.tensor(index, dtype=torch.int64, pin_memory=self.device.type == "cuda")
            ids = ids[index_host.to(self.device, non_blocking=True)]
        sched.prefetch()
        self.num_overlapped_steps += 1
        return self._launch([(seq, 1) for seq in rows], time.perf_counter() - t0, ids)

    def _complete(self, launched: _Launched) -> list[GenerationEvent]:
        """Waits for a launched step's tokens and turns them into events; rows of sequences that finished
        meanwhile (a stop found in the step before, an abort) are discarded."""
        t3 = time.perf_counter()
        if launched.ready is not None:
            launched.ready.synchronize()
        tokens, logprobs = launched.host.tolist()
        t4 = time.perf_counter()
        events = []
        for seq, token, logprob in zip(launched.rows, tokens, logprobs, strict=True):
            if seq.status is SequenceStatus.RUNNING:
                events.append(self._append_token(seq, int(token), logprob))
        self.step_times.add(launched.kind, launched.num_tokens, launched.schedule_s, launched.forward_s,
                            launched.sample_s + t4 - t3, time.perf_counter() - t4)  # fmt: skip
        return events

    def _forward(
        self, scheduled: list[tuple[Sequence, int]], input_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[Sequence]]:
        """The model over the step's tokens: logits [len(sampled), vocab] of the rows to sample, and their
        sequences. A pure-decode step replays its bucket's CUDA graph; any other step runs eagerly (or through
        the piecewise graphs). `input_ids` ([rows] on the device): a decode step whose input tokens the host
        has not read yet (see _launch_ahead); every row is sampled."""
        graphs = self._graphs
        if graphs is not None and len(scheduled) <= graphs.max_batch and all(n == 1 for _, n in scheduled):
            bs = self.config.block_size
            token_ids, positions, slot_mapping, lora_slots, tables, rows, sampled = [], [], [], [], [], [], []
            for row, (seq, _) in enumerate(scheduled):
                p = seq.num_computed
                token_ids.append(0 if input_ids is not None else seq.token_ids[p])
                positions.append(p)
                slot_mapping.append(seq.blocks[p // bs] * bs + p % bs)
                lora_slots.append(seq.slot)
                tables.append(seq.blocks)
                if input_ids is not None or p + 1 == len(seq.token_ids):
                    rows.append(row)
                    sampled.append(seq)
            logits = graphs.forward(token_ids, positions, slot_mapping, lora_slots, tables, input_ids=input_ids)
            if len(rows) == len(scheduled):
                return logits[: len(rows)], sampled
            rows_host = torch.tensor(rows, pin_memory=self.device.type == "cuda")
            return logits[rows_host.to(self.device, non_blocking=True)], sampled
        mixed = self._mixed
        num_tokens = sum(n for _, n in scheduled)
        if mixed is not None and mixed.bucket(num_tokens) is not None:
            batch = self._prepare(scheduled, build_lora=False, input_ids=input_ids)
            logits = mixed.forward(
                batch["input_ids"], batch["positions"], batch["token_slots"], batch["attn"], batch["logits_indices"]
            )
            return logits, batch["sampled"]
        batch = self._prepare(scheduled, input_ids=input_ids)
        logits = self.model(
            batch["input_ids"], batch["positions"], self.kv_cache, batch["attn"], batch["lora"], batch["logits_indices"]
        )
        return logits, batch["sampled"]

    def _prepare(
        self, scheduled: list[tuple[Sequence, int]], *, build_lora: bool = True, input_ids: torch.Tensor | None = None
    ) -> dict:
        """Flattens the step's sequences into one token batch and its metadata.

        The host sends what only it knows in one int64 copy: the new token ids [T] and, per row, its start
        position, token count, adapter slot and block table, plus the rows to sample. Every per-token index
        (positions, KV slots, row and index of each token) is derived from those on the device, so the host
        work grows with the rows and the token ids, not with the padded [rows, max_query_len] metadata.
        `input_ids`: one token per row, already on the device (a decode step launched ahead); every row sampled.
        """
        bs = self.config.block_size
        # Single-token rows (decodes) first: attention runs rows [0, num_decode_rows) through the decode kernel.
        scheduled = sorted(scheduled, key=lambda item: item[1] > 1)
        num_rows = len(scheduled)
        token_ids, starts, lens, slots, tables, logits_indices, sampled = [], [], [], [], [], [], []
        num_decode_rows = num_tokens = 0
        for seq, n in scheduled:
            start = seq.num_computed
            num_decode_rows += n == 1
            token_ids += [0] if input_ids is not None else seq.token_ids[start : start + n]
            starts.append(start)
            lens.append(n)
            slots.append(seq.slot)
            tables.append(seq.blocks)
            num_tokens += n
            if input_ids is not None or start + n == len(seq.token_ids):
                logits_indices.append(num_tokens - 1)
                sampled.append(seq)
        max_blocks = max(map(len, tables))
        flat = [*token_ids, *starts, *lens, *slots, *logits_indices]
        for table in tables:
            flat += table
            flat += [0] * (max_blocks - len(table))
        host = torch.tensor(flat, dtype=torch.int64, pin_memory=self.device.type == "cuda")
        dev = host.to(self.device, non_blocking=True)
        sizes = (num_tokens, num_rows, num_rows, num_rows, len(logits_indices), num_rows * max_blocks)
        ids, start_t, len_t, slot_t, logits_idx, table_t = dev.split(sizes)
        if input_ids is not None:
            ids = input_ids
        table_t = table_t.view(num_rows, max_blocks)

        arange = self._arange
        token_seq = torch.repeat_interleave(arange[:num_rows], len_t, output_size=num_tokens)  # [T] row of token
        first = torch.cumsum(len_t, 0) - len_t  # [B] first token of each row
        token_index = arange[:num_tokens] - first[token_seq]
        positions = start_t[token_seq] + token_index
        slot_mapping = table_t[token_seq, positions // bs] * bs + positions % bs
        context_lens = [start + n for start, n in zip(starts, lens)]
        max_q = max(lens)
        q = arange[:max_q]
        positions_padded = torch.where(q < len_t[:, None], start_t[:, None] + q, 0)  # [B, max_q]
        attn = AttentionMetadata(
            slot_mapping=slot_mapping,
            block_tables=table_t,
            context_lens=start_t + len_t,
            token_seq=token_seq,
            token_index=token_index,
            positions_padded=positions_padded,
            max_query_len=max_q,
            max_context_len=max(context_lens),
            num_decode_rows=num_decode_rows,
            max_prefill_context_len=max(context_lens[num_decode_rows:], default=0),
        )
        lora = token_slots = None
        if any(s >= 0 for s in slots):
            token_slots = slot_t.to(torch.int32)[token_seq]
            if build_lora:
                adapters = len({s for s in slots if s >= 0})
                gather = self.config.lora_gather_kernels and prefers_gather(token_slots.shape[0], adapters, self.device)
                lora = lora_batch(token_slots, self._lora_meta, gather=gather)
        return {
            "input_ids": ids,
            "positions": positions,
            "attn": attn,
            "lora": lora,
            "token_slots": token_slots,  # [T] int32, None when no token has an adapter
            "logits_indices": logits_idx,
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
        elif seq.detokenizer is not None and seq.detokenizer.add(token) and params.stop:
            # Only new text can complete a stop string: the check runs when the detokenizer added some.
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
            end = len(seq.detokenizer.text)
            if stop_at is not None:
                end = stop_at
            elif seq.finish_reason is None and seq.params.stop:  # hold back what could start a stop string
                end = max(seq.emitted_chars, end - seq.params.max_stop_len + 1)
            if end > seq.emitted_chars:
                text = seq.detokenizer.text[seq.emitted_chars : end]
                seq.emitted_chars = end
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

    def warm_up(self) -> float:
        """Compiles and captures, before the first request, what steps would otherwise compile mid-run;
        returns the seconds it took. Triton compiles a kernel per combination of its compile-time sizes (on
        first use, for seconds), and a CUDA graph is captured per decode bucket: left to the first steps that
        meet them, those stalls land on requests. This runs the model on dummy tokens whose keys and values
        go to a KV block no sequence owns (the graphs' scratch block, or blocks borrowed from the allocator):
        every decode graph and every piece of the piecewise graphs, with and without LoRA (each capture runs
        its forward once first, which compiles); without piecewise graphs, eager steps of token counts spanning
        the kernels' size buckets, with and without decode rows and LoRA; and every split count of the decode
        attention. Call it while no step runs (start() does, before its loop)."""
        t0 = time.perf_counter()
        if self._graphs is not None:
            self._graphs.capture_all()
        if self._mixed is not None:
            self._mixed.capture_all()
        bs = self.config.block_size
        max_tokens = self.config.max_num_batched_tokens
        lengths = []  # with piecewise graphs no step of up to max_tokens tokens runs eagerly
        if self._mixed is None:
            lengths = sorted({n for n in (1, 2, 17, 64, 65, 256, 257, 1024, 1025, max_tokens) if n <= max_tokens})
        need = -(-max(lengths, default=1) // bs)
        borrowed = []
        if self._graphs is not None:
            blocks = [self._graphs.scratch_slot // bs] * need
        else:
            borrowed = blocks = self.scheduler.allocator.allocate(min(need, self.scheduler.allocator.num_free))
        if len(blocks) < need:
            self.scheduler.allocator.free(borrowed)
            logger.warning("warm-up skipped: %d free KV blocks, %d needed", len(blocks), need)
            return time.perf_counter() - t0

        def seq(n: int, slot: int) -> Sequence:
            return Sequence(
                request_id="warm-up", adapter_id=None, token_ids=[0] * n, num_prompt_tokens=n,
                params=SamplingParams(max_tokens=1), max_len=n, generator=None, detokenizer=None,
                blocks=blocks[: -(-n // bs)], slot=slot,
            )

        try:
            for n in lengths:
                for slot in (-1, 0):
                    decodes = min(n - 1, 4)  # a mixed step: decode rows, then one prefill chunk
                    mixed = [*((seq(1, slot), 1) for _ in range(decodes)), (seq(n - decodes, slot), n - decodes)]
                    for scheduled in ([(seq(n, slot), n)], mixed):
                        batch = self._prepare(scheduled)
                        self.model(batch["input_ids"], batch["positions"], self.kv_cache, batch["attn"],
                                   batch["lora"], batch["logits_indices"])
            self._warm_up_attention(blocks[:1])
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        finally:
            self.scheduler.allocator.free(borrowed)
        self._warmed_up = True
        self._compiles_at_warm_up = sum(compiles.compiled().values())
        seconds = time.perf_counter() - t0
        logger.info("engine warm-up: %.1f s", seconds)
        return seconds

    def _warm_up_attention(self, blocks: list[int]) -> None:
        """Every split count of the decode attention kernel (a compile-time constant), on one dummy row and on
        enough rows for its many-sequence launch."""
        if not self.kv_cache.k.is_cuda:
            return
        from loraledger.kernels.paged_attention import MANY_PROGRAMS, SPLIT_CHOICES, Rotary, rotary_pays
        from loraledger.kernels.paged_attention import paged_attention as paged_decode_attention

        mc = self.model.config
        # One row, and as many as take the kernel's many-sequence launch (narrow heads): its other variant; each
        # also with the rotary + KV write inside where a decode step takes that (it writes the borrowed blocks).
        for rows in sorted({1, min(self.config.max_num_seqs, -(-MANY_PROGRAMS // mc.num_kv_heads))}):
            q = torch.zeros(rows, mc.num_heads, mc.head_dim, dtype=self.dtype, device=self.device)
            new = torch.zeros(rows, mc.num_kv_heads, mc.head_dim, dtype=self.dtype, device=self.device)
            angles = torch.zeros(rows, mc.head_dim, dtype=self.dtype, device=self.device)
            tables = torch.tensor([blocks] * rows, dtype=torch.int64, device=self.device)
            lens = torch.ones(rows, dtype=torch.int64, device=self.device)
            rotaries = (None, Rotary(new, new, angles, angles)) if rotary_pays(rows, mc.num_kv_heads) else (None,)
            for splits in SPLIT_CHOICES:
                for rotary in rotaries:
                    paged_decode_attention(q, self.kv_cache.k[0], self.kv_cache.v[0], tables, lens, 1.0,
                                           sliding_window=mc.sliding_window, num_splits=splits, rotary=rotary)

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
        """Runs the step loop on a background thread until stop() (after warm_up() on CUDA, if configured)."""
        if self._thread is not None:
            raise RuntimeError("already started")
        if self.config.warm_up and self.device.type == "cuda" and not self._warmed_up:
            self.warm_up()
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
        self._inflight = None  # its rows end here with "abort"
        events = []
        for seq in [*self.scheduler.running, *self.scheduler.waiting]:
            self.scheduler.finish(seq, "abort")
            events.append(self._event(seq, [], []))
        self._dispatch(events)
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
        self._sinks[request.request_id] = (loop, events)
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
            t0 = time.perf_counter()
            self._dispatch(events)
            self.step_times.dispatch_s += time.perf_counter() - t0

    def _dispatch(self, events: list[GenerationEvent]) -> None:
        """Hands a step's events to their streams: one wake-up of each event loop per step, not one per event
        (each wake-up is a write to the loop's self-pipe and a thread switch under the GIL)."""
        batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, GenerationEvent]]] = {}
        for event in events:
            sink = self._sinks.get(event.request_id)
            if sink is not None:
                batches.setdefault(sink[0], []).append((sink[1], event))
        for loop, batch in batches.items():
            loop.call_soon_threadsafe(_deliver, batch)

    def _fail_running(self, message: str) -> list[GenerationEvent]:
        self._inflight = None
        events = []
        for seq in list(self.scheduler.running):
            self.scheduler.finish(seq, "error")
            events.append(self._event(seq, [], [], error=message))
        return events


def _deliver(batch: list[tuple[asyncio.Queue, GenerationEvent]]) -> None:
    for events, event in batch:
        events.put_nowait(event)


def _find_stop(text: str, stops: tuple[str, ...], start: int) -> int | None:
    """Index of the earliest stop string in text that ends after `start` (text before it is already out)."""
    longest = max(map(len, stops))
    lo = max(0, start - longest + 1)
    hits = [i for s in stops if (i := text.find(s, lo)) != -1]
    return min(hits) if hits else None
