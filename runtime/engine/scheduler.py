"""Iteration-level scheduling: which sequences run this step, with how many tokens, in which KV blocks.

Each step the running sequences go first (decode tokens, then the next prefill chunks), in admission
order; when the KV cache cannot grow one, the most recently admitted running sequence is preempted
(its blocks freed, its tokens recomputed later). Then waiting requests are admitted first come, first
served while the token budget, the sequence limit and free KV blocks allow, but only once their adapter
sits in a device slot: a request whose adapter is still loading is passed over, and the adapters of the
queue's head are prefetched.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from ..adapters.cache import AdapterCache, AdapterLoadError, UnknownAdapterError
from .kv_cache import BlockAllocator
from .sampling import SamplingParams
from .tokenizer import Detokenizer

logger = logging.getLogger(__name__)

__all__ = ["Scheduler", "SchedulerOutput", "Sequence", "SequenceStatus"]


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    adapter_id: str | None  # None = the base model
    token_ids: list[int]  # prompt then output; grows by one per decode step
    num_prompt_tokens: int
    params: SamplingParams
    max_len: int  # prompt + max_tokens, capped by the engine's max_model_len
    generator: torch.Generator | None
    detokenizer: Detokenizer | None
    arrival_s: float = field(default_factory=time.monotonic)
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed: int = 0  # tokens whose keys and values are in the cache
    blocks: list[int] = field(default_factory=list)
    slot: int = -1  # adapter slot while running, -1 = none
    holds_adapter: bool = False
    finish_reason: str | None = None
    emitted_chars: int = 0  # text already streamed
    num_emitted_tokens: int = 0
    num_preemptions: int = 0
    first_token_s: float | None = None

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed


@dataclass
class SchedulerOutput:
    scheduled: list[tuple[Sequence, int]]  # (sequence, tokens to compute this step), in batch order
    failed: list[tuple[Sequence, str]]  # requests that cannot be served (e.g. their adapter was removed)
    num_preempted: int = 0


class Scheduler:
    def __init__(
        self,
        *,
        allocator: BlockAllocator,
        block_size: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        adapters: AdapterCache,
        prefetch_depth: int = 32,
    ):
        self.allocator = allocator
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.adapters = adapters
        self.prefetch_depth = prefetch_depth
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def find(self, request_id: str) -> Sequence | None:
        for seq in (*self.running, *self.waiting):
            if seq.request_id == request_id:
                return seq
        return None

    def finish(self, seq: Sequence, reason: str) -> None:
        """Takes a sequence out of the queues and frees its blocks and adapter hold."""
        if seq.status == SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status == SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self._free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(scheduled=[], failed=[])
        budget = self.max_num_batched_tokens

        # Decoding sequences first (one token each, latency-bound), then prefill chunks; admission order within.
        # Preemption takes the queue's last sequence: `end` shrinks instead of popping (O(running) per step).
        queue, kept = sorted(self.running, key=lambda s: s.num_uncomputed > 1), []
        allocator = self.allocator
        i, end = 0, len(queue)
        while i < end:
            seq = queue[i]
            i += 1
            n = min(seq.num_uncomputed, budget)
            if n == 0:
                kept.append(seq)
                continue
            need = self._blocks_for(seq.num_computed + n) - len(seq.blocks)
            while need > allocator.num_free and i < end:
                end -= 1
                self._preempt(queue[end])
                out.num_preempted += 1
            if need > allocator.num_free:
                self._preempt(seq)
                out.num_preempted += 1
                continue
            if need > 0:
                seq.blocks += allocator.allocate(need)
            out.scheduled.append((seq, n))
            kept.append(seq)
            budget -= n
        self.running = kept

        self._prefetch()
        if out.num_preempted == 0:
            self._admit(out, budget)
        return out

    def _admit(self, out: SchedulerOutput, budget: int) -> None:
        if not self.waiting or len(self.running) >= self.max_num_seqs or budget == 0:
            return  # the common step: nothing to admit, no copy of the queue
        for seq in list(self.waiting):
            if len(self.running) >= self.max_num_seqs or budget == 0:
                break
            if seq.adapter_id is not None:
                try:
                    slot = self.adapters.try_acquire(seq.adapter_id)
                except (UnknownAdapterError, AdapterLoadError) as e:
                    self.waiting.remove(seq)
                    seq.status = SequenceStatus.FINISHED
                    seq.finish_reason = "error"
                    out.failed.append((seq, str(e)))
                    continue
                if slot is None:
                    continue  # loading; later requests may go first
            else:
                slot = -1
            n = min(seq.num_uncomputed, budget)
            need = self._blocks_for(n)
            if need > self.allocator.num_free:
                if slot >= 0:
                    self.adapters.release(seq.adapter_id)
                break  # first come, first served once memory is short: no overtaking by smaller requests
            seq.blocks = self.allocator.allocate(need)
            seq.slot, seq.holds_adapter = slot, slot >= 0
            seq.status = SequenceStatus.RUNNING
            self.waiting.remove(seq)
            self.running.append(seq)
            out.scheduled.append((seq, n))
            budget -= n

    def extend_blocks(self, rows: list[Sequence]) -> bool:
        """Gives each running sequence of `rows` the KV blocks its next token (at position num_computed)
        needs, all or none: False, allocating nothing, when the free blocks do not cover them (then a
        schedule() decides whom to preempt). For a decode step launched without schedule() (the engine's
        overlapped decoding)."""
        needs = [self._blocks_for(seq.num_computed + 1) - len(seq.blocks) for seq in rows]
        if sum(n for n in needs if n > 0) > self.allocator.num_free:
            return False
        for seq, need in zip(rows, needs, strict=True):
            if need > 0:
                seq.blocks += self.allocator.allocate(need)
        return True

    def prefetch(self) -> None:
        """Tells the cache which adapters the head of the queue needs, in queue order (schedule() does this
        every step)."""
        self._prefetch()

    def _prefetch(self) -> None:
        """Tells the cache which adapters the head of the queue needs, in queue order."""
        ids: dict[str, None] = {}
        for seq in self.waiting:
            if len(ids) >= self.prefetch_depth:
                break
            if seq.adapter_id is not None:
                ids[seq.adapter_id] = None
        self.adapters.prefetch(list(ids))

    def _preempt(self, seq: Sequence) -> None:
        # Called from schedule() only, which rebuilds self.running without the preempted sequences.
        logger.debug("preempting %s (%d tokens)", seq.request_id, len(seq.token_ids))
        self._free(seq)
        seq.num_computed = 0
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def _free(self, seq: Sequence) -> None:
        self.allocator.free(seq.blocks)
        seq.blocks = []
        if seq.holds_adapter:
            self.adapters.release(seq.adapter_id)
        seq.slot, seq.holds_adapter = -1, False

    def _blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)
