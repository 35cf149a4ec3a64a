"""Per-sequence block bookkeeping on top of the block pool (no tensors, no I/O)."""

from __future__ import annotations

from engine.core.block_pool import BlockPool
from engine.core.sequence import Sequence
from kv_transfer.block_hash import BlockHasher


class KVCacheManager:
    def __init__(self, pool: BlockPool, hasher: BlockHasher):
        self.pool = pool
        self.hasher = hasher
        self.block_size = hasher.block_size
        self.num_prefix_hit_tokens = 0
        self.num_prefix_query_tokens = 0

    def blocks_needed(self, num_tokens: int) -> int:
        return (num_tokens + self.block_size - 1) // self.block_size

    def find_cached_prefix(self, seq: Sequence) -> list[int]:
        """Cache-hit blocks for a sequence that has computed nothing yet.

        At least one token is always left to compute: its logits give the next token.
        """
        assert seq.num_computed_tokens == 0 and not seq.block_ids
        max_blocks = (seq.num_tokens - 1) // self.block_size
        if max_blocks == 0 or not self.pool.enable_prefix_caching:
            return []
        hashes = []
        parent = None
        for i in range(max_blocks):
            bs = self.block_size
            parent = self.hasher.hash_block(
                parent, seq.all_token_ids[i * bs : (i + 1) * bs], seq.extra_keys
            )
            hashes.append(parent)
        hits = self.pool.lookup(hashes)
        seq.block_hashes = hashes[: len(hits)]
        return hits

    def admit(self, seq: Sequence, num_tokens: int, max_new_tokens: int | None = None) -> int | None:
        """Give a sequence that holds no blocks its cached prefix plus blocks for the rest of
        its first ``num_tokens`` tokens (at most ``max_new_tokens`` of them: a prefill chunk).

        Returns the number of cached tokens (now computed), or None, changing nothing, when
        the pool cannot cover it. The one admission path: waiting sequences (the scheduler)
        and sequences whose KV is pulled from a peer (engine/pd) both come through here, so
        the prefix-cache counters and ``num_cached_tokens`` mean the same for both.
        """
        cached = self.find_cached_prefix(seq)
        num_cached_tokens = len(cached) * self.block_size
        num_new_tokens = num_tokens - num_cached_tokens
        if max_new_tokens is not None:
            num_new_tokens = min(num_new_tokens, max_new_tokens)
        if not self.allocate(seq, num_new_tokens, cached):
            seq.block_hashes = []
            return None
        if not seq.admitted_once:  # a preempted sequence keeps what its first admission hit
            seq.num_cached_tokens = num_cached_tokens
            seq.admitted_once = True
        self.num_prefix_query_tokens += num_tokens
        self.num_prefix_hit_tokens += num_cached_tokens
        return num_cached_tokens

    def can_allocate(self, seq: Sequence, num_new_tokens: int, cached: list[int]) -> bool:
        need = self.blocks_needed(seq.num_computed_tokens + len(cached) * self.block_size
                                  + num_new_tokens) - len(seq.block_ids) - len(cached)
        return max(need, 0) + self.pool.num_reusable(cached) <= self.pool.num_free_blocks

    def allocate(self, seq: Sequence, num_new_tokens: int, cached: list[int] = ()) -> bool:
        """Give ``seq`` blocks for ``num_new_tokens`` more tokens (after any cached prefix).

        Returns False, changing nothing, when the pool cannot cover it.
        """
        cached = list(cached)
        if not self.can_allocate(seq, num_new_tokens, cached):
            return False
        if cached:
            self.pool.acquire(cached)
            seq.block_ids.extend(cached)
            seq.num_computed_tokens += len(cached) * self.block_size
        need = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_ids)
        if need > 0:
            seq.block_ids.extend(self.pool.allocate(need))
        return True

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Hash and publish the blocks that became full with the computed tokens."""
        num_full = seq.num_computed_tokens // self.block_size
        start = len(seq.block_hashes)
        if num_full <= start or not self.pool.enable_prefix_caching:
            return
        parent = seq.block_hashes[-1] if seq.block_hashes else None
        new_hashes = list(
            self.hasher.iter_hashes(
                seq.all_token_ids[: num_full * self.block_size], seq.extra_keys, parent, start
            )
        )
        self.pool.cache_blocks(seq.block_ids[start:num_full], new_hashes, parent)
        seq.block_hashes.extend(new_hashes)

    def free(self, seq: Sequence) -> None:
        self.pool.release(list(reversed(seq.block_ids)))
        seq.block_ids = []
