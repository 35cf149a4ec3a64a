"""KV-cache events: what the block pool stored and evicted, for the router's prefix index.

Plain dataclasses; the workers number them and publish them to Redis Streams.
"""

from __future__ import annotations

from dataclasses import dataclass

from kv_transfer.block_hash import BlockHash


@dataclass(frozen=True)
class BlockStored:
    """Full blocks entered the prefix cache; ``parent_hash`` precedes ``block_hashes[0]``."""

    block_hashes: tuple[BlockHash, ...]
    parent_hash: BlockHash | None


@dataclass(frozen=True)
class BlockRemoved:
    """Blocks were evicted from the prefix cache (reused for other tokens)."""

    block_hashes: tuple[BlockHash, ...]


@dataclass(frozen=True)
class AllBlocksCleared:
    """The whole prefix cache was dropped (reset)."""


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared
