"""The CPU tier's host arena: fixed-size blocks in chunks, exact capacity, reuse; packing into blocks; the cache on it."""

from __future__ import annotations

import json
import mmap
import threading
import time

import pytest
import torch
from loraledger.runtime.adapters import (
    AdapterCache,
    HostArena,
    HostBudgetFullError,
    ReleasedBlockError,
    adapter_from_tensors,
    read_peft_adapter,
)
from loraledger.runtime.engine.testing import (
    SMALL_LORA_SHAPES,
    lora_state_dict,
    small_adapter_spec,
    small_slot_pool,
)
from safetensors.torch import save_file

SHAPES = SMALL_LORA_SHAPES
CPU = torch.device("cpu")


def _pages(nbytes: int) -> int:
    return -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE


# --- the arena ----------------------------------------------------------------------------------------


def test_arena_grows_in_chunks_up_to_exactly_its_capacity():
    arena = HostArena(1024, 10, pin_memory=False, chunk_bytes=4096)  # 4 blocks a chunk
    assert arena.blocks_per_chunk == 4 and arena.num_chunks == 0 and arena.reserved_bytes == 0

    blocks = [arena.alloc() for _ in range(5)]
    assert arena.num_chunks == 2 and arena.mapped_blocks == 8 and arena.used_blocks == 5
    blocks += [arena.alloc() for _ in range(5)]
    # The last chunk holds what is left of the capacity (2 blocks), not a whole chunk.
    assert arena.num_chunks == 3 and arena.mapped_blocks == arena.used_blocks == 10
    assert arena.reserved_bytes == 2 * _pages(4096) + _pages(2048)
    assert arena.alloc() is None and arena.num_chunks == 3

    # Blocks are disjoint and each exactly block_bytes long.
    for i, block in enumerate(blocks):
        assert block.data.shape == (1024,) and block.data.data_ptr() % 256 == 0
        block.data.fill_(i)
    assert all(bool((b.data == i).all()) for i, b in enumerate(blocks))
    assert sorted(b.index for b in blocks) == list(range(10))


def test_arena_reuses_freed_blocks_without_growing():
    arena = HostArena(512, 3, pin_memory=False, chunk_bytes=512)  # one block a chunk
    a, b = arena.alloc(), arena.alloc()
    ptr = a.data.data_ptr()
    arena.free(a)
    assert arena.used_blocks == 1 and arena.mapped_blocks == 2
    again = arena.alloc()  # the most recently freed block goes out first
    assert again.data.data_ptr() == ptr and again.index == a.index and arena.num_chunks == 2
    assert arena.alloc() is not None and arena.alloc() is None and arena.num_chunks == 3
    ptr = b.data.data_ptr()
    arena.free(b)
    assert arena.alloc().data.data_ptr() == ptr and arena.used_blocks == 3


def test_arena_release_twice_or_use_after_release_is_an_error():
    arena, other = HostArena(256, 2, pin_memory=False), HostArena(256, 1, pin_memory=False)
    block = arena.alloc()
    arena.free(block)
    assert block.released
    with pytest.raises(ReleasedBlockError, match="released"):
        arena.free(block)
    with pytest.raises(ReleasedBlockError):
        block.data.zero_()
    assert arena.used_blocks == 0
    # The stale handle does not alias the block's next owner.
    fresh = arena.alloc()
    assert not fresh.released and fresh is not block
    with pytest.raises(ValueError, match="another arena"):
        other.free(fresh)
    with pytest.raises(ValueError, match="multiple of 256"):
        HostArena(100, 1, pin_memory=False)
    arena.close()
    with pytest.raises(RuntimeError, match="closed"):
        arena.alloc()
    arena.free(fresh)  # blocks in use can still go back after close


def test_arena_of_capacity_zero_maps_nothing():
    arena = HostArena(256, 0, pin_memory=False)
    assert arena.alloc() is None and arena.reserved_bytes == 0 and arena.num_chunks == 0


def test_arena_is_thread_safe():
    arena = HostArena(256, 8, pin_memory=False, chunk_bytes=512)
    owners: dict[int, int] = {}
    errors = []

    def work(me: int) -> None:
        for _ in range(500):
            block = arena.alloc()
            if block is None:
                continue
            if owners.setdefault(block.index, me) != me:
                errors.append(block.index)
            del owners[block.index]
            arena.free(block)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and arena.used_blocks == 0 and arena.mapped_blocks <= 8


# --- packing into blocks ------------------------------------------------------------------------------


def _pool(num_slots=2, dtype=torch.float32):
    return small_slot_pool(num_slots, dtype=dtype)


def _peft_tensors(r, targets, seed):
    return lora_state_dict(SHAPES, r, targets, num_layers=2, seed=seed)


def _reference_image(pool, weights):
    """The packing semantics before the arena: a fresh zeroed image, B scaled, zeros past each rank."""
    flat = torch.zeros(pool.slot_elems, dtype=pool.dtype)
    ranks = torch.zeros(pool.num_layers, len(pool.projections), dtype=torch.int32)
    views = pool.image_views(flat)
    for (layer, name), (a, b, scale) in weights.modules.items():
        r = a.shape[0]
        views[name][0][layer, :r] = a
        views[name][1][layer, :, :r] = b.float() * scale
        ranks[layer, pool.projections.index(name)] = r
    return flat, ranks


ADAPTERS = [  # (rank, alpha, targets)
    (8, 16, ["q_proj", "k_proj", "v_proj", "down_proj"]),
    (2, 3, ["v_proj"]),
    (5, 5, ["q_proj", "down_proj"]),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packing_into_recycled_blocks_matches_a_fresh_zeroed_image(dtype):
    pool = _pool(dtype=dtype)
    arena = pool.host_arena(1, pin_memory=False)
    assert arena.block_bytes == pool.host_image_bytes >= pool.slot_bytes + 2 * 7 * 4
    for i, (r, alpha, targets) in enumerate(ADAPTERS):  # one block, each adapter over the last one's image
        config = {"r": r, "lora_alpha": alpha, "target_modules": targets}
        weights = adapter_from_tensors(config, _peft_tensors(r, targets, seed=i), small_adapter_spec())
        block = arena.alloc()
        if i == 0:
            block.data.fill_(0xFF)  # whatever the memory held before
        packed = pool.pack_into(weights, block)
        flat, ranks = _reference_image(pool, weights)
        assert packed.flat.dtype == dtype and packed.flat.shape == (pool.slot_elems,) and packed.rank == r
        assert torch.equal(packed.flat, flat) and torch.equal(packed.ranks, ranks)
        assert packed.flat.data_ptr() == block.data.data_ptr()  # the image lives in the block
        pool.write(i % pool.num_slots, packed)
        assert torch.equal(pool.slots[i % pool.num_slots], flat)
        assert torch.equal(pool.ranks[:, :, i % pool.num_slots], ranks)
        packed.release()
    # pack() without a cache: an image of its own, the same bytes.
    weights = adapter_from_tensors({"r": 2, "target_modules": ["v_proj"]}, _peft_tensors(2, ["v_proj"], 9), small_adapter_spec())
    assert torch.equal(pool.pack(weights, pin_memory=False).flat, _reference_image(pool, weights)[0])


def test_released_packed_adapter_cannot_be_used_or_released_again():
    pool = _pool()
    weights = adapter_from_tensors({"r": 2, "target_modules": ["v_proj"]}, _peft_tensors(2, ["v_proj"], 1), small_adapter_spec())
    packed = pool.pack(weights, pin_memory=False)
    packed.release()
    assert packed.released
    with pytest.raises(ReleasedBlockError):
        packed.flat.zero_()
    with pytest.raises(ReleasedBlockError):
        pool.write(0, packed)
    with pytest.raises(ReleasedBlockError):
        packed.release()


# --- the cache on the arena ---------------------------------------------------------------------------


def _write_adapter(folder, r, targets, seed, alpha=None):
    folder.mkdir(parents=True)
    save_file(_peft_tensors(r, targets, seed), folder / "adapter_model.safetensors")
    config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha or r, "target_modules": targets}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def _load(cache, adapter_id, timeout_s=10.0):
    """Brings an adapter to a slot through the scheduler's calls; its slot's (image, ranks)."""
    deadline = time.monotonic() + timeout_s
    while not cache.is_resident(adapter_id):
        assert time.monotonic() < deadline, f"{adapter_id} never became resident"
        cache.prefetch([adapter_id])
        cache.poll()
        if not cache.is_resident(adapter_id):
            cache.wait(0.05)
    slot = cache.try_acquire(adapter_id)
    image = (cache.pool.slots[slot].clone(), cache.pool.ranks[:, :, slot].clone())
    cache.release(adapter_id)
    return image


class _CopyInFlight:
    """Stands in for the CUDA events of a host→device copy (on CPU copies finish before copy_ returns)."""

    def __init__(self):
        self.done = False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:  # cache.wait(): the copy is still running when it returns
        time.sleep(0.01)

    def elapsed_time(self, end) -> float:
        return 0.0


@pytest.fixture
def folders(tmp_path):
    """12 adapters of mixed ranks and targets on disk."""
    out = {}
    for i in range(12):
        r, _, targets = ADAPTERS[i % len(ADAPTERS)]
        out[f"a{i}"] = _write_adapter(tmp_path / f"a{i}", r, targets, seed=100 + i)
    return out


def test_tiny_budget_evicts_and_reloads_identical_images_from_disk(folders):
    pool = _pool(num_slots=1)  # every load below is a device miss
    cache = AdapterCache(pool, small_adapter_spec(), cpu_budget_bytes=3 * pool.host_image_bytes + 100, device=CPU)
    for adapter_id, folder in folders.items():
        cache.add(adapter_id, folder)
    stats = cache.stats_snapshot()
    assert stats["host_capacity_images"] == 3 and stats["host_used_images"] == 3 and stats["host_evictions"] == 9
    assert stats["host_image_bytes"] == pool.host_image_bytes and stats["host_spare_images"] == 2
    # One chunk for the budget and the spare blocks: never more than that is mapped.
    assert stats["host_pinned_bytes"] == _pages(5 * pool.host_image_bytes)

    expected = {k: _reference_image(pool, read_peft_adapter(f, small_adapter_spec())) for k, f in folders.items()}
    order = ["a11", "a10", "a0", "a1", "a0", "a5", "a9", "a1"]
    for adapter_id in order:
        image, ranks = _load(cache, adapter_id)
        assert torch.equal(image, expected[adapter_id][0]) and torch.equal(ranks, expected[adapter_id][1])
        assert cache.stats_snapshot()["host_used_images"] <= 3

    stats = cache.stats_snapshot()
    assert stats["device_misses"] == len(order) and stats["device_hits"] == len(order)
    # a11 and a10 were still on the host, and a0 once its read had put it back there; the rest read the disk.
    assert stats["host_hits"] == 3 and stats["disk_reads"] == len(order) - 3
    assert stats["host_evictions"] == 9 + stats["disk_reads"]  # each read evicted the LRU image
    assert stats["host_pinned_bytes"] == _pages(5 * pool.host_image_bytes)
    cache.close()


def test_in_memory_adapters_over_budget_raise_and_the_others_keep_serving(folders):
    pool = _pool(num_slots=1)
    cache = AdapterCache(pool, small_adapter_spec(), cpu_budget_bytes=2 * pool.host_image_bytes, device=CPU)
    cache.add("p0", folders["a0"])
    in_memory = {}
    for i, (r, alpha, targets) in enumerate(ADAPTERS[:2]):
        config = {"r": r, "lora_alpha": alpha, "target_modules": targets}
        in_memory[f"m{i}"] = (config, _peft_tensors(r, targets, seed=i))
        cache.add(f"m{i}", config=config, tensors=in_memory[f"m{i}"][1])  # m1 evicts p0's image
    assert cache.stats_snapshot()["host_evictions"] == 1

    r, alpha, targets = ADAPTERS[2]
    with pytest.raises(HostBudgetFullError, match=r"budget \(2 images of \d+ bytes.*\) is full of in-memory adapters"):
        cache.add("m2", config={"r": r, "target_modules": targets}, tensors=_peft_tensors(r, targets, seed=2))
    assert "m2" not in cache and cache.stats_snapshot()["host_used_images"] == 2

    # A folder still registers (without a host image), and its loads borrow a spare block.
    cache.add("p1", folders["a1"])
    for adapter_id in ["m0", "p1", "m1", "p0", "m0"]:
        image, _ = _load(cache, adapter_id)
        if adapter_id in in_memory:
            config, tensors = in_memory[adapter_id]
            expected = _reference_image(pool, adapter_from_tensors(config, tensors, small_adapter_spec()))[0]
        else:
            folder = folders["a0" if adapter_id == "p0" else "a1"]
            expected = _reference_image(pool, read_peft_adapter(folder, small_adapter_spec()))[0]
        assert torch.equal(image, expected)
        assert cache.stats_snapshot()["host_used_images"] == 2  # the spare block came back after the copy
    stats = cache.stats_snapshot()
    assert stats["disk_reads"] == 2 and stats["host_hits"] == 3

    cache.remove("m0")  # frees a block of the budget: in-memory adapters register again
    cache.add("m2", config={"r": r, "target_modules": targets}, tensors=_peft_tensors(r, targets, seed=2))
    cache.close()


def test_an_image_whose_copy_is_in_flight_is_never_evicted_or_freed(folders):
    pool = _pool(num_slots=2)
    cache = AdapterCache(pool, small_adapter_spec(), cpu_budget_bytes=pool.host_image_bytes, device=CPU)
    cache.add("a0", folders["a0"])
    image = cache._entries["a0"].packed.flat.clone()
    # a0's image is being copied to a slot: the state _start_copy leaves on CUDA until poll() sees the event.
    entry = cache._entries["a0"]
    copy = _CopyInFlight()
    entry.slot, entry.copy_start, entry.copy_event, entry.miss_time = 0, copy, copy, time.perf_counter()
    cache._slot_owner[0] = entry

    cache.add("a1", folders["a1"])  # the budget's only block is mid-copy: a1 registers without an image
    assert cache._entries["a1"].packed is None and cache._entries["a0"].packed is not None
    assert torch.equal(cache._entries["a0"].packed.flat, image)
    image_a1, _ = _load(cache, "a1")  # its read takes a spare block, and the trim after its copy frees that one
    stats = cache.stats_snapshot()
    assert stats["host_evictions"] == 1 and stats["host_used_images"] == 1 and stats["disk_reads"] == 1
    assert torch.equal(cache._entries["a0"].packed.flat, image)
    assert torch.equal(image_a1, _reference_image(pool, read_peft_adapter(folders["a1"], small_adapter_spec()))[0])

    # Removed mid-copy: the block stays taken until the copy is done.
    cache.remove("a0")
    cache.poll()
    assert cache.stats_snapshot()["host_used_images"] == 1
    copy.done = True
    cache.poll()
    assert cache.stats_snapshot()["host_used_images"] == 0
    cache.close()


def test_engine_exports_the_host_tier_numbers(tmp_path):
    from loraledger.runtime.engine import Engine
    from loraledger.runtime.engine.testing import make_tiny_model

    base = make_tiny_model(tmp_path / "m", "llama")
    engine = Engine.from_pretrained(base, max_adapters=2, max_lora_rank=8, cpu_adapter_cache_bytes=1 << 20)
    stats = engine.stats()["adapters"]
    image = stats["host_image_bytes"]
    assert stats["host_capacity_images"] == (1 << 20) // image and stats["host_used_images"] == 0
    assert stats["host_pinned_bytes"] == 0  # nothing mapped before the first image
    engine.close()
