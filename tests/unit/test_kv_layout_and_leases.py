import pytest

from kv_transfer.layout import HeadSlice, RegionLayout, plan_head_slices
from kv_transfer.leases import LeaseTable


def test_head_slices_for_each_tp_pair():
    assert plan_head_slices(4, 1, 1, 0) == [HeadSlice(0, 0, 0, 4)]
    # decode finer than prefill: each decode rank reads a sub-slice of one owner rank
    assert plan_head_slices(4, 1, 2, 1) == [HeadSlice(0, 2, 0, 2)]
    assert plan_head_slices(8, 2, 4, 3) == [HeadSlice(1, 2, 0, 2)]
    # decode coarser: one decode rank gathers whole slices from several owner ranks
    assert plan_head_slices(4, 2, 1, 0) == [HeadSlice(0, 0, 0, 2), HeadSlice(1, 0, 2, 2)]
    assert plan_head_slices(8, 4, 2, 1) == [HeadSlice(2, 0, 0, 2), HeadSlice(3, 0, 2, 2)]
    with pytest.raises(ValueError):
        plan_head_slices(6, 2, 3, 0)


def test_region_layout_matches_the_engine_buffer():
    """A block's head range is one run of bytes at the offsets the connector computes."""
    import torch

    from engine.runner.kv_cache import KVCacheLayout

    engine = KVCacheLayout(num_layers=2, num_blocks=5, num_kv_heads=4, block_size=4, head_dim=8,
                           dtype=torch.float16)
    region = RegionLayout(num_layers=2, num_blocks=5, num_heads=4, block_size=4, head_dim=8,
                          elem_bytes=2)
    assert region.head_bytes == 2 * 2 * 4 * 8 * 2
    assert region.block_bytes == engine.bytes_per_block == 4 * region.head_bytes
    assert region.total_bytes == 5 * region.block_bytes
    buffer = torch.arange(torch.Size(engine.shape).numel(), dtype=torch.int32).reshape(engine.shape)
    flat = buffer.view(-1)
    elems = region.head_bytes // 2  # int32 elements stand in for the fp16 ones, one each
    for block, head, count in [(0, 0, 4), (3, 1, 2), (4, 2, 2)]:
        start = (block * region.block_bytes + head * region.head_bytes) // 2
        assert torch.equal(flat[start:start + count * elems],
                           buffer[block, head:head + count].reshape(-1))
    # each layer's K and V are [blocks, heads, block, dim] views of the same memory
    k_layer1 = buffer[:, :, 1, 0]
    assert k_layer1.shape == (5, 4, 4, 8)
    assert k_layer1[2, 3, 1, 5] == flat[(2 * region.block_bytes + 3 * region.head_bytes) // 2
                                        + ((1 * 2 + 0) * 4 + 1) * 8 + 5]


def test_lease_release_and_expiry():
    now = [100.0]
    table = LeaseTable(grace_s=1.0, clock=lambda: now[0])
    table.grant("a", (1, 2), lease_s=5)
    table.grant("b", (3,), lease_s=5)
    with pytest.raises(ValueError):
        table.grant("a", (4,), lease_s=5)
    assert table.release("a").block_ids == (1, 2)
    now[0] = 105.5
    assert table.expire() == []  # inside the grace period
    now[0] = 106.5
    assert [lease.request_id for lease in table.expire()] == ["b"]
    assert len(table) == 0 and table.num_expired == 1 and table.num_released == 1


def test_contiguous_runs():
    from kv_transfer.nixl_connector import contiguous_runs

    assert contiguous_runs([2, 3, 4, 9, 10], [5, 6, 7, 0, 1]) == [(2, 5, 3), (9, 0, 2)]
    assert contiguous_runs([1, 2], [5, 9]) == [(1, 5, 1), (2, 9, 1)]  # dst breaks the run
    assert contiguous_runs([], []) == []
