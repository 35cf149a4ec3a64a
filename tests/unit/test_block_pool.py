import pytest

from engine.core.block_pool import BlockPool, NoFreeBlocksError
from engine.core.kv_events import AllBlocksCleared, BlockRemoved, BlockStored


def test_allocate_release_refcounts():
    pool = BlockPool(4)
    a = pool.allocate(3)
    assert pool.num_free_blocks == 1
    pool.acquire(a[:1])
    assert pool.ref_count(a[0]) == 2
    pool.release(list(reversed(a)))
    assert pool.num_free_blocks == 3
    pool.release(a[:1])
    assert pool.num_free_blocks == 4
    with pytest.raises(NoFreeBlocksError):
        pool.allocate(5)


def test_cached_blocks_survive_release_and_are_revived():
    pool = BlockPool(4)
    blocks = pool.allocate(2)
    pool.cache_blocks(blocks, [11, 22], parent=None)
    pool.release(list(reversed(blocks)))
    assert pool.num_free_blocks == 4 and pool.num_cached_blocks == 2
    hits = pool.lookup([11, 22, 33])
    assert hits == blocks
    assert pool.num_reusable(hits) == 2
    pool.acquire(hits)
    assert pool.num_free_blocks == 2


def test_lookup_stops_at_first_miss():
    pool = BlockPool(4)
    blocks = pool.allocate(2)
    pool.cache_blocks(blocks, [11, 22], parent=None)
    assert pool.lookup([99, 22]) == []
    assert pool.lookup([11, 99, 22]) == blocks[:1]


def test_uncached_blocks_are_reused_before_cached_ones_lru():
    pool = BlockPool(3)
    cached = pool.allocate(2)
    pool.cache_blocks(cached, [1, 2], parent=None)
    pool.release([cached[1]])  # released first: least recently used
    pool.release([cached[0]])
    plain = pool.allocate(1)
    pool.release(plain)  # uncached block goes to the head: used next, no eviction
    pool.drain_events()
    assert pool.allocate(1) == plain
    assert pool.drain_events() == []
    assert pool.allocate(1) == [cached[1]]  # LRU cached block evicted next
    assert pool.drain_events() == [BlockRemoved((2,))]
    assert pool.lookup([1]) == [cached[0]]


def test_events_and_duplicate_hash():
    pool = BlockPool(4)
    a = pool.allocate(2)
    pool.cache_blocks(a, [5, 6], parent=None)
    b = pool.allocate(1)
    pool.cache_blocks(b, [5], parent=None)  # same prefix computed twice: first block kept
    assert pool.lookup([5]) == [a[0]]
    assert pool.drain_events() == [BlockStored((5, 6), None)]
    pool.release(list(reversed(a)) + b)
    assert pool.reset_prefix_cache()
    assert pool.drain_events() == [AllBlocksCleared()]
    assert pool.lookup([5]) == []


def test_reset_refused_while_in_use():
    pool = BlockPool(2)
    pool.allocate(1)
    assert not pool.reset_prefix_cache()
