"""The pool of KV blocks: reference counts, the prefix cache, LRU eviction, KV events.

Invariants:
- a block is in ``_free`` exactly when its reference count is 0;
- a block is in ``_cached`` (hash -> block) exactly when it holds that full block's KV and has
  not been handed out for other tokens since; a free cached block can be revived by a hit;
- ``_free`` is ordered oldest first: allocation takes from the head, so the least recently
  released cached block is evicted first.
"""

from __future__ import annotations

from collections import OrderedDict

from engine.core.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from kv_transfer.block_hash import BlockHash


class NoFreeBlocksError(RuntimeError):
    pass


class BlockPool:
    def __init__(self, num_blocks: int, enable_prefix_caching: bool = True):
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self._ref_counts = [0] * num_blocks
        self._block_hash: list[BlockHash | None] = [None] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: dict[BlockHash, int] = {}
        self._events: list[KVEvent] = []
        self.num_evictions = 0

    # -- queries ----------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks that can be handed out now (free, cached or not)."""
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def ref_count(self, block_id: int) -> int:
        return self._ref_counts[block_id]

    def lookup(self, block_hashes: list[BlockHash]) -> list[int]:
        """Blocks of the longest cached run of ``block_hashes`` from the start."""
        hits = []
        if not self.enable_prefix_caching:
            return hits
        for h in block_hashes:
            block = self._cached.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    def num_reusable(self, block_ids: list[int]) -> int:
        """How many of these (cache-hit) blocks are currently free, i.e. would leave the pool."""
        return sum(1 for b in block_ids if self._ref_counts[b] == 0)

    # -- changes ----------------------------------------------------------------------------
    def allocate(self, num: int) -> list[int]:
        if num > len(self._free):
            raise NoFreeBlocksError(f"asked for {num} blocks, {len(self._free)} free")
        out = []
        evicted: list[BlockHash] = []
        for _ in range(num):
            block, _ = self._free.popitem(last=False)
            h = self._block_hash[block]
            if h is not None:
                del self._cached[h]
                self._block_hash[block] = None
                evicted.append(h)
            self._ref_counts[block] = 1
            out.append(block)
        if evicted:
            self.num_evictions += len(evicted)
            self._events.append(BlockRemoved(tuple(evicted)))
        return out

    def acquire(self, block_ids: list[int]) -> None:
        """Take a reference on cache-hit blocks."""
        for b in block_ids:
            if self._ref_counts[b] == 0:
                del self._free[b]
            self._ref_counts[b] += 1

    def release(self, block_ids: list[int]) -> None:
        """Drop a reference; blocks reaching 0 become free (cached ones stay revivable).

        Callers pass a sequence's blocks in reverse order so its tail blocks, least likely to
        be shared, are evicted first.
        """
        for b in block_ids:
            assert self._ref_counts[b] > 0, f"block {b} released more often than acquired"
            self._ref_counts[b] -= 1
            if self._ref_counts[b] == 0:
                if self._block_hash[b] is None:
                    # Uncached blocks hold nothing reusable: hand them out before cached ones.
                    self._free[b] = None
                    self._free.move_to_end(b, last=False)
                else:
                    self._free[b] = None

    def cache_blocks(
        self, block_ids: list[int], block_hashes: list[BlockHash], parent: BlockHash | None
    ) -> None:
        """Enter newly full blocks into the prefix cache and emit one ``BlockStored``.

        A hash already cached under another block (the same prefix computed twice) keeps its
        first block; the duplicate stays uncached and is freed normally.
        """
        if not self.enable_prefix_caching:
            return
        stored = []
        for block, h in zip(block_ids, block_hashes, strict=True):
            if h in self._cached or self._block_hash[block] is not None:
                continue
            self._cached[h] = block
            self._block_hash[block] = h
            stored.append(h)
        if stored:
            self._events.append(BlockStored(tuple(stored), parent))

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash; only possible when no block is in use."""
        if len(self._free) != self.num_blocks:
            return False
        self._cached.clear()
        self._block_hash = [None] * self.num_blocks
        self._events.append(AllBlocksCleared())
        return True

    def drain_events(self) -> list[KVEvent]:
        events, self._events = self._events, []
        return events
