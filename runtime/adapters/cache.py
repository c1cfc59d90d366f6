"""The adapter lifecycle: registry, tiered cache (device slots ← pinned-CPU LRU ← disk), async loads, counters.

Tiers:
    device   the SlotPool (fixed size); a slot is evictable when no running request holds it and it is not pinned
    host     PackedAdapter images (pinned memory on CUDA), LRU within `cpu_budget_bytes`; adapters given as
             in-memory tensors have no disk copy and stay here whatever the budget
    disk     the adapter folder, read and validated again when it faults back in

Loads never block the step: a disk read runs on a worker thread, the host→device copy (one copy_ of the
slot's whole image, see SlotPool) on a side CUDA stream; `poll()` (called by the engine each step) moves
finished loads along. CacheStats keeps the two tiers' latencies apart. All public methods are thread-safe.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .peft_format import (
    AdapterSpec,
    InvalidAdapterError,
    adapter_from_tensors,
    read_peft_adapter,
)
from .slots import PackedAdapter, SlotPool

logger = logging.getLogger(__name__)

__all__ = ["AdapterCache", "AdapterLoadError", "CacheStats", "UnknownAdapterError"]


class UnknownAdapterError(KeyError):
    def __str__(self) -> str:
        return f"unknown adapter {self.args[0]!r}"


class AdapterLoadError(RuntimeError):
    """A registered adapter failed to fault back in (e.g. its file changed on disk and no longer validates)."""


def _percentile(values, q: float) -> float | None:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


def _recent() -> deque:
    return deque(maxlen=4096)


@dataclass
class CacheStats:
    """Counters of the cache; the latency deques hold recent loads (seconds).

    A load is one device miss, from the request (prefetch or pin) to the adapter being resident. It is
    served from the host tier (pinned-CPU hit: one host→device copy) or from disk (read + validate +
    pack on the worker thread, then the copy). `copy_s` times the copy alone: CUDA events on the load
    stream, wall time on CPU.
    """

    device_hits: int = 0  # admissions that found the adapter in a slot
    device_misses: int = 0  # loads into a slot started
    host_hits: int = 0  # of those, served from the host tier
    disk_reads: int = 0  # of those, read from disk
    device_evictions: int = 0
    host_evictions: int = 0
    copied_bytes: int = 0  # host→device, all loads
    load_latency_s: deque = field(default_factory=_recent)  # every load, whichever tier
    host_load_latency_s: deque = field(default_factory=_recent)  # pinned-CPU hits: request → resident
    disk_load_latency_s: deque = field(default_factory=_recent)  # disk loads: request → resident
    disk_read_s: deque = field(default_factory=_recent)  # read + validate + pack, on the worker thread
    copy_s: deque = field(default_factory=_recent)  # the host→device copy alone
    copy_time_s: float = 0.0  # sum of copy_s over all loads

    def snapshot(self) -> dict:
        snap = {
            "device_hits": self.device_hits,
            "device_misses": self.device_misses,
            "host_hits": self.host_hits,
            "disk_reads": self.disk_reads,
            "device_evictions": self.device_evictions,
            "host_evictions": self.host_evictions,
            "copied_bytes": self.copied_bytes,
            "copy_gb_per_s": self.copied_bytes / self.copy_time_s / 1e9 if self.copy_time_s > 0 else None,
        }
        for key, values in (
            ("load_latency", self.load_latency_s),
            ("host_load_latency", self.host_load_latency_s),
            ("disk_load_latency", self.disk_load_latency_s),
            ("disk_read", self.disk_read_s),
            ("copy", self.copy_s),
        ):
            snap[f"{key}_p50_s"] = _percentile(values, 0.5)
            snap[f"{key}_p99_s"] = _percentile(values, 0.99)
        return snap


@dataclass(eq=False)
class _Entry:
    adapter_id: str
    path: Path | None  # None: given in memory, never leaves the host tier
    packed: PackedAdapter | None = None
    slot: int | None = None
    copy_event: torch.cuda.Event | None = None  # set while the host→device copy is in flight (its end)
    copy_start: torch.cuda.Event | None = None  # recorded before the copy, to time it
    reading: concurrent.futures.Future | None = None  # set while the disk read is in flight
    miss_time: float | None = None  # perf_counter of the request that started the current load
    from_disk: bool = False  # the current load read the disk
    refs: int = 0
    pinned: bool = False
    removed: bool = False
    error: Exception | None = None

    @property
    def resident(self) -> bool:
        return self.slot is not None and self.copy_event is None


class AdapterCache:
    def __init__(self, pool: SlotPool, spec: AdapterSpec, *, cpu_budget_bytes: int, device: torch.device):
        self.pool = pool
        self.spec = spec
        self.cpu_budget_bytes = cpu_budget_bytes
        self.device = device
        self.stats = CacheStats()
        self._cuda = device.type == "cuda"
        self._stream = torch.cuda.Stream(device) if self._cuda else None
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._retiring: dict[str, _Entry] = {}  # removed while running requests still hold their slot
        self._host_lru: OrderedDict[str, _Entry] = OrderedDict()
        self._device_lru: OrderedDict[str, _Entry] = OrderedDict()  # resident, unreferenced, unpinned
        self._slot_owner: list[_Entry | None] = [None] * pool.num_slots
        self._wanted: set[str] = set()  # adapters of queued requests: never evicted to make room for a load
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="adapter-loader")

    # --- registry -----------------------------------------------------------------------------------

    def add(
        self,
        adapter_id: str,
        path: str | Path | None = None,
        *,
        config: dict | None = None,
        tensors: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Registers an adapter from a PEFT folder or from (config, state dict); validates it now.

        Raises InvalidAdapterError (and registers nothing) when the adapter does not validate.
        """
        if (path is None) == (tensors is None) or (tensors is not None and config is None):
            raise ValueError("give either a path or both config and tensors")
        if path is not None:
            weights = read_peft_adapter(path, self.spec)
        else:
            weights = adapter_from_tensors(config, tensors, self.spec, source=f"<adapter {adapter_id}>")
        packed = self.pool.pack(weights, pin_memory=self._cuda)
        with self._lock:
            if adapter_id in self._entries or adapter_id in self._retiring:
                raise ValueError(f"adapter {adapter_id!r} is already registered")
            entry = _Entry(adapter_id, None if path is None else Path(path), packed=packed)
            self._entries[adapter_id] = entry
            self._host_lru[adapter_id] = entry
            self._trim_host()

    def remove(self, adapter_id: str) -> None:
        """Unregisters an adapter; running requests that use it finish first, waiting ones fail."""
        with self._lock:
            entry = self._get(adapter_id)
            del self._entries[adapter_id]
            entry.removed = True
            self._host_lru.pop(adapter_id, None)
            self._device_lru.pop(adapter_id, None)
            entry.packed = None
            if entry.refs > 0:
                self._retiring[adapter_id] = entry
            else:
                self._free_slot(entry)

    def __contains__(self, adapter_id: str) -> bool:
        with self._lock:
            return adapter_id in self._entries

    def adapter_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def pin(self, adapter_id: str) -> None:
        """Keeps an adapter in a device slot until unpinned (loads it now if needed)."""
        with self._lock:
            entry = self._get(adapter_id)
            if not entry.pinned:
                pinned = sum(e.pinned for e in self._entries.values())
                if pinned + 1 >= self.pool.num_slots:
                    raise ValueError(f"pinning {adapter_id!r} would leave no slot for unpinned adapters")
                entry.pinned = True
                self._device_lru.pop(adapter_id, None)
            if entry.slot is None:
                self._request_load(entry)

    def unpin(self, adapter_id: str) -> None:
        with self._lock:
            entry = self._get(adapter_id)
            entry.pinned = False
            if entry.resident and entry.refs == 0:
                self._device_lru[adapter_id] = entry

    def stats_snapshot(self) -> dict:
        """The counters as a dict (safe to call from any thread)."""
        with self._lock:
            return self.stats.snapshot()

    def is_resident(self, adapter_id: str) -> bool:
        with self._lock:
            entry = self._entries.get(adapter_id)
            return entry is not None and entry.resident

    # --- the scheduler's side -----------------------------------------------------------------------

    def try_acquire(self, adapter_id: str) -> int | None:
        """The adapter's slot, held until release(), if it is resident; else None (prefetch() loads it).
        Raises UnknownAdapterError or AdapterLoadError (the request cannot be served)."""
        with self._lock:
            entry = self._get(adapter_id)
            if entry.error is not None:
                raise AdapterLoadError(str(entry.error)) from entry.error
            if not entry.resident:
                return None
            self.stats.device_hits += 1
            entry.refs += 1
            self._device_lru.pop(adapter_id, None)
            return entry.slot

    def release(self, adapter_id: str) -> None:
        with self._lock:
            entry = self._entries.get(adapter_id) or self._retiring.get(adapter_id)
            if entry is None or entry.refs == 0:
                raise RuntimeError(f"release of adapter {adapter_id!r} that is not held")
            entry.refs -= 1
            if entry.refs == 0:
                if entry.removed:
                    del self._retiring[adapter_id]
                    self._free_slot(entry)
                elif not entry.pinned:
                    self._device_lru[adapter_id] = entry

    def prefetch(self, adapter_ids: list[str]) -> None:
        """Declares the adapters queued requests need, most urgent first, and starts loading them.

        Replaces the previous call's list. Listed adapters are not evicted to make room for a load, so
        a loaded adapter stays until its request is admitted; loads stop at the first one that finds
        no slot (later ones would not get one either). Unknown ids are left to fail at admission.
        """
        with self._lock:
            pinned = [e.adapter_id for e in self._entries.values() if e.pinned]
            self._wanted = {*adapter_ids, *pinned}
            for adapter_id in [*pinned, *adapter_ids]:
                entry = self._entries.get(adapter_id)
                if entry is None or entry.slot is not None or entry.error is not None:
                    continue
                if not self._request_load(entry):
                    break

    def poll(self) -> None:
        """Moves finished disk reads on to the device and finished copies to resident. Never blocks."""
        with self._lock:
            for entry in list(self._entries.values()):
                if entry.reading is not None and entry.reading.done():
                    self._finish_read(entry)
                if entry.copy_event is not None and entry.copy_event.query():
                    self._finish_copy(entry, entry.copy_start.elapsed_time(entry.copy_event) / 1e3)

    def loads_in_flight(self) -> bool:
        with self._lock:
            return any(e.reading is not None or e.copy_event is not None for e in self._entries.values())

    def wait(self, timeout_s: float) -> None:
        """Blocks until some load finishes or timeout_s passes (for a step loop with nothing else to run)."""
        with self._lock:
            reads = [e.reading for e in self._entries.values() if e.reading is not None]
            copies = [e.copy_event for e in self._entries.values() if e.copy_event is not None]
        if copies:
            copies[0].synchronize()
        elif reads:
            concurrent.futures.wait(reads, timeout=timeout_s, return_when=concurrent.futures.FIRST_COMPLETED)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    # --- internals (lock held) ----------------------------------------------------------------------

    def _get(self, adapter_id: str) -> _Entry:
        entry = self._entries.get(adapter_id)
        if entry is None:
            raise UnknownAdapterError(adapter_id)
        return entry

    def _request_load(self, entry: _Entry) -> bool:
        """Starts (or continues) bringing an entry to a slot; False when no slot can be had now."""
        if entry.reading is not None or entry.slot is not None:
            return True
        if entry.miss_time is None:
            self.stats.device_misses += 1
            entry.miss_time = time.perf_counter()
            entry.from_disk = False
        if entry.packed is not None:
            self._host_lru.move_to_end(entry.adapter_id)
            return self._start_copy(entry)
        self.stats.disk_reads += 1
        entry.from_disk = True
        entry.reading = self._executor.submit(self._read, entry.path)
        return True

    def _read(self, path: Path) -> tuple[PackedAdapter, float]:
        start = time.perf_counter()
        packed = self.pool.pack(read_peft_adapter(path, self.spec), pin_memory=self._cuda)
        return packed, time.perf_counter() - start

    def _finish_read(self, entry: _Entry) -> None:
        future, entry.reading = entry.reading, None
        try:
            entry.packed, read_s = future.result()
        except InvalidAdapterError as e:
            logger.warning("adapter %r failed to load: %s", entry.adapter_id, e)
            entry.error = e
            return
        self.stats.disk_read_s.append(read_s)
        self._host_lru[entry.adapter_id] = entry
        self._start_copy(entry)
        self._trim_host()

    def _start_copy(self, entry: _Entry) -> bool:
        slot = self._take_slot()
        if slot is None:
            return False  # the next prefetch() tries again
        self._slot_owner[slot] = entry
        entry.slot = slot
        if not entry.from_disk:
            self.stats.host_hits += 1
        if self._cuda:
            # The slot may have been read by a step still queued on the compute stream. The copy waits
            # for that work on the side stream; the compute stream never waits for the copy.
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._stream):
                entry.copy_start = torch.cuda.Event(enable_timing=True)
                entry.copy_start.record(self._stream)
                self.pool.write(slot, entry.packed)
                entry.copy_event = torch.cuda.Event(enable_timing=True)
                entry.copy_event.record(self._stream)
        else:
            start = time.perf_counter()
            self.pool.write(slot, entry.packed)
            self._finish_copy(entry, time.perf_counter() - start)
        return True

    def _finish_copy(self, entry: _Entry, copy_s: float) -> None:
        now = time.perf_counter()
        entry.copy_event = entry.copy_start = None
        stats = self.stats
        stats.copy_s.append(copy_s)
        stats.copy_time_s += copy_s
        stats.copied_bytes += self.pool.slot_bytes
        latency_s = now - entry.miss_time
        stats.load_latency_s.append(latency_s)
        (stats.disk_load_latency_s if entry.from_disk else stats.host_load_latency_s).append(latency_s)
        entry.miss_time = None
        if entry.refs == 0 and not entry.pinned:
            self._device_lru[entry.adapter_id] = entry

    def _take_slot(self) -> int | None:
        for slot, owner in enumerate(self._slot_owner):
            if owner is None:
                return slot
        victim = next((e for e in self._device_lru.values() if e.adapter_id not in self._wanted), None)
        if victim is None:
            return None
        del self._device_lru[victim.adapter_id]
        self.stats.device_evictions += 1
        slot = victim.slot
        victim.slot = None
        self._slot_owner[slot] = None
        return slot

    def _free_slot(self, entry: _Entry) -> None:
        if entry.slot is not None:
            self._slot_owner[entry.slot] = None
            entry.slot = None

    def _trim_host(self) -> None:
        """Drops host images (LRU first) past the budget; never one without a disk copy or mid-copy."""
        used = sum(e.packed.nbytes for e in self._host_lru.values())
        for adapter_id, entry in list(self._host_lru.items()):
            if used <= self.cpu_budget_bytes:
                break
            if entry.path is None or entry.copy_event is not None:
                continue
            used -= entry.packed.nbytes
            entry.packed = None
            del self._host_lru[adapter_id]
            self.stats.host_evictions += 1
