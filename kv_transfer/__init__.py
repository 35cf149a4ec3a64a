"""Moving KV blocks between engines, and the block identity every component shares.

Importing this package must stay cheap and torch-free: the router imports ``block_hash``.
"""

from kv_transfer.block_hash import BlockHash, BlockHasher

__all__ = ["BlockHash", "BlockHasher"]
