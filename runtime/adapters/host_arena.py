"""A fixed-size-block host arena (page-locked on CUDA): the CPU tier's adapter images live in its blocks."""

from __future__ import annotations

import mmap
import threading
import weakref

import torch

__all__ = ["HostArena", "HostBlock", "ReleasedBlockError"]

# The arena grows by chunks of about this size: one mapping (and, on CUDA, one page-locking call) serves
# several images, instead of one pinned allocation per adapter.
CHUNK_BYTES = 64 << 20

# Block offsets are multiples of this, so a block (and every view the slot layout cuts from it) is as
# aligned as a freshly allocated tensor would be.
BLOCK_ALIGN_BYTES = 256

# Page-locked chunks of arenas collected without close(), unpinned (and unmapped) by the next close() of any
# arena. The collector runs finalizers at any moment, also while a thread captures a CUDA graph, and a
# page-locking call then fails and invalidates the capture; a mapping unmapped while still registered would
# make a later registration of the same addresses fail. So a finalizer only parks the chunks here.
_parked_chunks: list[torch.Tensor] = []
_parked_lock = threading.Lock()


class ReleasedBlockError(RuntimeError):
    """A host block was used or released after it went back to its arena."""


class HostBlock:
    """One block of a HostArena: `data` [block_bytes] uint8, valid from alloc() until it is freed."""

    __slots__ = ("_data", "arena", "index")

    def __init__(self, arena: HostArena, index: int, data: torch.Tensor):
        self.arena = arena
        self.index = index  # the block's position in the arena, for tests and debugging
        self._data: torch.Tensor | None = data

    @property
    def released(self) -> bool:
        return self._data is None

    @property
    def data(self) -> torch.Tensor:
        if self._data is None:
            raise ReleasedBlockError(f"host block {self.index} was released (its memory may hold another image now)")
        return self._data


class HostArena:
    """Blocks of `block_bytes` host bytes, at most `capacity_blocks` of them, recycled through a free list.

    The arena maps memory lazily in chunks (CHUNK_BYTES or one block, whichever is larger, and never past the
    capacity) and never gives a chunk back: an adapter's image is written into a block that was mapped (and
    page-locked) once, so registering an adapter allocates nothing. What is mapped is `reserved_bytes`: each
    chunk's blocks rounded up to whole pages, so at most capacity_blocks × block_bytes plus a page per chunk.

    With pin_memory the chunks are ordinary anonymous mappings page-locked with cudaHostRegister, not
    torch's pinned allocator: that one rounds every allocation up to a power of two (a 64 MiB chunk of 79
    images could take 128 MiB), which would make the budget a guess. close() unpins them (an arena collected
    without it leaves them to the next close(), see _parked_chunks). Page-locking a new chunk is not allowed
    while a thread captures a CUDA graph, as with torch's pinned allocator. Without pin_memory (CPU) the same
    code runs on plain memory. Thread-safe.
    """

    def __init__(self, block_bytes: int, capacity_blocks: int, *, pin_memory: bool, chunk_bytes: int = CHUNK_BYTES):
        if block_bytes <= 0 or block_bytes % BLOCK_ALIGN_BYTES:
            raise ValueError(f"block_bytes must be a positive multiple of {BLOCK_ALIGN_BYTES}, got {block_bytes}")
        if capacity_blocks < 0:
            raise ValueError(f"capacity_blocks must be ≥ 0, got {capacity_blocks}")
        self.block_bytes = block_bytes
        self.capacity_blocks = capacity_blocks
        self.pin_memory = pin_memory
        self.blocks_per_chunk = max(1, chunk_bytes // block_bytes)
        self._lock = threading.Lock()
        self._free: list[HostBlock] = []  # a stack: the most recently freed block (warm in cache) goes out first
        self._mapped_blocks = 0
        self._used_blocks = 0
        self._reserved_bytes = 0
        self._chunks: list[torch.Tensor] = []
        self._closed = False
        if pin_memory:
            self._finalizer = weakref.finalize(self, _park, self._chunks)
            self._finalizer.atexit = False  # the process's end frees everything

    @property
    def used_blocks(self) -> int:
        return self._used_blocks

    @property
    def mapped_blocks(self) -> int:
        return self._mapped_blocks

    @property
    def reserved_bytes(self) -> int:
        """Bytes mapped so far (page-locked with pin_memory), the pages' rounding included."""
        return self._reserved_bytes

    @property
    def num_chunks(self) -> int:
        return len(self._chunks)

    def alloc(self) -> HostBlock | None:
        """A free block (contents undefined), mapping a new chunk if needed; None at capacity."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the host arena is closed")
            if not self._free:
                if self._mapped_blocks == self.capacity_blocks:
                    return None
                self._grow()
            block = self._free.pop()
            self._used_blocks += 1
            return block

    def free(self, block: HostBlock) -> None:
        """Gives a block back; its memory is handed out again, so nothing may read it (a DMA included) after."""
        with self._lock:
            if block.arena is not self:
                raise ValueError(f"host block {block.index} belongs to another arena")
            data = block.data  # raises ReleasedBlockError on a second release
            block._data = None
            self._free.append(HostBlock(self, block.index, data))
            self._used_blocks -= 1

    def close(self) -> None:
        """Unpins the chunks (and those parked by collected arenas) and hands out nothing more. The caller
        makes sure no copy still reads a block and no thread is capturing a CUDA graph; blocks in use stay
        readable (as ordinary memory) while something holds them."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.pin_memory:
            self._finalizer.detach()
            with _parked_lock:
                parked = _parked_chunks[:]
                _parked_chunks.clear()
            for chunk in [*self._chunks, *parked]:
                torch.cuda.check_error(torch.cuda.cudart().cudaHostUnregister(chunk.data_ptr()))
        self._chunks.clear()

    def _grow(self) -> None:
        n = min(self.blocks_per_chunk, self.capacity_blocks - self._mapped_blocks)
        nbytes = n * self.block_bytes
        # An anonymous mapping of its own: page-aligned, shares no page with any other allocation (so
        # page-locking it cannot collide with another registration), and its pages are exactly its size.
        chunk = torch.frombuffer(mmap.mmap(-1, nbytes), dtype=torch.uint8)  # [nbytes]
        if self.pin_memory:
            torch.cuda.check_error(torch.cuda.cudart().cudaHostRegister(chunk.data_ptr(), nbytes, 0))
        self._chunks.append(chunk)
        self._reserved_bytes += -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
        first = self._mapped_blocks
        self._mapped_blocks += n
        # Reversed, so that blocks go out in address order from a fresh chunk.
        for i in reversed(range(n)):
            self._free.append(HostBlock(self, first + i, chunk[i * self.block_bytes : (i + 1) * self.block_bytes]))


def _park(chunks: list[torch.Tensor]) -> None:
    with _parked_lock:
        _parked_chunks.extend(chunks)
