"""The adapter lifecycle: registry, tiered cache (device slots ← pinned-CPU LRU ← disk), async loads, counters.

Tiers:
    device   the SlotPool (fixed size); a slot is evictable when no running request holds it and it is not pinned
    host     PackedAdapter images in the blocks of one HostArena (page-locked on CUDA), LRU; the budget is
             cpu_budget_bytes // the image's bytes blocks, counted as they are taken and freed. Adapters given
             as in-memory tensors have no disk copy: they keep their block until removed, and registering one
             when no block can be freed raises HostBudgetFullError. Beyond the budget the arena has
             _SPARE_IMAGES blocks for disk reads alone, taken when nothing can be evicted (a budget of 0, or
             one full of in-memory adapters) and freed again once their image's copy is done.
    disk     the adapter folder, read and validated again when it faults back in

Loads never block the step: a disk read runs on a worker thread, the host→device copy (one copy_ of the
slot's whole image, see SlotPool) on a side CUDA stream; `poll()` (called by the engine each step) moves
finished loads along. A host image is never evicted or freed while its host→device copy is in flight (the
DMA reads its block), not even when its adapter is removed. CacheStats keeps the two tiers' latencies apart.
All public methods are thread-safe.
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

from .host_arena import HostBlock
from .peft_format import (
    AdapterSpec,
    InvalidAdapterError,
    adapter_from_tensors,
    read_peft_adapter,
)
from .slots import PackedAdapter, SlotPool

logger = logging.getLogger(__name__)

__all__ = ["AdapterCache", "AdapterLoadError", "CacheStats", "HostBudgetFullError", "UnknownAdapterError"]

# Host blocks beyond the budget, for disk reads only: one being read and packed on the loader thread, one
# being copied to the device, so reads and copies still overlap when the budget has nothing to evict.
_SPARE_IMAGES = 2


class UnknownAdapterError(KeyError):
    def __str__(self) -> str:
        return f"unknown adapter {self.args[0]!r}"


class AdapterLoadError(RuntimeError):
    """A registered adapter failed to fault back in (e.g. its file changed on disk and no longer validates)."""


class HostBudgetFullError(RuntimeError):
    """An in-memory adapter was not registered: every block of the CPU tier's budget holds an image it cannot drop."""


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
    packed: PackedAdapter | None = None  # the host image; in _host_lru when it has a path
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
        # The host tier: images with a disk copy, least recently used first (in-memory adapters are not in
        # it: they never leave). The arena counts the blocks in use, so the budget is never summed.
        self.host_capacity_images = cpu_budget_bytes // pool.host_image_bytes
        self._arena = pool.host_arena(self.host_capacity_images + _SPARE_IMAGES, pin_memory=self._cuda)
        self._host_lru: OrderedDict[str, _Entry] = OrderedDict()
        self._orphans: list[_Entry] = []  # removed while their read or copy was in flight: freed by poll()
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

        Its image goes to the host tier, evicting the least recently used image with a disk copy if the
        budget is full. An adapter from a folder that finds nothing to evict is registered without an image
        (its first load reads the disk). Raises InvalidAdapterError when the adapter does not validate, and
        HostBudgetFullError for in-memory tensors that find no block; either way it registers nothing.
        """
        if (path is None) == (tensors is None) or (tensors is not None and config is None):
            raise ValueError("give either a path or both config and tensors")
        if path is not None:
            weights = read_peft_adapter(path, self.spec)
        else:
            weights = adapter_from_tensors(config, tensors, self.spec, source=f"<adapter {adapter_id}>")
        with self._lock:
            self._check_unregistered(adapter_id)
            block = self._take_block(spare=False)
            if block is None and path is None:
                raise self._budget_full_error(adapter_id)
        packed = None
        if block is not None:  # packed outside the lock: registrations on several threads pack in parallel
            try:
                packed = self.pool.pack_into(weights, block)
            except BaseException:
                self._arena.free(block)
                raise
        with self._lock:
            try:
                self._check_unregistered(adapter_id)
            except ValueError:
                if packed is not None:
                    packed.release()
                raise
            entry = _Entry(adapter_id, None if path is None else Path(path), packed=packed)
            self._entries[adapter_id] = entry
            if packed is not None and entry.path is not None:
                self._host_lru[adapter_id] = entry

    def remove(self, adapter_id: str) -> None:
        """Unregisters an adapter; running requests that use it finish first, waiting ones fail."""
        with self._lock:
            entry = self._get(adapter_id)
            del self._entries[adapter_id]
            entry.removed = True
            self._host_lru.pop(adapter_id, None)
            self._device_lru.pop(adapter_id, None)
            if entry.reading is not None or entry.copy_event is not None:
                self._orphans.append(entry)  # its block is read (or written) until then
            else:
                self._release_image(entry)
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
        """The counters, and the host tier's blocks (images the budget holds, spare ones for disk reads, in
        use now, and the bytes the arena has mapped: page-locked on CUDA), as a dict (safe from any thread)."""
        with self._lock:
            return {
                **self.stats.snapshot(),
                "host_capacity_images": self.host_capacity_images,
                "host_spare_images": _SPARE_IMAGES,
                "host_used_images": self._arena.used_blocks,
                "host_image_bytes": self._arena.block_bytes,
                "host_pinned_bytes": self._arena.reserved_bytes,
            }

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
            if self._orphans:
                self._free_orphans()

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
        """Stops the loader and unpins the host tier; the cache is done."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._cuda:
            self._stream.synchronize()  # no copy may read a block once it is unpinned
        self._arena.close()

    # --- internals (lock held) ----------------------------------------------------------------------

    def _get(self, adapter_id: str) -> _Entry:
        entry = self._entries.get(adapter_id)
        if entry is None:
            raise UnknownAdapterError(adapter_id)
        return entry

    def _check_unregistered(self, adapter_id: str) -> None:
        if adapter_id in self._entries or adapter_id in self._retiring:
            raise ValueError(f"adapter {adapter_id!r} is already registered")

    def _budget_full_error(self, adapter_id: str) -> HostBudgetFullError:
        capacity, in_memory = self.host_capacity_images, sum(e.path is None for e in self._entries.values())
        state = (
            "is full of in-memory adapters, which never leave the host tier"
            if in_memory >= capacity
            else f"has no free block: {in_memory} hold in-memory adapters, which never leave the host tier, and "
            f"{capacity - in_memory} are busy with loads or registrations (try again)"
        )
        return HostBudgetFullError(
            f"adapter {adapter_id!r} was not registered: the CPU adapter budget ({capacity} images of "
            f"{self._arena.block_bytes} bytes, cpu_budget_bytes={self.cpu_budget_bytes}) {state}. Remove an "
            "in-memory adapter, register adapters from a folder, or raise the budget."
        )

    def _request_load(self, entry: _Entry) -> bool:
        """Starts (or continues) bringing an entry to a slot; False when no slot (or, for a disk read, no host
        block) can be had now."""
        if entry.reading is not None or entry.slot is not None:
            return True
        if entry.miss_time is None:
            self.stats.device_misses += 1
            entry.miss_time = time.perf_counter()
            entry.from_disk = False
        if entry.packed is not None:
            if entry.path is not None:
                self._host_lru.move_to_end(entry.adapter_id)
            return self._start_copy(entry)
        block = self._take_block(spare=True)
        if block is None:
            return False  # every block is mid-copy or holds an in-memory adapter: the next prefetch() tries again
        self.stats.disk_reads += 1
        entry.from_disk = True
        entry.reading = self._executor.submit(self._read, entry.path, block)
        return True

    def _read(self, path: Path, block: HostBlock) -> tuple[PackedAdapter, float]:
        """On the loader thread: read, validate and pack into `block` (given back if any of it fails)."""
        start = time.perf_counter()
        try:
            packed = self.pool.pack_into(read_peft_adapter(path, self.spec), block)
        except BaseException:
            self._arena.free(block)
            raise
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
        self._trim_host()  # the image may be evicted now that no copy reads it

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
        """Drops host images (LRU first) while more blocks are in use than the budget holds (spare blocks
        taken by disk reads come back here, once their copies are done)."""
        while self._arena.used_blocks > self.host_capacity_images and self._evict_host_image():
            pass

    def _take_block(self, *, spare: bool) -> HostBlock | None:
        """A host block within the budget, evicting the LRU image if it is full; with `spare` (disk reads)
        one of the spare blocks when nothing can be evicted. None when there is none."""
        arena = self._arena
        if (
            arena.used_blocks < self.host_capacity_images
            or self._evict_host_image()
            or (spare and arena.used_blocks < arena.capacity_blocks)
        ):
            return arena.alloc()
        return None

    def _evict_host_image(self) -> bool:
        """Frees the least recently used host image whose copy is not in flight; False when there is none.
        The host LRU holds only images with a disk copy, so only copies in flight are skipped."""
        victim = next((e for e in self._host_lru.values() if e.copy_event is None), None)
        if victim is None:
            return False
        del self._host_lru[victim.adapter_id]
        self._release_image(victim)
        self.stats.host_evictions += 1
        return True

    def _release_image(self, entry: _Entry) -> None:
        if entry.packed is not None:
            entry.packed.release()
            entry.packed = None

    def _free_orphans(self) -> None:
        """Frees the blocks of removed adapters whose read or copy has finished since."""
        for entry in list(self._orphans):
            if entry.reading is not None and entry.reading.done():
                future, entry.reading = entry.reading, None
                try:
                    entry.packed, _ = future.result()
                except InvalidAdapterError as e:  # the read gave its block back; the adapter is gone anyway
                    logger.info("removed adapter %r failed to load: %s", entry.adapter_id, e)
            if entry.copy_event is not None and entry.copy_event.query():
                entry.copy_event = entry.copy_start = None
            if entry.reading is None and entry.copy_event is None:
                self._orphans.remove(entry)
                self._release_image(entry)
