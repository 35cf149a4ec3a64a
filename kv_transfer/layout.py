"""Byte layout of a rank's KV buffer, and which bytes a receiving rank must read.

The engine keeps one buffer per rank shaped ``[blocks, layers, 2 (K, V), heads, block, dim]``:
block-major, and HND within each layer (each layer's K or V is a strided
``[blocks, heads, block, dim]`` view). So one block of every layer is one contiguous run of
bytes — a single descriptor when both sides hold the same heads — and within it the chunk of a
(layer, K/V) holds the rank's heads contiguously, so any head sub-range is one descriptor too.
Block-major matters on CPU, where UCX moves each descriptor with its own system call.

Heterogeneous TP: the owner splits heads over ``p`` ranks, the receiver over ``d`` ranks, one
dividing the other. ``plan_head_slices`` says, for one receiving rank, which owner ranks it
reads, at which head offsets, and where the heads land locally.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RegionLayout:
    """One rank's KV buffer: sizes in elements plus the element size in bytes."""

    num_layers: int
    num_blocks: int
    num_heads: int  # heads on this rank
    block_size: int
    head_dim: int
    elem_bytes: int

    @property
    def head_bytes(self) -> int:
        """Bytes of one head of one block (K or V of one layer)."""
        return self.block_size * self.head_dim * self.elem_bytes

    @property
    def chunk_bytes(self) -> int:
        """Bytes of all heads of one block of one layer, K or V."""
        return self.num_heads * self.head_bytes

    @property
    def block_bytes(self) -> int:
        """Bytes of one block across all layers, K and V."""
        return self.num_layers * 2 * self.chunk_bytes

    @property
    def total_bytes(self) -> int:
        return self.num_blocks * self.block_bytes

    @property
    def num_chunks(self) -> int:
        return self.num_blocks * self.num_layers * 2

    def chunk_index(self, layer: int, kv: int, block: int) -> int:
        return (block * self.num_layers + layer) * 2 + kv

    def chunk_indices(self, block_ids: list[int] | tuple[int, ...]) -> list[int]:
        """Chunk descriptor indices for these blocks, in a fixed (block, layer, K/V) order."""
        per_block = self.num_layers * 2
        return [b * per_block + i for b in block_ids for i in range(per_block)]


@dataclass(frozen=True)
class HeadSlice:
    """Read ``num_heads`` heads starting at ``src_head`` of owner rank ``src_rank`` into local
    heads starting at ``dst_head``."""

    src_rank: int
    src_head: int
    dst_head: int
    num_heads: int


def plan_head_slices(total_heads: int, src_tp: int, dst_tp: int, dst_rank: int) -> list[HeadSlice]:
    """The slices receiving rank ``dst_rank`` of ``dst_tp`` reads from an owner split ``src_tp`` ways."""
    if total_heads % src_tp or total_heads % dst_tp:
        raise ValueError(f"{total_heads} KV heads cannot be split {src_tp} and {dst_tp} ways")
    if max(src_tp, dst_tp) % min(src_tp, dst_tp):
        raise ValueError(f"TP sizes {src_tp} and {dst_tp} must divide one another")
    src_heads = total_heads // src_tp
    dst_heads = total_heads // dst_tp
    first = dst_rank * dst_heads  # global index of this rank's first head
    slices = []
    covered = 0
    while covered < dst_heads:
        global_head = first + covered
        src_rank = global_head // src_heads
        src_head = global_head % src_heads
        n = min(src_heads - src_head, dst_heads - covered)
        slices.append(HeadSlice(src_rank, src_head, covered, n))
        covered += n
    return slices
