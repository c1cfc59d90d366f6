"""The LoRA metadata builder, the torch reference and the kernel path's input checks, on CPU."""

from __future__ import annotations

import pytest
import torch

from loraledger.kernels import LoraMeta, lora_apply, lora_apply_fused, lora_apply_fused_ref, lora_apply_ref


def _poisoned_meta(max_tokens: int) -> LoraMeta:
    meta = LoraMeta(max_tokens, "cpu")
    for buf in (meta.token_order, meta.tile_slot, meta.tile_start, meta.tile_end, meta.num_tiles):
        buf.fill_(-777)
    return meta


def _check_meta(meta: LoraMeta, slots: torch.Tensor, block_t: int, num_slots: int) -> None:
    t = slots.shape[0]
    order = meta.token_order[:t].long()
    assert sorted(order.tolist()) == list(range(t))
    key = torch.where(slots < 0, torch.iinfo(torch.int32).max, slots.int())
    expected_key, expected_order = torch.sort(key, stable=True)
    assert torch.equal(order, expected_order)

    n = int(meta.num_tiles)
    assert 0 <= n <= meta.max_tiles(num_slots)
    starts, ends, tile_slots = (b[:n].long() for b in (meta.tile_start, meta.tile_end, meta.tile_slot))
    covered = torch.zeros(t, dtype=torch.long)
    for start, end, slot in zip(starts.tolist(), ends.tolist(), tile_slots.tolist(), strict=True):
        assert 0 < end - start <= block_t
        assert (expected_key[start:end] == slot).all()
        covered[start:end] += 1
    valid = expected_key != torch.iinfo(torch.int32).max
    assert torch.equal(covered, valid.long()), "every token of a slot in exactly one tile, -1 tokens in none"
    # Fewest tiles: a segment of length l takes ceil(l / block_t) of them.
    counts = torch.bincount(slots[slots >= 0].long(), minlength=num_slots)
    assert n == int(((counts + block_t - 1) // block_t).sum())


@pytest.mark.parametrize("block_t", [1, 16, 64])
@pytest.mark.parametrize("t", [1, 7, 37, 200])
def test_meta_tiles_cover_each_adapter_token_once(t: int, block_t: int) -> None:
    gen = torch.Generator().manual_seed(1000 * t + block_t)
    for num_slots, low in ((5, -1), (300, -1), (3, 0)):
        slots = torch.randint(low, num_slots, (t,), generator=gen, dtype=torch.int32)
        meta = _poisoned_meta(t + 3).build(slots, block_t=block_t)
        assert (meta.num_tokens, meta.block_t) == (t, block_t)
        _check_meta(meta, slots, block_t, num_slots)


def test_meta_shapes_of_batches() -> None:
    gen = torch.Generator().manual_seed(7)
    meta = _poisoned_meta(512)
    batches = {
        "one adapter": torch.full((100,), 3),
        "distinct": torch.randperm(300, generator=gen)[:200],
        "no adapter": torch.full((50,), -1),
        "segments of 128": torch.arange(4).repeat_interleave(128),
        "int64, unsorted, -1 first": torch.tensor([-1, 5, 2, 5, -1, 2, 2, 0]),
    }
    for name, slots in batches.items():
        meta.build(slots, block_t=16)  # one LoraMeta rebuilt for batches of any size up to max_tokens
        _check_meta(meta, slots, 16, 300)
        assert int(meta.num_tiles) == {"one adapter": 7, "distinct": 200, "no adapter": 0}.get(
            name, int(meta.num_tiles)
        ), name


def test_meta_build_defaults_block_t_from_the_table_and_handles_empty_batches() -> None:
    meta = LoraMeta(8, "cpu")
    meta.build(torch.tensor([1, 1, -1]))
    assert meta.block_t >= 1 and int(meta.num_tiles) == 1
    meta.build(torch.zeros(0, dtype=torch.int32))
    assert meta.num_tokens == 0 and int(meta.num_tiles) == 0 and meta.max_tiles(4) == 0


def test_meta_rejects_bad_inputs() -> None:
    meta = LoraMeta(4, "cpu")
    with pytest.raises(ValueError):
        meta.build(torch.zeros(5, dtype=torch.int32))
    with pytest.raises(ValueError):
        meta.build(torch.zeros(2, 2, dtype=torch.int32))
    with pytest.raises(ValueError):
        LoraMeta(0, "cpu")


def _naive(y, x, a, b, ranks, scales, slots):
    y = y.double().clone()
    for t, s in enumerate(slots.tolist()):
        if s >= 0 and int(ranks[s]) > 0:
            r = int(ranks[s])
            y[t] += float(scales[s]) * (x[t].double() @ a[s, :r].double().T) @ b[s, :, :r].double().T
    return y


def test_reference_is_the_per_token_loop() -> None:
    gen = torch.Generator().manual_seed(3)
    t, k, n, s, r = 23, 19, 11, 4, 6
    x, y = torch.randn(t, k, generator=gen), torch.randn(t, n, generator=gen)
    a, b = torch.randn(s, r, k, generator=gen), torch.randn(s, n, r, generator=gen)
    ranks, scales = torch.tensor([6, 0, 2, 5]), torch.rand(s, generator=gen)
    slots = torch.randint(-1, s, (t,), generator=gen)
    expected = _naive(y, x, a, b, ranks, scales, slots)
    out = lora_apply_ref(y.double(), x.double(), a.double(), b.double(), ranks, scales.double(), slots)
    torch.testing.assert_close(out, expected)
    # The CPU path of the public operator is the reference (or the interpreter, which matches it).
    torch.testing.assert_close(lora_apply(y.clone(), x, a, b, ranks, scales, slots).double(), expected, rtol=1e-5, atol=1e-5)


def test_fused_reference_writes_each_slice_into_its_columns() -> None:
    gen = torch.Generator().manual_seed(4)
    t, k, s, r, widths = 9, 13, 3, 4, (8, 2, 2)
    x = torch.randn(t, k, generator=gen, dtype=torch.float64)
    wide = torch.randn(t, sum(widths) + 3, generator=gen, dtype=torch.float64)
    y = wide[:, 1 : 1 + sum(widths)]  # a column view
    a = tuple(torch.randn(s, r, k, generator=gen, dtype=torch.float64) for _ in widths)
    b = tuple(torch.randn(s, w, r, generator=gen, dtype=torch.float64) for w in widths)
    ranks = torch.tensor([[4, 2, 0], [0, 3, 4], [1, 1, 1]])
    scales = torch.rand(s, generator=gen, dtype=torch.float64)
    slots = torch.tensor([0, 1, 2, -1, 2, 1, 0, 0, -1])
    expected = wide.clone()
    col = 1
    for i, w in enumerate(widths):
        expected[:, col : col + w] = _naive(expected[:, col : col + w], x, a[i], b[i], ranks[i], scales, slots)
        col += w
    lora_apply_fused(y, x, a, b, ranks, scales, slots)
    torch.testing.assert_close(wide, expected)
    with pytest.raises(ValueError):
        lora_apply_fused_ref(y[:, :-1], x, a, b, ranks, scales, slots)


def _valid_args(widths=(8, 4)):
    s, r, k, t = 3, 4, 16, 5
    return dict(
        y=torch.zeros(t, sum(widths)),
        x=torch.ones(t, k),
        lora_a=tuple(torch.ones(s, r, k) for _ in widths),
        lora_b=tuple(torch.ones(s, w, r) for w in widths),
        ranks=torch.ones(len(widths), s, dtype=torch.int32),
        scales=torch.ones(s),
        token_slots=torch.zeros(t, dtype=torch.int32),
    )


@pytest.mark.parametrize(
    "change",
    [
        {"y": torch.zeros(5, 11)},
        {"x": torch.ones(5, 15)},
        {"lora_a": (torch.ones(3, 4, 16), torch.ones(3, 5, 16))},
        {"lora_b": (torch.ones(3, 8, 4), torch.ones(2, 4, 4))},
        {"lora_b": (torch.ones(3, 8, 4, dtype=torch.float16), torch.ones(3, 4, 4))},
        {"ranks": torch.ones(3, dtype=torch.int32)},
        {"ranks": torch.ones(2, 3)},
        {"scales": torch.ones(3, dtype=torch.float64)},
        {"token_slots": torch.zeros(4, dtype=torch.int32)},
        {"lora_a": tuple(torch.ones(3, 4, 16) for _ in range(4)), "lora_b": tuple(torch.ones(3, 3, 4) for _ in range(4))},
    ],
    ids=["y_width", "x_k", "a_shapes", "b_slots", "b_dtype", "ranks_1d", "ranks_float", "scales_f64", "slots_t", "four_slices"],
)
def test_kernel_path_rejects_mismatched_inputs(change: dict) -> None:
    pytest.importorskip("triton")
    from loraledger.kernels.sgmv import check_inputs

    args = {**_valid_args(), **change}
    if len(args["lora_a"]) == 4:  # the widths and ranks fit; only the slice count is wrong
        args["y"] = torch.zeros(5, 12)
        args["ranks"] = torch.ones(4, 3, dtype=torch.int32)
    with pytest.raises(ValueError):
        check_inputs(*args.values())
    check_inputs(*_valid_args().values())  # and the valid arguments pass


def test_meta_adapters_hint_tightens_the_tiles_bound() -> None:
    slots = torch.tensor([3, 3, -1, 7, 3, 7] * 10, dtype=torch.int32)  # T = 60, two adapters
    meta = _poisoned_meta(64).build(slots, block_t=16)
    loose = meta.max_tiles(num_slots=40)
    meta.build(slots, block_t=16, num_adapters=2)
    assert meta.num_adapters == 2
    assert int(meta.num_tiles) <= meta.max_tiles(num_slots=40) == 5 < loose
    _check_meta(meta, slots, 16, 40)
    assert _poisoned_meta(8).build(torch.full((5,), -1), num_adapters=0).max_tiles(num_slots=4) == 0
    with pytest.raises(ValueError, match="num_adapters"):
        meta.build(slots, num_adapters=-1)


def test_dispatch_rule_reads_host_sizes_only() -> None:
    from loraledger.kernels.configs import fused_config, prefers_fused

    hopper, interpreter = fused_config(torch.device("cuda")), fused_config(torch.device("cpu"))
    # Measured on an H100: one launch lost to two in nearly every decode case, so Hopper never picks it.
    assert not prefers_fused(hopper, 1, 1, 16, (4096,), 4096, 16, 2)
    assert prefers_fused(interpreter, 16, 2, 16, (96,), 128, 16, 4)
    assert not prefers_fused(interpreter, 65, 5, 16, (96,), 128, 16, 4)  # T past max_tokens
    assert not prefers_fused(interpreter, 16, 0, 16, (96,), 128, 16, 4)  # no tiles
    assert not prefers_fused(interpreter, 16, 2, 16, (96,), 1 << 16, 16, 4)  # one program's K walk too long


def test_gather_rule_takes_small_batches_of_mostly_distinct_adapters() -> None:
    from loraledger.kernels.configs import hopper_gather_config, prefers_gather

    def rule(t: int, n: int | None) -> bool:
        return prefers_gather(hopper_gather_config(t), t, n)

    assert rule(64, 64) and rule(256, 128)  # distinct enough, small enough
    assert not rule(64, 8)  # tokens share adapters: the tile kernels read each once
    assert rule(1024, 1024) and rule(512, 384) and rule(1024, 768)
    assert not rule(1024, 512) and not rule(300, 200)  # past 256 tokens, L2 no longer holds the shared adapters
    assert not rule(2048, 2048)  # past the last bucket
    assert hopper_gather_config(2048) == hopper_gather_config(1024)
    assert not rule(64, None)  # the count unknown: the tile kernels
    assert not rule(0, 0)


def test_prefers_gather_is_off_where_the_torch_reference_runs() -> None:
    """On CPU without Triton's interpreter lora_apply runs the reference: the engine must build its LoraMeta
    as before (the reference does not read it, the kernels do)."""
    from loraledger.kernels import _triton_interpreting, prefers_gather

    if _triton_interpreting():
        pytest.skip("the interpreter runs the kernels on CPU")
    assert not prefers_gather(64, 64, torch.device("cpu"))


def test_shrink_pipeline_depth_fits_shared_memory() -> None:
    from loraledger.kernels.configs import hopper_sgmv_config, shrink_stages

    cfg = hopper_sgmv_config(64)  # four stages of [16 + R, 256] tiles
    assert shrink_stages(cfg, 16, 16, 256, 2) == cfg.shrink_stages == 4  # bf16, rank 16: 16 KiB a tile
    # fp32 at a padded rank of 64: 80 KiB a tile; Triton keeps stages - 1 of them, and 240 KiB did not fit on an H100
    assert shrink_stages(cfg, 16, 64, 256, 4) == 3
    assert shrink_stages(cfg, 64, 512, 1024, 4) == 1  # never below one stage
    for t in (1, 64, 256, 1024, 4096):
        c = hopper_sgmv_config(t)
        for block_r in (16, 32, 64):
            for elem in (2, 4):
                stages = shrink_stages(c, c.block_t, block_r, c.block_k, elem)
                assert 1 <= stages <= c.shrink_stages
                assert (stages - 1) * (c.block_t + block_r) * c.block_k * elem <= 160 << 10


def test_wide_rank_pools_take_their_own_table_with_the_same_tiles() -> None:
    from loraledger.kernels.configs import WIDE_RANK, hopper_sgmv_config, sgmv_config

    for t in (1, 16, 64, 65, 256, 257, 1024, 4096):
        narrow, wide = hopper_sgmv_config(t, 16), hopper_sgmv_config(t, WIDE_RANK)
        assert narrow.block_t == wide.block_t  # one step's LoraMeta serves pools of either kind
    # Measured: at rank 64 the table before the sweep (eight shrink warps over 256-wide K chunks) stays faster.
    assert hopper_sgmv_config(64, 64).shrink_warps == 8 and hopper_sgmv_config(64, 16).shrink_warps == 2
    assert hopper_sgmv_config(256, 128).n_blocks == 4 and hopper_sgmv_config(256, 8).n_blocks == 1
    assert sgmv_config(64, torch.device("cpu"), 64) == sgmv_config(64, torch.device("cpu"), 8)  # the interpreter's one
